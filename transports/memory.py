"""An in-memory transport with programmable faults, for tests and simulations.

A :class:`MemoryHub` plays the broker of one simulated federation inside one event
loop; each party gets a :class:`MemoryTransport` from :meth:`MemoryHub.connect`.  A
:class:`FaultPlan` decides, per message and recipient, whether the hub delivers,
drops, duplicates, delays or reorders it, so protocol tests can script the exact
misbehaviour a real network shows (see :mod:`transports.base`) and replay it.

Like a broker, the hub never blocks a sender: messages to unknown or disconnected
parties, or to a full inbox, are dropped and counted in :attr:`MemoryHub.stats`.
:meth:`MemoryHub.traffic` gives one party's messages and bytes sent and received, as
the MQTT transport's stats count them (one payload per recipient), optionally split by
a label the hub's owner computes from each message's bytes (a protocol stage, say).
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias

from threshold_fl.errors import ParameterError, TransportClosed, TransportError

if TYPE_CHECKING:
    from transports.base import Transport

__all__ = ["Envelope", "Fault", "FaultPlan", "HubStats", "MemoryHub", "MemoryTransport",
           "PartyTraffic"]


class Fault(enum.Enum):
    """What the network does to one copy of a message on its way to one recipient."""

    DELIVER = "deliver"
    DROP = "drop"
    DUPLICATE = "duplicate"  # delivered twice
    DELAY = "delay"  # delivered after a number of seconds
    REORDER = "reorder"  # held back until the next message to the same recipient


@dataclass(frozen=True)
class Envelope:
    """One message on its way to one recipient: what a :class:`FaultPlan` decides on.

    ``index`` numbers envelopes per hub from 0 in sending order (a send to three
    recipients makes three envelopes), so a test can name "the 5th message".
    ``label`` is what the hub's ``label`` function said of ``data`` ("" without one).
    """

    sender: str
    recipient: str
    data: bytes
    index: int = 0
    label: str = ""


#: A plan's decision: a fault, or a fault with seconds (the delay for DELAY, the
#: longest hold for REORDER; a bare fault uses the plan's ``max_delay_s``).
Decision: TypeAlias = Fault | tuple[Fault, float]


class FaultPlan:
    """Decides the fate of every envelope; deterministic, so failures reproduce.

    ``decide`` is called once per envelope, in sending order.  Without it every
    message is delivered.  :meth:`random` builds a seeded random plan.
    """

    def __init__(
        self,
        decide: Callable[[Envelope], Decision] | None = None,
        *,
        max_delay_s: float = 0.05,
    ) -> None:
        if not max_delay_s >= 0:
            raise ParameterError(f"max_delay_s must be >= 0, got {max_delay_s!r}")
        self._decide = decide
        self.max_delay_s = max_delay_s

    @classmethod
    def random(
        cls,
        seed: int,
        drop: float = 0,
        duplicate: float = 0,
        delay: float = 0,
        reorder: float = 0,
        max_delay_s: float = 0.05,
    ) -> FaultPlan:
        """A plan drawing each envelope's fault from ``random.Random(seed)``.

        The arguments are per-envelope probabilities (their sum at most 1; the rest is
        DELIVER); a DELAY lasts uniformly 0 to ``max_delay_s`` seconds.  The same seed
        and the same sends give the same faults.
        """
        weights = {
            Fault.DROP: drop,
            Fault.DUPLICATE: duplicate,
            Fault.DELAY: delay,
            Fault.REORDER: reorder,
        }
        if any(not 0 <= p <= 1 for p in weights.values()) or sum(weights.values()) > 1:
            raise ParameterError(
                f"fault probabilities must lie in [0, 1] and sum to at most 1, got {weights}"
            )
        rng = random.Random(seed)

        def decide(_: Envelope) -> Decision:
            draw = rng.random()
            for fault, probability in weights.items():
                if draw < probability:
                    seconds = rng.uniform(0, max_delay_s) if fault is Fault.DELAY else max_delay_s
                    return fault, seconds
                draw -= probability
            return Fault.DELIVER

        return cls(decide, max_delay_s=max_delay_s)

    def choose(self, envelope: Envelope) -> tuple[Fault, float]:
        """The fault for ``envelope`` and its seconds (``max_delay_s`` where none given)."""
        if self._decide is None:
            return Fault.DELIVER, self.max_delay_s
        decision = self._decide(envelope)
        if isinstance(decision, Fault):
            return decision, self.max_delay_s
        fault, seconds = decision
        if not seconds >= 0:
            raise ParameterError(f"a fault's seconds must be >= 0, got {seconds!r}")
        return fault, seconds


@dataclass(frozen=True)
class HubStats:
    """A snapshot of a hub's counters (copies, not live values).

    ``sent`` counts envelopes (one per recipient of a send).  ``delivered`` counts
    copies put into an inbox, so a duplicate adds two.  ``dropped`` counts copies lost
    for any reason: a DROP fault, an unknown or disconnected recipient, a full inbox.
    ``duplicated``, ``delayed`` and ``reordered`` count envelopes given that fault.
    """

    sent: int = 0
    sent_bytes: int = 0
    delivered: int = 0
    delivered_bytes: int = 0
    dropped: int = 0
    dropped_bytes: int = 0
    duplicated: int = 0
    delayed: int = 0
    reordered: int = 0


@dataclass(frozen=True)
class PartyTraffic:
    """One party's messages and bytes through a hub, counted like
    :class:`~transports.mqtt_options.MqttStats` counts ``messages_sent``/``bytes_sent``:
    one payload per recipient.

    ``sent`` counts the envelopes this party sent (a send to three recipients counts
    three, whatever then happens to them); ``received`` the copies put into its inbox
    (a duplicate adds two, a dropped copy nothing).
    """

    sent: int = 0
    sent_bytes: int = 0
    received: int = 0
    received_bytes: int = 0

    def __add__(self, other: PartyTraffic) -> PartyTraffic:
        return PartyTraffic(self.sent + other.sent, self.sent_bytes + other.sent_bytes,
                            self.received + other.received,
                            self.received_bytes + other.received_bytes)


@dataclass(eq=False)
class _Held:
    """A REORDER envelope waiting for the next message to its recipient (or its timer)."""

    envelope: Envelope
    timer: asyncio.TimerHandle | None = None


class _Closed:
    """Inbox sentinel that wakes a blocked :meth:`MemoryTransport.receive` on close."""


_CLOSED = _Closed()


class MemoryTransport:
    """One party's end of a :class:`MemoryHub`; implements :class:`~transports.base.Transport`.

    The inbox holds at most the hub's ``inbox_limit`` messages; beyond that the hub
    drops, as MQTT brokers do with ``max_queued_messages``, so no sender blocks.
    """

    def __init__(self, hub: MemoryHub, party_id: str, inbox_limit: int) -> None:
        self._hub = hub
        self._party_id = party_id
        self._limit = inbox_limit
        self._inbox: asyncio.Queue[bytes | _Closed] = asyncio.Queue()
        self._closed = False

    @property
    def party_id(self) -> str:
        """The id this transport connected with."""
        return self._party_id

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran or the hub disconnected this party."""
        return self._closed

    @property
    def pending(self) -> int:
        """Messages that arrived and were not received yet."""
        return self._inbox.qsize() - (1 if self._closed else 0)

    async def send(self, recipients: Sequence[str], data: bytes) -> None:
        """Route one copy per recipient through the hub's fault plan.

        Yields to the event loop once, as a real network write would, so a party
        that only sends cannot starve the others.
        """
        if self._closed:
            raise TransportClosed(f"party {self._party_id!r}: send on a closed transport")
        if isinstance(recipients, str):
            raise ParameterError(f"recipients must be a sequence of party ids, not {recipients!r}")
        self._hub._route(self._party_id, recipients, bytes(data))
        await asyncio.sleep(0)

    async def receive(self) -> bytes:
        """The next message; after close, what already arrived, then TransportClosed."""
        if self._closed and self._inbox.qsize() <= 1:
            raise TransportClosed(f"party {self._party_id!r}: transport closed")
        item = await self._inbox.get()
        if isinstance(item, _Closed):
            self._inbox.put_nowait(item)  # keep waking any other receiver
            raise TransportClosed(f"party {self._party_id!r}: transport closed")
        return item

    async def close(self) -> None:
        """Close and leave the hub, so the party id may connect again."""
        self._shut()
        self._hub._forget(self)

    async def __aenter__(self) -> MemoryTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _offer(self, data: bytes) -> bool:
        """Put ``data`` in the inbox; False (dropped) when closed or full."""
        if self._closed or self._inbox.qsize() >= self._limit:
            return False
        self._inbox.put_nowait(data)
        return True

    def _shut(self) -> None:
        """Mark closed and wake waiters; the sentinel goes after what already arrived."""
        if not self._closed:
            self._closed = True
            self._inbox.put_nowait(_CLOSED)


