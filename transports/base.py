"""The one interface every transport offers to the composition layer.

A transport moves **opaque bytes** between named parties and nothing more.  The
messages it carries are already framed and signed by the protocol layer, which
authenticates content itself; a transport therefore never inspects, signs or
trusts what it moves, and the sender it reports (where it reports one) is only the
party id a connection was opened with.

Delivery is *best effort, at most once-ish*: a message may be lost, duplicated,
delayed or reordered, as on a real MQTT broker under load or across reconnects.
Protocols must cope (deduplicate, tolerate gaps, use time-outs); keeping that out
of the transport is what lets the in-memory transport inject exactly those faults
in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Transport"]


class Transport(Protocol):
    """One party's connection to the federation.

    Structural (:class:`typing.Protocol`), so a transport need not inherit from it:
    the composition layer and tests depend on this shape, not on a class tree.
    """

    @property
    def party_id(self) -> str:
        """The id this party connected with; the only sender identity at this layer."""
        ...

    async def send(self, recipients: Sequence[str], data: bytes) -> None:
        """Hand one message to the network for each recipient.

        Returning means the message left this party, not that it arrived: the network
        may drop, duplicate, delay or reorder it, and unknown recipients are not an
        error.  Raises :class:`~threshold_fl.errors.TransportClosed` after
        :meth:`close`, because a closed party must not keep talking.
        """
        ...

    async def receive(self) -> bytes:
        """Wait for and return the next message addressed to this party.

        Raises :class:`~threshold_fl.errors.TransportClosed` once the transport is
        closed and every message that had already arrived was returned, so a receive
        loop ends cleanly instead of waiting forever.
        """
        ...

    async def close(self) -> None:
        """Stop sending and receiving; idempotent, so cleanup paths may call it freely."""
        ...
