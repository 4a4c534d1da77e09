"""The whole protocol at N clients, in one process, with every party's bytes counted.

:func:`run_protocol` runs N real :class:`~threshold_fl.node.FederatedClient` nodes and
the :class:`~threshold_fl.node.Aggregator` node (their real state machines, real
OpenFHE, threshold mode with the manifest's default t = N // 2 + 1 and CKKS parameters
for N, selective encryption at the demo's default: the top 10 % of the sensitivity map
plus the first and last layers) as asyncio tasks over the in-memory hub
(:class:`~transports.MemoryHub`), not over MQTT: key agreement, mask agreement, then
FedAvg rounds in which every client trains a small torch model on its part of the
digits.  The hub counts each party's bytes as the MQTT transport's stats do (the
encoded message, once per recipient; MQTT's chunk headers and acks are not included),
and labels every message with the stage, round and type its header claims
(:func:`protocols.codec.peek_step`), so each party's bytes split into set-up (key and
mask agreement) and each round.

Every client's decrypted global model is checked against the plaintext FedAvg of the
models the clients really trained (weights: sample counts), within the crypto layer's
error bound plus float32 rounding of the plain part.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocols import MaskPolicy, Mode, ModelSpec, make_manifest
from protocols.codec import peek_step
from protocols.events import Event, KeyAgreed, MaskAgreed, RoundCompleted
from protocols.manifest import Manifest, Timeouts
from protocols.messages import Stage
from threshold_fl.app.federation import client_learners
from threshold_fl.arrays import FloatArray
from threshold_fl.crypto import context_for
from threshold_fl.errors import SessionAborted, ThresholdFLError
from threshold_fl.identity import Identity
from threshold_fl.ml.learner import LocalLearner
from threshold_fl.ml.training import LocalTraining
from threshold_fl.node import Aggregator, FederatedClient
from transports import MemoryHub, PartyTraffic

__all__ = ["AGGREGATOR", "DECRYPT_REQUEST", "ProtocolRun", "ProtocolRunFailed", "Traffic",
           "fedavg_bound", "fedavg_deviation", "run_protocol"]

AGGREGATOR = "server"
DECRYPT_REQUEST = "DecryptRequest"  # the message that carries c1 to the decryption set
#: Generous deadlines: on 2 shared cores, key agreement for 50 parties takes minutes,
#: and a party dropped for slowness would change what is measured.
BENCH_TIMEOUTS = Timeouts(join_s=1800.0, keys_s=3600.0, upload_s=3600.0, decrypt_s=3600.0)
SETUP = "setup"


class ProtocolRunFailed(ThresholdFLError):
    """The run did not complete as measured: a party dropped, aborted or a model was wrong."""


def label_message(data: bytes) -> str:
    """The hub's label of a message: ``setup:<stage>:<type>``, ``round:<r>:<type>`` or
    ``end:<type>`` (Finished and Abort), from its unauthenticated header."""
    peeked = peek_step(data)
    if peeked is None:
        return "other"
    if peeked.kind in ("Finished", "Abort"):
        return f"end:{peeked.kind}"
    if peeked.stage is Stage.ROUND:
        return f"round:{peeked.round}:{peeked.kind}"
    return f"{SETUP}:{peeked.stage.name.lower()}:{peeked.kind}"


@dataclass(frozen=True)
class Traffic:
    """Every party's bytes by label (see :func:`label_message`)."""

    by_party: dict[str, dict[str, PartyTraffic]]

    @classmethod
    def of(cls, hub: MemoryHub, parties: Sequence[str]) -> Traffic:
        counted = {party: {label: hub.traffic(party, label) for label in sorted(hub.labels)}
                   for party in parties}
        return cls({party: {label: traffic for label, traffic in labels.items()
                            if traffic != PartyTraffic()}
                    for party, labels in counted.items()})

    def total(self, party: str, prefix: str) -> PartyTraffic:
        """A party's traffic over the labels that start with ``prefix``."""
        total = PartyTraffic()
        for label, traffic in self.by_party[party].items():
            if label.startswith(prefix):
                total += traffic
        return total

    def setup(self, party: str) -> PartyTraffic:
        return self.total(party, f"{SETUP}:")

    def round(self, party: str, round_: int) -> PartyTraffic:
        return self.total(party, f"round:{round_}:")

    def members(self, round_: int, clients: Sequence[str]) -> list[str]:
        """The clients that received c1 in ``round_``: the round's decryption set."""
        label = f"round:{round_}:{DECRYPT_REQUEST}"
        return [client for client in clients
                if self.by_party[client].get(label, PartyTraffic()).received > 0]

    def by_kind(self, party: str, round_: int) -> dict[str, PartyTraffic]:
        """A party's traffic in ``round_`` per message type."""
        prefix = f"round:{round_}:"
        return {label[len(prefix):]: traffic for label, traffic in self.by_party[party].items()
                if label.startswith(prefix)}


