"""Sans-I/O send window: per-recipient flow control, acks, retransmission and give-up.

A :class:`SendWindow` holds the transfers (:mod:`transports.frames`) a party is sending
and decides which frame goes on the wire next.  It does no I/O, reads no clock (``now``
is passed in) and neither logs nor wakes anybody: what the caller must act on is kept
for it to take (:meth:`SendWindow.take_released`, :meth:`SendWindow.take_given_up`).
The MQTT transport drives it roughly so::

    out = window.add(transfer)           # a sender then waits until `out` is released
    frame = window.next_frame(now)       # None: sleep until next_deadline() or new work
    publish(frame.transfer.frame(frame.seq)); window.sent(frame, now)
    window.ack(transfer_id, seq, now)    # an ack came back from the recipient

The rules:

- **Frames.**  Frame index 0 of a transfer is its manifest (seq :data:`MANIFEST_SEQ`),
  index ``i > 0`` is chunk ``i - 1``; they are handed out in that order.
- **Window per recipient.**  At most ``window`` frames per recipient are out and unacked.
  Per recipient, not in total: frames waiting for the acks of a dead party must not hold
  back messages to live ones (a dropped client would otherwise stall an aggregator).
- **Retransmission.**  A frame not acked ``timeout * backoff ** exponent`` after its
  timer started is due again; due frames go out before any new frame, oldest first.
  Each timeout raises the frame's exponent by one (up to ``max_tries - 1``).
  While a frame is being published its deadline is infinite: the timer starts in
  :meth:`SendWindow.sent`, so a slow publish is not mistaken for a lost ack.
- **Adaptive timeout** (RFC 6298's, per recipient).  ``timeout`` is
  ``max(ack_timeout_s, min(max_ack_timeout_s, SRTT + 4 * RTTVAR))``, where SRTT and
  RTTVAR are the smoothed round trip and its mean deviation (gains 1/8 and 1/4) over
  samples from that recipient's acks; before the first sample it is ``ack_timeout_s``.
  After backoff a timeout exceeds ``max_ack_timeout_s`` only where the fixed schedule
  ``ack_timeout_s * backoff ** exponent`` already does.  Karn's algorithm, both halves
  (RFC 6298 5.5 to 5.7): only a frame acked after exactly one send gives a sample (an
  ack of a resent frame may answer either send), and so does no frame made due by
  :meth:`kick` or :meth:`resume`; and the backed-off timeout stays: a new frame to a
  recipient starts at the highest exponent a timeout reached there, until a sample
  comes (or :meth:`kick`).  A sample runs from the frame's send to its ack.
- **The timer runs from the head of the line.**  On a slow link the window's frames
  queue (in the broker, in the tbf queue) behind one another: the eighth frame's ack
  comes back after the seven ahead of it were carried, however healthy the path.  So,
  as TCP restarts its timer on every ack of new data, an ack restarts the timer of
  every frame to the same recipient sent after the acked one (never earlier than its
  deadline was).  The sample still runs from the frame's send: its queueing is part of
  the round trip the timeout must cover (a sample from the restart would run low, and
  so would the timeout, on a pipelined link).  A frame overtaken by later ones is not
  restarted by their acks: a frame lost on a fast link is resent ``ack_timeout_s``
  after its predecessor's ack (on a fast link, about ``ack_timeout_s`` after its own
  send, as before).  Per recipient, so a slow party's long timeout never delays
  resends to a fast one.
- **Give-up.**  A frame whose deadline passes after ``max_tries`` sends gives up its whole
  transfer: its frames are forgotten and it is reported by ``take_given_up``.  Delivery
  stays best effort, as :mod:`transports.base` promises.
- **Busy.**  A recipient whose inbox is full answers *busy* (:mod:`transports.inbox`):
  it has the frame but cannot take it yet.  :meth:`SendWindow.busy` keeps the frame
  unacked (its window slot stays taken: back-pressure), forgets its tries and makes it
  due only ``max_ack_timeout_s`` later, as a probe that is no loss (no backoff) and
  draws another busy, or the ack once delivered.  A busy recipient thus never makes a
  transfer give up, however long it stays busy; a dead one leaves the probe unanswered,
  and the frame gives up after ``max_tries`` more sends.
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
from transports.frames import MANIFEST_SEQ, Transfer

__all__ = ["InFlightFrame", "OutgoingTransfer", "RttEstimator", "SendWindow"]

_ALPHA, _BETA, _K = 1 / 8, 1 / 4, 4  # RFC 6298's gains and variance factor


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
    tries: int = 1  # sends since the last busy answer (or ever), this one included
    exponent: int = 0  # its timeout is the base one times backoff ** exponent
    deadline: float = math.inf  # when it is due again; inf while being published
    started: float | None = None  # when its ack timer last (re)started; None: not running
    sent_at: float = 0.0  # when it was last sent: an RTT sample runs from there
    sent_no: int = 0  # order of its latest send among all sends (0: not sent yet)
    timed: bool = True  # its ack may give an RTT sample (Karn's rule)
    probe: bool = False  # the recipient said busy: its next resend is no loss

    @property
    def key(self) -> tuple[bytes, int]:
        return self.transfer.transfer.transfer_id, self.seq


@dataclass
class RttEstimator:
    """RFC 6298's smoothed round-trip time and its mean deviation, for one recipient."""

    srtt: float | None = None  # None until the first sample
    rttvar: float = 0.0
    samples: int = 0
    largest: float = 0.0  # the largest sample seen, for reports

    def add(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:  # RTTVAR first: it compares the sample with the old SRTT
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self.samples += 1
        self.largest = max(self.largest, rtt)

    @property
    def rto(self) -> float:
        """SRTT + 4 RTTVAR, uncapped; 0 before any sample."""
        return 0.0 if self.srtt is None else self.srtt + _K * self.rttvar


class SendWindow:
    """The transfers one party is sending; see the module docstring for the rules."""

    def __init__(self, *, window: int = 8, ack_timeout_s: float = 5.0, backoff: float = 2.0,
                 max_tries: int = 5, max_ack_timeout_s: float = 60.0) -> None:
        if (window < 1 or max_tries < 1 or not ack_timeout_s > 0 or backoff < 1
                or not max_ack_timeout_s > 0):
            raise ParameterError(
                f"invalid send window: window={window}, ack_timeout_s={ack_timeout_s}, "
                f"backoff={backoff}, max_tries={max_tries}, "
                f"max_ack_timeout_s={max_ack_timeout_s}")
        self.window, self.max_tries = window, max_tries
        self.ack_timeout_s, self.backoff = ack_timeout_s, backoff
        self.max_ack_timeout_s = max_ack_timeout_s
        self._rtt: dict[str, RttEstimator] = {}  # per recipient, once it gave a sample
        self._backed_off: dict[str, int] = {}  # per recipient: exponent kept (Karn)
        self._sends = 0
        self._queue: deque[OutgoingTransfer] = deque()  # with frames not handed out yet
        self._in_flight: OrderedDict[tuple[bytes, int], InFlightFrame] = OrderedDict()
        self._released: list[OutgoingTransfer] = []
        self._given_up: list[OutgoingTransfer] = []
        self.retransmits = 0
        self.busy_answers = 0
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

    def ack_timeout(self, recipient: str) -> float:
        """The first-try timeout a frame to ``recipient`` gets now (module docstring)."""
        return self._scaled(recipient, self._backed_off.get(recipient, 0))

    def rtt(self, recipient: str) -> RttEstimator | None:
        """The round-trip estimate for ``recipient``; None before its first sample."""
        return self._rtt.get(recipient)

    def ack_timeouts(self) -> dict[str, float]:
        """The current timeout per recipient that gave samples, for reports."""
        return {r: self.ack_timeout(r) for r in sorted(self._rtt)}

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
        self._sends += 1
        frame.started, frame.sent_at, frame.sent_no = now, now, self._sends
        frame.deadline = now + self._timeout(frame)
        if frame.last:
            self._release(frame.transfer)

    def ack(self, transfer_id: bytes, seq: int, now: float) -> bool:
        """Forget an acked frame, take its RTT sample and restart the timers of the frames
        sent after it to the same recipient; False for an ack of nothing awaited
        (duplicate, late, of a given-up transfer, or unknown)."""
        frame = self._in_flight.pop((transfer_id, seq), None)
        if frame is None:
            return False
        if frame.started is not None:  # else the ack overtook its publish: no timer ran
            if frame.timed and frame.tries == 1:  # Karn: only a frame sent once is timed
                recipient = frame.transfer.recipient
                self._rtt.setdefault(recipient, RttEstimator()).add(
                    max(0.0, now - frame.sent_at))
                self._backed_off.pop(recipient, None)  # a valid sample ends the backoff
            self._restart_behind(frame, now)
        frame.transfer.unacked -= 1
        if frame.transfer.acked:
            self.transfers_acked += 1
        return True

    def busy(self, transfer_id: bytes, seq: int, now: float) -> bool:
        """The recipient holds the frame, not delivered yet: it stays unacked with its
        tries forgotten, due again (a probe) ``max_ack_timeout_s`` from now, and the
        frames behind it restart their timers as on an ack.  False if not awaited."""
        frame = self._in_flight.get((transfer_id, seq))
        if frame is None:
            return False
        self.busy_answers += 1
        frame.tries, frame.timed, frame.probe = 0, False, True
        if frame.deadline < math.inf:  # else being published: sent() starts its timer
            frame.started, frame.deadline = now, now + self.max_ack_timeout_s
            self._restart_behind(frame, now)
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
            _make_due(frame, now)
            frame.tries, frame.exponent = 1, 0
        self._backed_off.pop(recipient, None)
        return bool(frames)

    def resume(self, now: float) -> None:
        """After a reconnect: every unacked frame is due now (the old connection may have
        lost it, and one cut mid-publish never started its timer)."""
        for frame in self._in_flight.values():
            _make_due(frame, now)

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

    def _rto(self, recipient: str) -> float:
        estimate = self._rtt.get(recipient)
        return 0.0 if estimate is None else estimate.rto

    def _timeout(self, frame: InFlightFrame) -> float:
        """Seconds from the timer's start until ``frame`` is due again."""
        return self._scaled(frame.transfer.recipient, frame.exponent)

    def _scaled(self, recipient: str, exponent: int) -> float:
        """The timeout after ``exponent`` backoffs: the adaptive one capped, but never
        below the fixed schedule."""
        backoff = self.backoff ** exponent
        adaptive = min(self._rto(recipient) * backoff, self.max_ack_timeout_s)
        return max(self.ack_timeout_s * backoff, adaptive)

    def _restart_behind(self, acked: InFlightFrame, now: float) -> None:
        """The recipient got ``acked``: frames sent after it to the same recipient were
        queued behind it, so their timers start now (TCP's restart on new data)."""
        recipient = acked.transfer.recipient
        for frame in self._in_flight.values():
            if (frame.transfer.recipient == recipient and frame.sent_no > acked.sent_no
                    and frame.started is not None):  # running: not due nor being published
                frame.started = now
                frame.deadline = max(frame.deadline, now + self._timeout(frame))

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
            if not frame.probe:  # a timeout: back off, and new frames to it start there
                frame.exponent = min(frame.exponent + 1, self.max_tries - 1)
                recipient = frame.transfer.recipient
                self._backed_off[recipient] = max(self._backed_off.get(recipient, 0),
                                                  frame.exponent)
            frame.deadline, frame.started, frame.timed, frame.probe = math.inf, None, False, False
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
                                  last=out.all_handed_out,
                                  exponent=self._backed_off.get(out.recipient, 0))
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


def _make_due(frame: InFlightFrame, now: float) -> None:
    """Due at once; its timer stops and its ack will time nothing (Karn's rule)."""
    frame.deadline, frame.started, frame.timed = now, None, False
