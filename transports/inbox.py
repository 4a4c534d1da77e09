"""A party's inbox: the complete messages ``receive()`` takes, and those held meanwhile.

The MQTT transport acks a message only once it is delivered here: an ack must never
lose data.  At most ``limit`` messages wait in the queue; a message that finds it full
(or finds others held before it) is held with its ack unsent, in arrival order, in
bounded memory (:class:`~transports.held.HeldMessages`), and delivered and acked as
``receive()`` makes room.  This module does no network I/O: the acks to send are
handed to the caller's ``send_ack``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from transports.held import HeldMessage, HeldMessages

__all__ = ["Inbox", "SendAck"]

#: ``send_ack(topic, ack_frame)``: publish an ack (the transport queues it).
SendAck = Callable[[str, bytes], None]


class Inbox:
    """Delivered messages, in order, and the held ones behind them; see the module
    docstring.  ``counts`` gets ``messages_received``, ``bytes_received`` and ``held``."""

    def __init__(self, limit: int, held_memory_bytes: int, counts: Counter[str]) -> None:
        self.limit, self.counts = limit, counts
        self.held = HeldMessages(held_memory_bytes)
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: stopped
        self._stopped = False

    def offer(self, message: HeldMessage, send_ack: SendAck) -> str | None:
        """Deliver a complete message and ack it, or hold it unacked if the queue is
        full; returns why a spill failed (it stays in memory then), for the log."""
        if self.held or self._queue.qsize() >= self.limit:
            self.counts["held"] += 1
            return self.held.hold(message)
        self._deliver(message, send_ack)
        return None

    def holds(self, ack: bytes) -> bool:
        """Whether the message this ack acknowledges is held (a resend of it is not
        acked before it is delivered)."""
        return self.held.holds(ack)

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
