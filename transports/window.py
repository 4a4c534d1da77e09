"""Sans-I/O send window: per-recipient flow control, acks, retransmission and give-up.

A :class:`SendWindow` holds the transfers (:mod:`transports.chunks`) a party is sending
and decides which frame goes on the wire next.  It does no I/O, reads no clock (``now``
is passed in) and neither logs nor wakes anybody: what the caller must act on is kept
for it to take (:meth:`SendWindow.take_released`, :meth:`SendWindow.take_given_up`).
The MQTT transport drives it roughly so::

    out = window.add(transfer)           # a sender then waits until `out` is released
    frame = window.next_frame(now)       # None: sleep until next_deadline() or new work
    publish(frame.transfer.frame(frame.seq)); window.sent(frame, now)
    window.ack(transfer_id, seq)         # an ack came back from the recipient

The rules:

- **Frames.**  Frame index 0 of a transfer is its manifest (seq :data:`MANIFEST_SEQ`),
  index ``i > 0`` is chunk ``i - 1``; they are handed out in that order.
- **Window per recipient.**  At most ``window`` frames per recipient are out and unacked.
  Per recipient, not in total: frames waiting for the acks of a dead party must not hold
  back messages to live ones (a dropped client would otherwise stall an aggregator).
- **Retransmission.**  A frame not acked ``ack_timeout_s * backoff ** (tries - 1)`` after
  its latest send is due again; due frames go out before any new frame, oldest first.
  While a frame is being published its deadline is infinite: the timer starts in
  :meth:`SendWindow.sent`, so a slow publish is not mistaken for a lost ack.
- **Give-up.**  A frame whose deadline passes after ``max_tries`` sends gives up its whole
  transfer: its frames are forgotten and it is reported by ``take_given_up``.  Delivery
  stays best effort, as :mod:`transports.base` promises.
- **Release.**  A sender waits until every frame of its transfer went out at least once
  (not until they are acked): the transfer is then *released*.  A transfer is also
  released when given up, aborted, or when its recipient goes offline
  (:meth:`SendWindow.release`): nobody should wait on a party that is gone.  Its frames
  stay, so a short absence loses nothing; :meth:`SendWindow.kick` resends them at once
  when the party is back.
- **Reconnect.**  :meth:`SendWindow.resume` makes every unacked frame due at once, since
  the broker may have lost whatever it held while the connection was down.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from threshold_fl.errors import ParameterError
from transports.chunks import MANIFEST_SEQ, Transfer

__all__ = ["InFlightFrame", "OutgoingTransfer", "SendWindow"]


@dataclass(eq=False)
class OutgoingTransfer:
    """One transfer being sent, and how far it got."""

    transfer: Transfer
    next_index: int = 0  # frames handed out so far (index 0: the manifest)
    unacked: int = field(init=False)  # frames not acked yet, unsent ones included
    released: bool = False  # its sender may go on
    failure: str | None = None  # why it was given up; None while alive or once acked

    def __post_init__(self) -> None:
        self.unacked = self.frames

    @property
    def frames(self) -> int:
        """The manifest and every chunk."""
        return self.transfer.count + 1

    @property
    def recipient(self) -> str:
        return self.transfer.recipient

    @property
    def all_handed_out(self) -> bool:
        return self.next_index == self.frames

    @property
    def acked(self) -> bool:
        return self.unacked == 0


@dataclass(eq=False)
class InFlightFrame:
    """A frame handed out for sending and not acked yet."""

    transfer: OutgoingTransfer
    seq: int  # MANIFEST_SEQ or a chunk number
    last: bool  # the last frame of its transfer to be handed out
    tries: int = 1  # sends so far, this one included
    deadline: float = math.inf  # when it is due again; inf while being published

    @property
    def key(self) -> tuple[bytes, int]:
        return self.transfer.transfer.transfer_id, self.seq


class SendWindow:
    """The transfers one party is sending; see the module docstring for the rules."""

    def __init__(self, *, window: int = 8, ack_timeout_s: float = 5.0, backoff: float = 2.0,
                 max_tries: int = 5) -> None:
        if window < 1 or max_tries < 1 or not ack_timeout_s > 0 or backoff < 1:
            raise ParameterError(
                f"invalid send window: window={window}, ack_timeout_s={ack_timeout_s}, "
                f"backoff={backoff}, max_tries={max_tries}")
        self.window, self.max_tries = window, max_tries
        self.ack_timeout_s, self.backoff = ack_timeout_s, backoff
        self._queue: deque[OutgoingTransfer] = deque()  # with frames not handed out yet
        self._in_flight: OrderedDict[tuple[bytes, int], InFlightFrame] = OrderedDict()
        self._released: list[OutgoingTransfer] = []
        self._given_up: list[OutgoingTransfer] = []
        self.retransmits = 0
        self.transfers_acked = 0
        self.transfers_failed = 0

    # ----------------------------------------------------------------- queries

    @property
    def idle(self) -> bool:
        """Nothing left to send or to wait an ack for."""
        return not self._queue and not self._in_flight

    def in_flight(self, recipient: str | None = None) -> int:
        """Frames handed out and not acked, to ``recipient`` or to anybody."""
        frames = self._in_flight.values()
        if recipient is None:
            return len(frames)
        return sum(f.transfer.recipient == recipient for f in frames)

    def next_deadline(self) -> float | None:
        """When the earliest retransmission falls due; None if no timer runs."""
        deadlines = [f.deadline for f in self._in_flight.values() if f.deadline < math.inf]
        return min(deadlines, default=None)

    # ----------------------------------------------------------------- sending

    def add(self, transfer: Transfer) -> OutgoingTransfer:
        """Queue ``transfer`` behind the others; its sender waits until it is released."""
        out = OutgoingTransfer(transfer)
        self._queue.append(out)
        return out

    def next_frame(self, now: float) -> InFlightFrame | None:
        """The frame to send now: a due retransmission, else a new frame the window
        allows; None if there is none (wait until :meth:`next_deadline` or new work)."""
        return self._due_frame(now) or self._new_frame()

    def sent(self, frame: InFlightFrame, now: float) -> None:
        """``frame`` went out: start its ack timer.  A frame whose ack overtook the
        publish (or that abort() dropped meanwhile) is no longer held: its timer is moot."""
        frame.deadline = now + self.ack_timeout_s * self.backoff ** (frame.tries - 1)
        if frame.last:
            self._release(frame.transfer)

    def ack(self, transfer_id: bytes, seq: int) -> bool:
        """Forget an acked frame; False for an ack of nothing awaited (duplicate, late,
        of a given-up transfer, or unknown)."""
        frame = self._in_flight.pop((transfer_id, seq), None)
        if frame is None:
            return False
        frame.transfer.unacked -= 1
        if frame.transfer.acked:
            self.transfers_acked += 1
        return True

    # ----------------------------------------------------------------- events

    def release(self, recipient: str) -> None:
        """``recipient`` went offline: release its transfers.  Their frames stay and are
        retried, at once if it comes back (:meth:`kick`), so a short outage loses nothing."""
        for out in self._transfers():
            if out.recipient == recipient:
                self._release(out)

    def kick(self, recipient: str, now: float) -> bool:
        """``recipient`` (re)appeared: its unacked frames are due now, with fresh tries,
        since what it missed while away says nothing about the path now.  True if any."""
        frames = [f for f in self._in_flight.values() if f.transfer.recipient == recipient]
        for frame in frames:
            frame.deadline, frame.tries = now, 1
        return bool(frames)

    def resume(self, now: float) -> None:
        """After a reconnect: every unacked frame is due now (the old connection may have
        lost it, and one cut mid-publish never started its timer)."""
        for frame in self._in_flight.values():
            frame.deadline = now

    def abort(self) -> None:
        """Forget everything (transport closed or failed) and release every sender."""
        outs = self._transfers()
        self._in_flight.clear()
        self._queue.clear()
        for out in outs:
            self._release(out)

    def take_released(self) -> list[OutgoingTransfer]:
        """Transfers released since the last call: their senders may go on."""
        released, self._released = self._released, []
        return released

    def take_given_up(self) -> list[OutgoingTransfer]:
        """Transfers given up since the last call, each with its ``failure``."""
        given_up, self._given_up = self._given_up, []
        return given_up

    # ----------------------------------------------------------------- internals

    def _transfers(self) -> list[OutgoingTransfer]:
        """Every transfer held, once each, oldest first."""
        outs = {id(f.transfer): f.transfer for f in self._in_flight.values()}
        outs.update((id(out), out) for out in self._queue)
        return list(outs.values())

    def _due_frame(self, now: float) -> InFlightFrame | None:
        for frame in list(self._in_flight.values()):  # a give-up below removes entries
            if frame.deadline > now or frame.transfer.failure is not None:
                continue
            if frame.tries >= self.max_tries:
                what = "manifest" if frame.seq == MANIFEST_SEQ else f"chunk {frame.seq}"
                self._give_up(frame.transfer, f"{what} unacked after {frame.tries} tries")
                continue
            frame.tries += 1
            frame.deadline = math.inf
            self.retransmits += 1
            return frame
        return None

    def _new_frame(self) -> InFlightFrame | None:
        busy = Counter(f.transfer.recipient for f in self._in_flight.values())
        for out in self._queue:
            if busy[out.recipient] >= self.window:
                continue  # that recipient's window is full; others may go on
            index = out.next_index
            out.next_index += 1
            if out.all_handed_out:
                self._queue.remove(out)  # we return at once: no iteration goes on
            frame = InFlightFrame(out, MANIFEST_SEQ if index == 0 else index - 1,
                                  last=out.all_handed_out)
            self._in_flight[frame.key] = frame
            return frame
        return None

    def _release(self, out: OutgoingTransfer) -> None:
        if not out.released:
            out.released = True
            self._released.append(out)

    def _give_up(self, out: OutgoingTransfer, why: str) -> None:
        out.failure = why
        self.transfers_failed += 1
        self._given_up.append(out)
        for key in [k for k, f in self._in_flight.items() if f.transfer is out]:
            del self._in_flight[key]
        if out in self._queue:
            self._queue.remove(out)
        self._release(out)
