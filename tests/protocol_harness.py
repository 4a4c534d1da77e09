"""A deterministic, synchronous network for driving the real state machines in tests.

Machines exchange real signed bytes; the harness plays the transport (with
programmable loss, duplication, delay and reordering) and a virtual clock, and
plays every client's application (sensitivity maps and training).  Nothing here is
a fake of the protocol: only the network and the application are simulated.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openfhe

from protocols import (
    AggregatorMachine,
    ClientMachine,
    KeyAuthorityMachine,
    Manifest,
    MaskPolicy,
    Mode,
    Timeouts,
    make_manifest,
)
from protocols.events import (
    Aborted,
    Finished,
    RoundCompleted,
    SensitivityNeeded,
    Step,
    UpdateNeeded,
)
from threshold_fl.crypto.params import CkksParams
from threshold_fl.errors import MessageRejected
from threshold_fl.identity import Identity

AGGREGATOR = "aggregator"
AUTHORITY = "authority"
TIMEOUTS = Timeouts(join_s=10, keys_s=10, upload_s=10, decrypt_s=10)


def identity(name: str) -> Identity:
    return Identity.from_seed(name, hashlib.sha256(name.encode()).digest())


def counter_randomness(name: str) -> Callable[[int], bytes]:
    """Deterministic bytes per party (tests only: real drivers pass os.urandom)."""
    counter = itertools.count()

    def draw(size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(f"{name}/{next(counter)}".encode()).digest()
        return out[:size]

    return draw


def build_manifest(
    clients: int,
    *,
    mode: Mode = Mode.THRESHOLD,
    length: int = 40,
    rounds: int = 2,
    fraction: float = 0.25,  # below 1, so the mask stage runs (at 1 there is none)
    threshold: int | None = None,
    first_and_last: bool = True,
    params: CkksParams | None = None,
) -> Manifest:
    names = [f"client{index}" for index in range(1, clients + 1)]
    authority = identity(AUTHORITY).public if mode is Mode.SINGLE_KEY else None
    return make_manifest(
        session="test-session",
        aggregator=identity(AGGREGATOR).public,
        clients=[identity(name).public for name in names],
        key_authority=authority,
        model_length=length,
        mode=mode,
        threshold=threshold,
        rounds=rounds,
        params=params,
        always_encrypt=((0, 2), (length - 2, length)) if length >= 4 else (),
        mask=MaskPolicy(fraction=fraction, first_and_last=first_and_last),
        timeouts=TIMEOUTS,
    )


def local_model(name: str, round_: int, length: int) -> np.ndarray:
    """A client's 'trained' model: deterministic per client and round, within ±1."""
    seed = int.from_bytes(hashlib.sha256(f"{name}/{round_}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed).uniform(-1, 1, length).astype(np.float32).astype(float)


def sensitivity_map(name: str, length: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"sens/{name}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed).uniform(0, 1, length)


@dataclass(order=True)
class _Pending:
    time: float
    order: int
    recipient: str = field(compare=False)
    data: bytes = field(compare=False, repr=False)


# A fault rule gets (sender kind, recipient, message kind, time) and returns the list of
# extra delays for the copies to deliver ([] drops the message, [0, 0] duplicates it).
FaultRule = Callable[[str, str, str, float], list[float]]


class Network:
    """Routes machines' outgoing bytes with a virtual clock and optional faults."""

    def __init__(self, manifest: Manifest, *, latency: float = 0.01,
                 faults: FaultRule | None = None, samples: dict[str, int] | None = None,
                 weights: dict[str, float] | None = None) -> None:
        self.manifest = manifest
        self.now = 0.0
        self.latency = latency
        self.faults = faults
        self._queue: list[_Pending] = []
        self._order = itertools.count()
        self.aggregator = AggregatorMachine(manifest, identity(AGGREGATOR),
                                            counter_randomness(AGGREGATOR), weights=weights)
        samples = samples or {}
        self.clients = {
            name: ClientMachine(manifest, identity(name), counter_randomness(name),
                                samples=samples.get(name, 10 + index))
            for index, name in enumerate(manifest.client_ids)
        }
        self.authority = (
            KeyAuthorityMachine(manifest, identity(AUTHORITY), counter_randomness(AUTHORITY))
            if manifest.mode is Mode.SINGLE_KEY else None
        )
        self.dead: set[str] = set()
        self.events: dict[str, list[Any]] = {name: [] for name in self.machines}
        self.rejections: list[tuple[str, str]] = []
        self.uploads: dict[int, dict[str, np.ndarray]] = {}
        self.bytes_sent: dict[str, int] = {}
        self.history: list[tuple[str, str, bytes]] = []  # (sender, kind, bytes) of each send
        self.hooks: list[Callable[[Network, str, Any], None]] = []

    @property
    def machines(self) -> dict[str, Any]:
        out: dict[str, Any] = {AGGREGATOR: self.aggregator, **self.clients}
        if self.authority is not None:
            out[AUTHORITY] = self.authority
        return out

    def kill(self, name: str) -> None:
        """The party vanishes: it sends and receives nothing from now on."""
        self.dead.add(name)

    def start(self) -> None:
        self._apply(AGGREGATOR, self.aggregator.start(self.now))
        if self.authority is not None:
            self._apply(AUTHORITY, self.authority.start(self.now))
        for name, client in self.clients.items():
            self._apply(name, client.start(self.now))

    def run(self, *, until: float = 10_000.0, max_events: int = 100_000) -> None:
        """Deliver messages and fire deadlines until nothing is left to do."""
        for _ in range(max_events):
            deadline_owner, deadline = self._next_deadline()
            if self._queue and (deadline is None or self._queue[0].time <= deadline):
                pending = heapq.heappop(self._queue)
                self.now = max(self.now, pending.time)
                self._deliver(pending)
            elif deadline is not None and deadline <= until:
                self.now = max(self.now, deadline)
                machine = self.machines[deadline_owner]
                self._apply(deadline_owner, machine.on_deadline(self.now))
            else:
                return
        raise AssertionError("the simulation did not settle")

    def _next_deadline(self) -> tuple[str, float | None]:
        best: tuple[str, float | None] = ("", None)
        for name, machine in self.machines.items():
            if name in self.dead:
                continue
            deadline = machine.next_deadline()
            if deadline is not None and (best[1] is None or deadline < best[1]):
                best = (name, deadline)
        return best

    def _deliver(self, pending: _Pending) -> None:
        if pending.recipient in self.dead:
            return
        machine = self.machines[pending.recipient]
        try:
            step = machine.receive(pending.data, self.now)
        except MessageRejected as exc:
            self.rejections.append((pending.recipient, str(exc)))
            return
        self._apply(pending.recipient, step)

    def _apply(self, name: str, step: Step) -> None:
        if name in self.dead:
            return
        for outgoing in step.outgoing():
            self.history.append((name, outgoing.kind, outgoing.data))
            self.bytes_sent[outgoing.kind] = self.bytes_sent.get(outgoing.kind, 0) + len(
                outgoing.data
            ) * len(outgoing.recipients)
            for recipient in outgoing.recipients:
                delays = [0.0]
                if self.faults is not None:
                    delays = self.faults(name, recipient, outgoing.kind, self.now)
                for delay in delays:
                    heapq.heappush(self._queue, _Pending(
                        self.now + self.latency + delay, next(self._order), recipient,
                        outgoing.data))
        for event in step.events:
            self.events[name].append(event)
            for hook in self.hooks:
                hook(self, name, event)
            self._play_application(name, event)

    def _play_application(self, name: str, event: Any) -> None:
        if name in self.dead or name not in self.clients:
            return
        client = self.clients[name]
        length = self.manifest.model_length
        if isinstance(event, SensitivityNeeded):
            self._apply(name, client.submit_sensitivity(sensitivity_map(name, length), self.now))
        elif isinstance(event, UpdateNeeded):
            model = local_model(name, event.round, length)
            self.uploads.setdefault(event.round, {})[name] = model
            self._apply(name, client.submit_update(model, self.now))

    # -- outcomes ----------------------------------------------------------------------------
    def completed_rounds(self, name: str) -> list[RoundCompleted]:
        return [e for e in self.events[name] if isinstance(e, RoundCompleted)]

    def finished(self, name: str) -> bool:
        return any(isinstance(e, Finished) for e in self.events[name])

    def aborted(self, name: str) -> str | None:
        reasons = [e.reason for e in self.events[name] if isinstance(e, Aborted)]
        return reasons[0] if reasons else None

    def expected_global(self, round_: int, contributors: tuple[str, ...]) -> np.ndarray:
        """Plaintext FedAvg of the same updates, weighted by the sample counts."""
        weights = np.array([self.clients[name]._samples for name in contributors], float)
        weights /= weights.sum()
        updates = [self.uploads[round_][name] for name in contributors]
        return sum(w * u for w, u in zip(weights, updates, strict=True))  # type: ignore[return-value]


def assert_models_match_fedavg(net: Network, survivors: Iterable[str]
                               ) -> list[tuple[str, ...]]:
    """Every round the aggregator completed: each survivor's global model is plaintext
    FedAvg of that round's contributors, within the crypto bound.  The contributors,
    round by round."""
    contributors = []
    for event in net.completed_rounds(AGGREGATOR):
        expected = net.expected_global(event.round, event.contributors)
        for name in survivors:
            model = next(r.model for r in net.completed_rounds(name) if r.round == event.round)
            assert model is not None, f"{name} has no model for round {event.round}"
            assert np.abs(model - expected).max() <= crypto_bound(net), (name, event.round)
        contributors.append(event.contributors)
    return contributors


def crypto_bound(net: Network) -> float:
    """The crypto layer's bound for the federation's N inputs plus float32 rounding of
    the plain part (the same for any subset of contributors: fewer add less noise).
    Plaintext mode has only float32 rounding."""
    if net.manifest.mode is Mode.PLAINTEXT:
        return 1e-6
    return net.aggregator.context.error_bound(len(net.clients)) + 1e-7


def run_until(net: Network, predicate: Callable[[], bool], *, until: float = 10_000.0,
              max_events: int = 100_000) -> bool:
    """Run ``net`` like :meth:`Network.run`, but stop as soon as ``predicate()`` holds.

    The predicate is checked before anything happens and after every delivery or
    deadline (one loop of ``run``).  True: it held (the rest stays queued); False: the
    network settled without it holding.
    """
    if predicate():
        return True
    for _ in range(max_events):
        owner, deadline = net._next_deadline()
        if net._queue and (deadline is None or net._queue[0].time <= deadline):
            pending = heapq.heappop(net._queue)
            net.now = max(net.now, pending.time)
            net._deliver(pending)
        elif deadline is not None and deadline <= until:
            net.now = max(net.now, deadline)
            net._apply(owner, net.machines[owner].on_deadline(net.now))
        else:
            return False
        if predicate():
            return True
    raise AssertionError("the simulation did not settle")


# -- snapshots: is a machine exactly as it was? ---------------------------------------
def _summary(value: Any, path: tuple[int, ...]) -> Any:
    """A comparable summary of ``value``: plain data as is, numpy arrays and OpenFHE
    ciphertexts by a hash of their bytes, other opaque objects by identity."""
    if value is None or isinstance(value, bool | int | float | str | bytes | enum.Enum):
        return value
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape,
                hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest())
    if isinstance(value, np.generic):
        return value.item()
    if id(value) in path:
        return ("cycle", type(value).__name__)
    inner = (*path, id(value))
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return ("dict", tuple((repr(k), _summary(v, inner)) for k, v in items))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_summary(v, inner) for v in value))
    if isinstance(value, set | frozenset):
        return ("set", tuple(sorted(repr(_summary(v, inner)) for v in value)))
    kind = type(value)
    if kind.__module__.startswith("openfhe") and kind.__name__ == "Ciphertext":
        # Sums are updated in place (EvalAddInPlace): identity would not show it.
        data = bytes(openfhe.Serialize(value, openfhe.BINARY))
        return ("Ciphertext", hashlib.sha256(data).hexdigest())
    if kind.__name__ == "CkksContext" or not kind.__module__.startswith(
        ("protocols", "threshold_fl")
    ):
        return ("opaque", kind.__name__, id(value))
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return (kind.__name__, _summary(fields, inner))
    if hasattr(value, "__dict__"):
        return (kind.__name__, _summary(vars(value), inner))
    return ("opaque", kind.__name__, id(value))


#: Attributes that are not protocol state: a lazily built CKKS context (a cache that a
#: rejected message may legitimately fill).
_NOT_STATE = frozenset({"_context_cache"})


def snapshot(machine: Any) -> dict[str, Any]:
    """The machine's state and a summary of every attribute, for before/after checks."""
    out = {"state": machine.state}
    for name, value in vars(machine).items():
        if name not in _NOT_STATE:
            out[name] = _summary(value, ())
    return out
