"""A party's inbox: the complete messages ``receive()`` takes, and those held meanwhile.

The MQTT transport acks a message only once it is delivered here: an ack must never
lose data.  At most ``limit`` messages wait in the queue.  A message that finds it full
(or finds others held before it) is **held**: kept in arrival order, in bounded memory
(:class:`~transports.held.HeldMessages`: the rest in temporary files), its ack unsent,
and delivered and acked as ``receive()`` makes room.  Its sender's window keeps a slot
for it meanwhile, so a sender that outpaces the application stalls (back-pressure).

**Busy.**  Instead of the ack, the receiver answers a held message's last frame, and
every resend of it, with a *busy* frame (:mod:`transports.frames`): "I have it, I cannot
take it yet".  The sender keeps the frame unacked, forgets its tries and resends it only
as a probe, every ``max_ack_timeout_s`` (:meth:`~transports.window.SendWindow.busy`):
a busy receiver never makes its senders give up a message it holds, while the probes
to a receiver that died go unanswered, and its senders give up as before.  A probe is
the whole frame again (up to a chunk): no more than the resends it replaces.

**Bounds.**  What is held is bounded per sender (``per_sender`` messages) and in all
(``max_bytes`` of payload, memory and files together).  While a sender is at either
bound, every chunk from it is answered busy *unread* (:meth:`Inbox.deferral`): it stays
with its sender, unacked and uncounted, until the application makes room (and its
sender's next probe comes, within ``max_ack_timeout_s``).  Manifests are still read:
only a chunk completes a message, and a chunk names no sender, so its transfer must
be known.  Nothing is lost; what is held exceeds ``max_bytes`` by at most one
message; deferred messages may arrive out of order, as resent ones may.  (An honest
sender's window keeps its open transfers within the reassembler's per-sender slots,
so none is evicted meanwhile; nor does one expire: each deferred chunk keeps its
sender's open transfers from the reassembler's expiry, ``expiry_s`` = 120 s after the
last exchange, and the probes come every ``max_ack_timeout_s`` = 60 s;
:class:`~transports.mqtt_options.MqttOptions` refuses a probe period not below the expiry.)

This module does no network I/O: the acks to send go to the caller's ``send_ack``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from threshold_fl.errors import FrameError
from transports.chunks import Accepted, Reassembler
from transports.frames import CHUNK_HEADER_SIZE, KIND_CHUNK, decode_chunk, encode_ack, frame_kind
from transports.held import HeldMessage, HeldMessages

__all__ = ["Inbox", "SendAck"]

#: ``send_ack(topic, frame)``: publish an ack or busy frame (the transport queues it).
SendAck = Callable[[str, bytes], None]


class Inbox:
    """Delivered messages, in order, and the held ones behind them; see the module
    docstring.  ``ack_topic(sender)`` names a sender's ack topic; ``counts`` gets
    ``messages_received``, ``bytes_received``, ``held`` and ``deferred``."""

    def __init__(self, limit: int, held: HeldMessages, counts: Counter[str], *,
                 ack_topic: Callable[[str], str], per_sender: int, max_bytes: int) -> None:
        self.limit, self.held, self.counts = limit, held, counts
        self.per_sender, self.max_bytes = per_sender, max_bytes
        self._ack_topic = ack_topic
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: stopped
        self._stopped = False

    def take(self, got: Accepted, send_ack: SendAck) -> str | None:
        """Answer a frame the reassembler took: deliver a message it completed and ack
        it, or hold it and answer busy; returns why a spill failed (the message stays
        in memory then), for the log."""
        topic = self._ack_topic(got.sender)
        if got.payload is None:  # an earlier frame of its transfer, or a resend
            send_ack(topic, _busy(got) if self.held.holds(got.ack) else got.ack)
            return None
        message = HeldMessage(got.sender, got.payload, topic, got.ack)
        if not self.held and self._queue.qsize() < self.limit:
            self._deliver(message, send_ack)
            return None
        self.counts["held"] += 1
        failure = self.held.hold(message)
        send_ack(topic, _busy(got))
        return failure

    def deferral(self, reassembler: Reassembler, frame: bytes, now: float
                 ) -> tuple[str, bytes] | None:
        """``(topic, busy frame)`` if ``frame`` is a chunk that must wait unread: what
        is held from its sender is at a bound (its open transfers are kept alive
        meanwhile).  None: read it."""
        if not self.held or not _is_chunk(frame):
            return None
        sender = reassembler.claimed_sender(frame)  # its transfer's: known, else None
        if sender is None or (self.held.count(sender) < self.per_sender
                              and self.held.bytes < self.max_bytes):
            return None
        chunk = decode_chunk(frame)
        reassembler.keep_alive(sender, now)
        self.counts["deferred"] += 1
        return self._ack_topic(sender), encode_ack(chunk.transfer_id, chunk.seq, busy=True)

    async def get(self) -> bytes | None:
        """The next message; None once stopped and drained (and for every caller after)."""
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # keep waking any other receiver
        return item

    def release(self, send_ack: SendAck) -> None:
        """Deliver and ack held messages while the queue has room, in arrival order.

        TransportError if one cannot be read back from its file: it stays held, its ack
        unsent, and those delivered before it are acked."""
        while self.held and self._queue.qsize() < self.limit:
            self._deliver(self.held.pop(), send_ack)

    def stop(self) -> None:
        """The transport closed or failed: wake receivers once what was delivered is
        taken, and drop what is held (unacked: its senders count it undelivered);
        idempotent."""
        if not self._stopped:
            self._stopped = True
            self._queue.put_nowait(None)
        self.held.close()

    def _deliver(self, message: HeldMessage, send_ack: SendAck) -> None:
        self.counts["messages_received"] += 1
        self.counts["bytes_received"] += len(message.payload)
        self._queue.put_nowait(message.payload)
        send_ack(message.ack_topic, message.ack)



def _busy(got: Accepted) -> bytes:
    return encode_ack(got.transfer_id, got.seq, busy=True)


def _is_chunk(frame: bytes) -> bool:
    try:
        return frame_kind(frame) == KIND_CHUNK and len(frame) >= CHUNK_HEADER_SIZE
    except FrameError:
        return False