class MemoryHub:
    """The switch of one simulated federation: routes bytes between connected parties.

    Use it inside one running event loop (DELAY and REORDER use its timers).
    Delivery goes to whoever holds a party id when a copy arrives, so a delayed
    message may reach a party that reconnected meanwhile.
    """

    def __init__(self, *, faults: FaultPlan | None = None, inbox_limit: int = 10_000,
                 label: Callable[[bytes], str] | None = None) -> None:
        """``label(data)``, if given, names each sent message (once per send, whatever
        the recipients): :meth:`traffic` counts per label.  It must not raise."""
        if inbox_limit < 1:
            raise ParameterError(f"inbox_limit must be >= 1, got {inbox_limit!r}")
        self._plan = faults or FaultPlan()
        self._label = label
        # (party, label) -> [sent, sent_bytes, received, received_bytes]
        self._traffic: dict[tuple[str, str], list[int]] = {}
        self._inbox_limit = inbox_limit
        self._parties: dict[str, MemoryTransport] = {}
        self._held: dict[str, list[_Held]] = {}
        self._counts: Counter[str] = Counter()
        self._next_index = 0

    @property
    def stats(self) -> HubStats:
        """A snapshot of the counters; see :class:`HubStats`."""
        return HubStats(**self._counts)

    def traffic(self, party_id: str, label: str | None = None) -> PartyTraffic:
        """What ``party_id`` sent and received so far (of messages labelled ``label``
        only, when given); a party never seen has all zeros."""
        total = PartyTraffic()
        for (party, named), counts in self._traffic.items():
            if party == party_id and (label is None or named == label):
                total += PartyTraffic(*counts)
        return total

    @property
    def labels(self) -> frozenset[str]:
        """Every label the hub's ``label`` function gave so far ("" without one)."""
        return frozenset(named for _, named in self._traffic)

    @property
    def parties(self) -> frozenset[str]:
        """Party ids connected now."""
        return frozenset(self._parties)

    def connect(self, party_id: str) -> MemoryTransport:
        """A new transport for ``party_id``; one live connection per id, like a client id."""
        if not isinstance(party_id, str) or not party_id:
            raise ParameterError(f"party_id must be a non-empty string, got {party_id!r}")
        if party_id in self._parties:
            raise TransportError(
                f"party {party_id!r} is already connected; close that transport first"
            )
        transport = MemoryTransport(self, party_id, self._inbox_limit)
        self._parties[party_id] = transport
        return transport

    def disconnect(self, party_id: str) -> None:
        """Simulate ``party_id`` vanishing: close its transport, drop what comes for it.

        Does nothing for a party that is not connected, so tests may call it freely.
        """
        transport = self._parties.pop(party_id, None)
        if transport is not None:
            transport._shut()

    def _forget(self, transport: MemoryTransport) -> None:
        if self._parties.get(transport.party_id) is transport:
            del self._parties[transport.party_id]

    def _route(self, sender: str, recipients: Sequence[str], data: bytes) -> None:
        """Apply the fault plan to one envelope per recipient."""
        label = "" if self._label is None or not recipients else self._label(data)
        for recipient in recipients:
            envelope = Envelope(sender, recipient, data, self._next_index, label)
            self._next_index += 1
            self._count("sent", len(data))
            self._tally(sender, label, 0, len(data))
            fault, seconds = self._plan.choose(envelope)
            self._apply(fault, seconds, envelope)

    def _apply(self, fault: Fault, seconds: float, envelope: Envelope) -> None:
        if fault is Fault.DELIVER:
            self._deliver(envelope)
        elif fault is Fault.DROP:
            self._count("dropped", len(envelope.data))
        elif fault is Fault.DUPLICATE:
            self._counts["duplicated"] += 1
            self._deliver(envelope)
            self._deliver(envelope)
        elif fault is Fault.DELAY:
            self._counts["delayed"] += 1
            asyncio.get_running_loop().call_later(seconds, self._deliver, envelope)
        else:
            self._counts["reordered"] += 1
            self._hold(envelope, seconds)

    def _deliver(self, envelope: Envelope) -> None:
        """Deliver one copy, then release what REORDER held back for its recipient."""
        self._put(envelope)
        for held in self._held.pop(envelope.recipient, []):
            if held.timer is not None:
                held.timer.cancel()
            self._put(held.envelope)

    def _hold(self, envelope: Envelope, seconds: float) -> None:
        held = _Held(envelope)
        held.timer = asyncio.get_running_loop().call_later(seconds, self._release, held)
        self._held.setdefault(envelope.recipient, []).append(held)

    def _release(self, held: _Held) -> None:
        """No next message came in time: deliver a held envelope on its own."""
        waiting = self._held.get(held.envelope.recipient, [])
        if held in waiting:
            waiting.remove(held)
            self._put(held.envelope)

    def _put(self, envelope: Envelope) -> None:
        transport = self._parties.get(envelope.recipient)
        if transport is not None and transport._offer(envelope.data):
            self._count("delivered", len(envelope.data))
            self._tally(envelope.recipient, envelope.label, 2, len(envelope.data))
        else:
            self._count("dropped", len(envelope.data))

    def _count(self, what: str, size: int) -> None:
        self._counts[what] += 1
        self._counts[f"{what}_bytes"] += size

    def _tally(self, party: str, label: str, offset: int, size: int) -> None:
        """Per-party counts: offset 0 for sent, 2 for received (see PartyTraffic)."""
        counts = self._traffic.setdefault((party, label), [0, 0, 0, 0])
        counts[offset] += 1
        counts[offset + 1] += size


if TYPE_CHECKING:

    def _conforms(transport: MemoryTransport) -> Transport:
        """mypy checks here that MemoryTransport satisfies the Transport protocol."""
        return transport
