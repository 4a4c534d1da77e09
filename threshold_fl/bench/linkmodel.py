"""A model of each protocol stage's time on a given network, from a measured profile.

**The profile** comes from one real run's aggregator trace
(:mod:`threshold_fl.app.trace`): the federation is a star through the aggregator, so
that trace holds every message, timed.  The session is cut into **phases** at the
aggregator's first send of each trigger message in a step (:data:`TRIGGERS`; a step is
its stage, key epoch and round, so a key agreement restarted after a dropout, or a key
rotation, opens its own ``keys`` phase):

- ``keys``: KeygenStart to MaskStart, or to round 1's RoundStart at mask fraction 1
  (public shares up and relayed, the sealed key deliveries up and relayed, key
  confirmations);
- ``mask upload``, ``mask shares``, ``mask broadcast``: mask agreement, as a round; absent
  at mask fraction 1 (the default: everything encrypted, no mask agreement);
- ``upload``: RoundStart to DecryptRequest (clients train, encrypt and upload; the
  aggregator adds the uploads up);
- ``shares``: DecryptRequest to Fused (the decryption set downloads the c1 parts,
  makes and uploads its shares; the aggregator fuses);
- ``broadcast``: Fused (or Aggregate, in single-key and plaintext modes) to the
  next RoundStart or Finished (every client downloads, decodes and confirms).

Each phase holds **hops**: the messages of one type going one way (clients to the
aggregator, or back), in the order they first appear, each with its time in the
profile: a message ready earlier (a client that finished training sooner) uses the
link while the others still compute (:meth:`Hop.seconds`).  A phase's **compute** is its
measured seconds less its hops' network time on the link the profile ran on
(:data:`UNLIMITED` by default: no network time, so compute is the whole measured
phase, transport software included).  Predicted phase time on a link =
compute + the sum of its hops' network times (hops taken one after another).

**A hop's network time** (:func:`hop_seconds`).  All traffic goes through the
broker: every message crosses the sender's link up and the recipient's link down,
and the broker's own link carries every party's bytes, each way.  The MQTT
transport cuts each message into a manifest frame and 1 MiB chunks
(:mod:`transports.frames`); its sender publishes one frame at a time and waits for
the broker's PUBACK (QoS 1) before the next, so each frame costs a round trip on top
of its own transmission; the end-to-end ack window (:mod:`transports.window`, 8
frames per recipient) allows ``window`` frames per two round trips to one recipient.
The hop lasts as long as its slowest bottleneck:

    max( per sender: sum over its frames of (bytes / (eff * min(B_party, B_broker)) + RTT),
         broker in: all bytes / (eff * B_broker),  broker out: the same,
         per recipient: its bytes / (eff * B_party),
         per sender-recipient pair: ceil(frames / window) * 2 RTT )
    + RTT / 2 + the last chunk / (eff * min(B_party, B_broker))  (its leg to the recipient)

``eff`` is the payload share of what goes on the wire (TCP/IP and Ethernet headers
at MTU 1500: 1448 of 1514 bytes).  Left out: TCP slow start and congestion control
(a long-RTT link needs windows of bandwidth x RTT bytes; BBR sizes its window from the
least round trip of the last 10 s, so a flow whose acks queue behind the other
direction's traffic runs window-limited: ``bench network check`` uses loss-based reno
by default for that reason, docs/benchmarks.md), the broker's CPU, MQTT and
frame headers and acks (under 0.1 % of a 1 MiB chunk), losses and retransmissions
(TCP's, and the transport's own after its ack timeout), compute overlapping with
transfers beyond that (a phase's compute and hops are otherwise added up, so the model
leans high), and stragglers: compute and readiness are the profile's.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from threshold_fl.app.trace import TraceEvent
from threshold_fl.errors import ParameterError
from transports.frames import DEFAULT_CHUNK_SIZE

__all__ = ["AGGREGATOR", "SCENARIOS", "TRIGGERS", "UNLIMITED", "WIRE_EFFICIENCY", "Delivery",
           "Hop", "Link", "Phase", "PhasePrediction", "hop_seconds", "phases_of", "predict"]

#: What the trace calls the aggregator in hops (the trace does not name its own party).
AGGREGATOR = "aggregator"
#: TCP payload per Ethernet frame at MTU 1500 with timestamps: 1448 of 1514 bytes.
WIRE_EFFICIENCY = 1448 / 1514
#: The MQTT transport's defaults (transports.mqtt_options.MqttOptions).
WINDOW = 8

#: The aggregator's messages that open a phase, and the phase's name.
TRIGGERS = {"KeygenStart": "keys", "MaskStart": "upload", "RoundStart": "upload",
            "DecryptRequest": "shares", "Fused": "broadcast", "Aggregate": "broadcast",
            "Finished": "end"}


@dataclass(frozen=True)
class Link:
    """A star network around the broker.  ``broker_bit_s``: the broker's link, each
    direction, carrying every party's traffic; ``party_bit_s``: each party's own link
    (None: not a limit, as when the parties share the broker's link); ``rtt_s``: the
    round trip between a party and the broker; ``efficiency``: payload share of the
    wire bytes."""

    name: str
    broker_bit_s: float
    party_bit_s: float | None
    rtt_s: float
    efficiency: float = WIRE_EFFICIENCY
    note: str = ""

    def __post_init__(self) -> None:
        rates = [self.broker_bit_s] + ([] if self.party_bit_s is None else [self.party_bit_s])
        if not all(rate > 0 for rate in rates):
            raise ParameterError(f"link {self.name!r}: bandwidths must be > 0 bit/s")
        if not (math.isfinite(self.rtt_s) and self.rtt_s >= 0):
            raise ParameterError(f"link {self.name!r}: the round trip must be >= 0 s")
        if not 0 < self.efficiency <= 1:
            raise ParameterError(f"link {self.name!r}: efficiency must lie in (0, 1]")

    def seconds(self, payload: float, bit_s: float | None) -> float:
        """Seconds to put *payload* bytes through a link of *bit_s* (None: no limit)."""
        if bit_s is None or math.isinf(bit_s):
            return 0.0
        return payload * 8 / (self.efficiency * bit_s)

    @property
    def path_bit_s(self) -> float:
        """The slower of the broker's and a party's link: what one frame gets on its way
        to or from the broker."""
        return min(self.broker_bit_s, math.inf if self.party_bit_s is None else self.party_bit_s)

    def describe(self) -> str:
        party = "shared" if self.party_bit_s is None else _rate(self.party_bit_s)
        return (f"{self.name}: broker {_rate(self.broker_bit_s)}, parties {party}, "
                f"RTT {self.rtt_s * 1e3:g} ms")


def _rate(bit_s: float) -> str:
    if math.isinf(bit_s):
        return "unlimited"
    return f"{bit_s / 1e9:g} Gbit/s" if bit_s >= 1e9 else f"{bit_s / 1e6:g} Mbit/s"


#: The profile's link when it ran on one machine: no network time at all.
UNLIMITED = Link("unlimited", math.inf, None, 0.0, note="the profile's own run")

#: The FedML-HE paper's bandwidth scenarios (its appendix D.5), as we assume them:
#: every party, the broker too, on its own link of that speed.
SCENARIOS = {
    "infiniband": Link("infiniband", 100e9, 100e9, 2e-6,
                       note="InfiniBand in one data centre: 100 Gbit/s, ~1 us each way"),
    "region": Link("region", 10e9, 10e9, 1e-3,
                   note="one cloud region: 10 Gbit/s, ~1 ms round trip"),
    "cross-region": Link("cross-region", 1e9, 1e9, 50e-3,
                         note="across regions, fast end: 1 Gbit/s, 50 ms round trip"),
    "cross-region-slow": Link("cross-region-slow", 100e6, 100e6, 100e-3,
                              note="across regions, slow end: 100 Mbit/s, 100 ms round trip"),
}


@dataclass(frozen=True)
class Delivery:
    """One message's payload from *sender* to *recipient* (one MQTT transfer)."""

    sender: str
    recipient: str
    bytes: int


@dataclass(frozen=True)
class Hop:
    """The messages of one type going one way within a phase; *times*: when each one
    was sent or arrived in the profile (empty: all at once)."""

    kind: str
    messages: tuple[Delivery, ...]
    times: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.times and len(self.times) != len(self.messages):
            raise ParameterError(f"hop {self.kind}: {len(self.times)} times for "
                                 f"{len(self.messages)} messages")

    @property
    def bytes(self) -> int:
        return sum(message.bytes for message in self.messages)

    def seconds(self, link: Link) -> float:
        """The hop's network time on *link* after its last message was ready.

        Messages ready earlier (a client that finished training sooner) use the link
        while the others are still computing: a fluid queue.  The hop ends at the
        latest, over each message k in order of readiness, of k's readiness plus the
        time the messages from k on need together (:func:`hop_seconds`); counted from
        the last readiness, as the profile's compute already reaches it."""
        if not self.times:
            return hop_seconds(self.messages, link)
        order = sorted(range(len(self.messages)), key=self.times.__getitem__)
        last = self.times[order[-1]]
        return max(self.times[order[k]] - last
                   + hop_seconds([self.messages[i] for i in order[k:]], link)
                   for k in range(len(order)))


def _frames(payload: int, chunk: int) -> int:
    """A transfer's frames: its manifest and its chunks (at least one)."""
    return 1 + max(1, math.ceil(payload / chunk))


def hop_seconds(messages: Iterable[Delivery], link: Link, *, chunk: int = DEFAULT_CHUNK_SIZE,
                window: int = WINDOW) -> float:
    """The network time of one hop on *link* (the formula in the module docstring)."""
    messages = list(messages)
    if not messages:
        return 0.0
    sender_s: dict[str, float] = defaultdict(float)
    recipient_bytes: dict[str, int] = defaultdict(int)
    pair_frames: dict[tuple[str, str], int] = defaultdict(int)
    for message in messages:
        frames = _frames(message.bytes, chunk)
        # each frame crosses the whole path to the broker before its PUBACK comes back
        sender_s[message.sender] += (link.seconds(message.bytes, link.path_bit_s)
                                     + frames * link.rtt_s)
        recipient_bytes[message.recipient] += message.bytes
        pair_frames[message.sender, message.recipient] += frames
    total = sum(message.bytes for message in messages)
    bounds = [max(sender_s.values()), link.seconds(total, link.broker_bit_s),
              max(link.seconds(b, link.party_bit_s) for b in recipient_bytes.values()),
              max(math.ceil(f / window) for f in pair_frames.values()) * 2 * link.rtt_s]
    last_chunk = max(min(message.bytes, chunk) for message in messages)
    return max(bounds) + link.rtt_s / 2 + link.seconds(last_chunk, link.path_bit_s)


@dataclass(frozen=True)
class Phase:
    """One phase of a session as the profile measured it (see the module docstring)."""

    name: str
    stage: str
    epoch: int
    round: int
    measured_s: float
    hops: tuple[Hop, ...]

    @property
    def label(self) -> str:
        if self.stage == "ROUND":
            return f"round {self.round} {self.name}"
        if self.name == "keys":  # the first key epoch, or a restart or rotation
            return "keys" if self.epoch <= 1 else f"keys (epoch {self.epoch})"
        return f"{self.stage.lower()} {self.name}"

    @property
    def bytes(self) -> int:
        return sum(hop.bytes for hop in self.hops)

    def network_s(self, link: Link) -> float:
        return sum(hop.seconds(link) for hop in self.hops)



def _messages(event: TraceEvent) -> list[Delivery]:
    if event.event == "send":
        return [Delivery(AGGREGATOR, peer, event.bytes) for peer in event.peers]
    return [Delivery(peer, AGGREGATOR, event.bytes) for peer in event.peers]


def _hops(events: Sequence[TraceEvent]) -> tuple[Hop, ...]:
    """The phase's messages grouped by type and direction, in order of appearance."""
    grouped: dict[tuple[str, str], list[tuple[Delivery, float]]] = {}
    for event in events:
        if event.event in ("send", "recv"):
            grouped.setdefault((event.kind, event.event), []).extend(
                (delivery, event.t) for delivery in _messages(event))
    return tuple(Hop(kind, tuple(d for d, _ in items), tuple(t for _, t in items))
                 for (kind, _), items in grouped.items())


def phases_of(trace: Sequence[TraceEvent]) -> list[Phase]:
    """The session's phases from the aggregator's trace (joining is left out: it waits
    for the processes to start)."""
    events = sorted(trace, key=lambda event: event.t)
    starts: list[int] = []
    seen: set[tuple[str, str, int, int]] = set()
    for index, event in enumerate(events):
        step = (event.kind, event.stage, event.epoch, event.round)
        if event.event == "send" and event.kind in TRIGGERS and step not in seen:
            seen.add(step)
            starts.append(index)
    phases = []
    for start, end in itertools.pairwise(starts):
        opener = events[start]
        phases.append(Phase(TRIGGERS[opener.kind], opener.stage, opener.epoch, opener.round,
                            events[end].t - opener.t, _hops(events[start:end])))
    if not phases:
        raise ParameterError("the trace holds no complete phase (no KeygenStart, MaskStart "
                             "or RoundStart followed by another step): was the session cut short?")
    return phases


@dataclass(frozen=True)
class PhasePrediction:
    """A phase's predicted seconds on one link: compute (from the profile) + network."""

    phase: Phase
    link: Link
    compute_s: float
    network_s: float

    @property
    def seconds(self) -> float:
        return self.compute_s + self.network_s


def predict(phases: Sequence[Phase], link: Link,
            profile_link: Link = UNLIMITED) -> list[PhasePrediction]:
    """Each phase's predicted time on *link*, its compute taken from the profile
    measured on *profile_link* (never below zero)."""
    predictions = []
    for phase in phases:
        compute = max(0.0, phase.measured_s - phase.network_s(profile_link))
        network = sum(hop.seconds(link) for hop in phase.hops)
        predictions.append(PhasePrediction(phase, link, compute, network))
    return predictions