@dataclass
class ProtocolRun:
    """One whole-protocol run: the manifest, every party's traffic, times and checks."""

    manifest: Manifest
    clients: list[str]
    traffic: Traffic
    key_s: float  # start to the aggregator's KeyAgreed
    mask_s: float  # KeyAgreed to MaskAgreed
    round_s: list[float]  # per round, at the aggregator
    wall_s: float
    encrypted_values: int
    max_error: float  # over every client's model of every round
    error_bound: float
    contributors: dict[int, tuple[str, ...]] = field(default_factory=dict)


class _Recorder:
    """What the run needs beyond the hub's counts: the aggregator's event times, the
    models the clients trained and the global models they decrypted."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.times: dict[str, float] = {}
        self.contributors: dict[int, tuple[str, ...]] = {}
        self.trained: dict[int, dict[str, FloatArray]] = defaultdict(dict)
        self.results: dict[str, dict[int, FloatArray]] = defaultdict(dict)
        self.samples: dict[str, int] = {}
        self.encrypted_values = 0

    def aggregator_event(self, event: Event) -> None:
        now = time.perf_counter() - self.started
        if isinstance(event, KeyAgreed):
            self.times.setdefault("keys", now)
        elif isinstance(event, MaskAgreed):
            self.times["mask"] = now
            self.encrypted_values = event.mask.count
        elif isinstance(event, RoundCompleted):
            self.times[f"round {event.round}"] = now
            self.contributors[event.round] = tuple(event.contributors)

    def max_error(self, clients: Sequence[str]) -> tuple[float, float]:
        """The largest deviation of a decrypted model from plaintext FedAvg, and the
        largest |value| of those FedAvg models."""
        return fedavg_deviation(self.contributors, self.samples, self.trained,
                                {client: self.results[client] for client in clients})


def fedavg_deviation(contributors: Mapping[int, Sequence[str]], samples: Mapping[str, int],
                     trained: Mapping[int, Mapping[str, FloatArray]],
                     results: Mapping[str, Mapping[int, FloatArray]]) -> tuple[float, float]:
    """The largest deviation of a client's decrypted global model (*results*: client ->
    round -> model) from plaintext FedAvg of the round's *contributors*' *trained*
    models (weights: their *samples*), and the largest |value| of those FedAvg models."""
    worst, largest = 0.0, 0.0
    for round_, members in contributors.items():
        weights = np.array([samples[c] for c in members], dtype=float)
        weights /= weights.sum()
        expected = sum(w * trained[round_][c] for w, c in zip(weights, members, strict=True))
        largest = max(largest, float(np.abs(expected).max()))
        for client, models in results.items():
            got = models.get(round_)
            if got is None:
                raise ProtocolRunFailed(f"{client} has no global model of round {round_}")
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst, largest


def fedavg_bound(manifest: Manifest, contributors: int, largest: float) -> float:
    """How far a decrypted model may be from plaintext FedAvg: CKKS's bound for
    *contributors* summands plus float32 rounding of the plain part (uploads and
    aggregate), for FedAvg values up to *largest*."""
    return context_for(manifest.params).error_bound(contributors) + 2.0**-22 * max(1.0, largest)


async def _client(manifest: Manifest, identity: Identity, hub: MemoryHub,
                  learner: LocalLearner, recorder: _Recorder) -> None:
    """One client node whose learner trains each round; records what it trained and the
    global models it decrypted."""
    name = identity.party_id
    recorder.samples[name] = len(learner.data)
    async with hub.connect(name) as link:
        def train(round_: int, model: FloatArray | None) -> FloatArray:
            trained = learner.train(round_, model, client.mask)
            recorder.trained[round_][name] = trained.copy()
            return trained

        client = FederatedClient(manifest, identity, link, samples=len(learner.data),
                                 train=train, sensitivity=learner.sensitivity)
        async with client:
            async for result in client.rounds():
                recorder.results[name][result.round] = result.model


async def _run(manifest: Manifest, identities: dict[str, Identity],
               learners: dict[str, LocalLearner], recorder: _Recorder) -> MemoryHub:
    hub = MemoryHub(label=label_message)
    async with hub.connect(AGGREGATOR) as link:
        aggregator = Aggregator(manifest, identities[AGGREGATOR], link,
                                on_event=recorder.aggregator_event)
        server = asyncio.create_task(aggregator.run())
        clients = [asyncio.create_task(_client(manifest, identities[name], hub, learners[name],
                                               recorder))
                   for name in learners]
        try:
            await asyncio.gather(server, *clients)
        except SessionAborted as error:
            for task in [server, *clients]:
                task.cancel()
            raise ProtocolRunFailed(f"the session aborted: {error}") from None
    summary = server.result()
    if summary.dropped:
        raise ProtocolRunFailed(f"the aggregator dropped {summary.dropped}: the figures "
                                "would not be those of N clients")
    return hub


def run_protocol(clients: int, rounds: int, *, model: str = "logreg", fraction: float = 0.1,
                 seed: int = 0, training: LocalTraining | None = None) -> ProtocolRun:
    """Run the whole protocol with ``clients`` clients and ``rounds`` FedAvg rounds."""
    names = [f"client-{index:03d}" for index in range(1, clients + 1)]
    identities = {name: Identity.generate(name) for name in [*names, AGGREGATOR]}
    spec = ModelSpec(model, seed)
    manifest = make_manifest(
        session=f"bench-clients-{secrets.token_hex(8)}", aggregator=identities[AGGREGATOR].public,
        clients=[identities[name].public for name in names], model=spec,
        mode=Mode.THRESHOLD, rounds=rounds, mask=MaskPolicy(fraction, True),
        timeouts=BENCH_TIMEOUTS)
    positions = [manifest.client_ids.index(name) for name in names]
    found, _ = client_learners(spec, clients, positions, training or LocalTraining())
    learners = dict(zip(names, found, strict=True))
    context_for(manifest.params)  # built once, shared by every party: not timed
    started = time.perf_counter()
    recorder = _Recorder(started)
    hub = asyncio.run(_run(manifest, identities, learners, recorder))
    wall_s = time.perf_counter() - started
    for round_ in range(1, rounds + 1):
        if set(recorder.contributors.get(round_, ())) != set(names):
            raise ProtocolRunFailed(f"round {round_} had contributors "
                                    f"{recorder.contributors.get(round_)}, not all {clients}")
    max_error, largest = recorder.max_error(names)
    bound = fedavg_bound(manifest, clients, largest)
    if not max_error <= bound:
        raise ProtocolRunFailed(f"a decrypted model is {max_error:.2e} from plaintext FedAvg, "
                                f"beyond the bound {bound:.2e}")
    times = recorder.times
    marks = [times["mask"]] + [times[f"round {r}"] for r in range(1, rounds + 1)]
    return ProtocolRun(
        manifest, names, Traffic.of(hub, [*names, AGGREGATOR]), times["keys"],
        times["mask"] - times["keys"], [b - a for a, b in itertools.pairwise(marks)],
        wall_s, recorder.encrypted_values, max_error, bound, dict(recorder.contributors))
