"""Federated training of a real model on real data through the full protocol, in one process.

:func:`run_federation` makes identities and a manifest, splits the digits dataset across
clients, and runs the aggregator, the clients (and in single-key mode the key authority)
as asyncio tasks over the in-memory transport: key agreement, mask agreement from the
clients' sensitivity maps, then FedAvg rounds in which each client trains with torch
and the global model is decrypted jointly.  Every round's global model is evaluated on
the held-out test split.  The plaintext mode runs the same flow without encryption,
which is the baseline the encrypted modes are compared with.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocols import Manifest, MaskPolicy, Mode, ModelSpec, make_manifest
from protocols.events import Event
from threshold_fl._checks import checked_int
from threshold_fl.app.rounds import RoundRow, RunReport
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.identity import Identity
from threshold_fl.ml.data import ClientData, load_digits, split_dirichlet, split_iid
from threshold_fl.ml.learner import LocalLearner
from threshold_fl.ml.models import MODELS, build_model
from threshold_fl.ml.privacy import LaplaceNoise, privacy_budget
from threshold_fl.ml.training import LocalTraining
from threshold_fl.node import Aggregator, FederatedClient, KeyAuthority
from transports import MemoryHub, Transport

__all__ = ["FederationConfig", "client_datasets", "client_learners",
           "learner_client", "run_federation"]

SPLITS = ("iid", "dirichlet")


@dataclass(frozen=True)
class FederationConfig:
    """One federated training run.  ``fraction`` is the share of coordinates encrypted
    (top of the sensitivity map), ``first_and_last`` adds the first and last layers."""

    model: str = "cnn"
    clients: int = 3
    rounds: int = 3
    mode: str = "threshold"
    fraction: float = 1.0  # everything encrypted; below 1 is selective (docs/privacy.md)
    first_and_last: bool = True
    split: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration, for split="dirichlet"
    training: LocalTraining = field(default_factory=LocalTraining)
    sensitivity_samples: int = 32
    noise: LaplaceNoise | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ParameterError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.split not in SPLITS:
            raise ParameterError(f"unknown split {self.split!r}; choose one of {SPLITS}")
        for name, minimum in (("clients", 2), ("rounds", 1), ("seed", 0)):
            checked_int(getattr(self, name), name, minimum)
        if self.mode not in {mode.value for mode in Mode}:
            raise ParameterError(
                f"unknown mode {self.mode!r}; choose one of {[m.value for m in Mode]}")
        MaskPolicy(self.fraction, self.first_and_last)  # validates the fraction

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.seed)


def client_datasets(model: str, clients: int, split: str, alpha: float, seed: int
                    ) -> tuple[list[ClientData], ClientData]:
    """Every client's training part of the digits (sized for *model*) and the test split.

    A pure function of its arguments, so separate processes agree on the split."""
    if split not in SPLITS:
        raise ParameterError(f"unknown split {split!r}; choose one of {SPLITS}")
    if model not in MODELS:
        raise ParameterError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    dataset = load_digits(image_size=MODELS[model].image_size, seed=seed)
    labels = dataset.train.labels.numpy()
    if split == "iid":
        parts = split_iid(len(labels), clients, seed=seed)
    else:
        parts = split_dirichlet(labels, clients, alpha=alpha, seed=seed)
    return [dataset.train.subset(part) for part in parts], dataset.test


def client_learners(
    model: ModelSpec, clients: int, positions: Sequence[int], training: LocalTraining, *,
    split: str = "iid", alpha: float = 0.5, noise: LaplaceNoise | None = None,
    sensitivity_samples: int = 32,
) -> tuple[list[LocalLearner], ClientData]:
    """The learners of the clients at *positions* (in the manifest's order) and the test
    split.  A pure function of its arguments, so separate processes start from the same
    model (seeded by ``model.data_seed``) and take disjoint parts of the same split."""
    parts, test = client_datasets(model.name, clients, split, alpha, model.data_seed)
    learners = [
        LocalLearner(build_model(model.name, seed=model.data_seed), parts[position], training,
                     seed=model.data_seed * 100 + position, noise=noise,
                     sensitivity_samples=sensitivity_samples)
        for position in positions
    ]
    return learners, test


def _manifest(config: FederationConfig, identities: dict[str, Identity], names: list[str]
              ) -> Manifest:
    return make_manifest(
        session=f"federation-{secrets.token_hex(8)}",  # fresh per run: no cross-run replay
        aggregator=identities["server"].public,
        clients=[identities[name].public for name in names],
        key_authority=identities["authority"].public if config.mode == "single-key" else None,
        model=config.model_spec,
        mode=config.mode,
        rounds=config.rounds,
        mask=MaskPolicy(config.fraction, config.first_and_last),
    )


async def run_federation(
    config: FederationConfig, *, on_round: Callable[[RoundRow], None] | None = None,
) -> RunReport:
    """Run *config* to the end and report each round's test accuracy, time and bytes."""
    names = [f"client-{index + 1}" for index in range(config.clients)]
    identities = {name: Identity.generate(name) for name in [*names, "server", "authority"]}
    manifest = _manifest(config, identities, names)
    positions = [manifest.client_ids.index(name) for name in names]
    learners, test = client_learners(
        config.model_spec, config.clients, positions, config.training, split=config.split,
        alpha=config.alpha, noise=config.noise,
        sensitivity_samples=config.sensitivity_samples)
    hub = MemoryHub()
    started = time.perf_counter()
    records: list[RoundRow] = []
    observer = _Observer(hub, started, test, learners[0], records, on_round)
    async with hub.connect("server") as server_link:
        aggregator = Aggregator(manifest, identities["server"], server_link)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(aggregator.run())]
        if config.mode == "single-key":
            authority = KeyAuthority(manifest, identities["authority"], hub.connect("authority"))
            tasks.append(asyncio.create_task(authority.run()))
        tasks += [asyncio.create_task(_client(manifest, identities[name], hub, learner,
                                              observer if index == 0 else None))
                  for index, (name, learner) in enumerate(zip(names, learners, strict=True))]
        await asyncio.gather(*tasks)
    budget = None
    if config.noise is not None and observer.mask is not None:
        budget = privacy_budget(config.noise, observer.mask, rounds=config.rounds)
    return RunReport.of(manifest, time.perf_counter() - started, records, privacy=budget)


class _Observer:
    """Evaluates each global model as the first client receives it."""

    def __init__(self, hub: MemoryHub, started: float, test: ClientData, learner: LocalLearner,
                 records: list[RoundRow], on_round: Callable[[RoundRow], None] | None
                 ) -> None:
        self.hub, self.last_time, self.test, self.learner = hub, started, test, learner
        self.records, self.on_round = records, on_round
        self.last_bytes = 0
        self.mask: Any = None

    def record(self, round_: int, model: Any, client: FederatedClient) -> None:
        self.mask = client.mask
        scores = self.learner.evaluate(model, self.test)
        now, sent = time.perf_counter(), self.hub.stats.sent_bytes
        fraction = client.encrypted_fraction
        # one hub carries every message: what the parties sent is what they received
        record = RoundRow("federation", round_, now - self.last_time, sent - self.last_bytes,
                          sent - self.last_bytes, accuracy=scores.accuracy, loss=scores.loss,
                          encrypted_fraction=fraction)
        self.last_time, self.last_bytes = now, sent
        self.records.append(record)
        if self.on_round is not None:
            self.on_round(record)


def learner_client(
    manifest: Manifest, identity: Identity, transport: Transport, learner: LocalLearner, *,
    on_event: Callable[[Event], None] | None = None,
    after_training: Callable[[int, float, FloatArray], None] | None = None,
    before_sensitivity: Callable[[], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> FederatedClient:
    """A protocol client whose work is done by *learner*: it trains each round from the
    decrypted global model (adding local-DP noise to the agreed mask's plaintext part)
    and computes the sensitivity map.  ``after_training(round, seconds, trained)`` and
    ``before_sensitivity()`` run in the worker thread, for timing and test hooks."""

    def train(round_: int, model: Any) -> Any:
        started = time.perf_counter()
        trained = learner.train(round_, model, client.mask)
        if after_training is not None:
            after_training(round_, time.perf_counter() - started, trained)
        return trained

    def sensitivity() -> Any:
        if before_sensitivity is not None:
            before_sensitivity()
        return learner.sensitivity()

    client = FederatedClient(manifest, identity, transport, samples=len(learner.data),
                             train=train, sensitivity=sensitivity, on_event=on_event,
                             progress=progress)
    return client


async def _client(manifest: Manifest, identity: Identity, hub: MemoryHub, learner: LocalLearner,
                  observer: _Observer | None) -> None:
    async with hub.connect(identity.party_id) as link:
        client = learner_client(manifest, identity, link, learner)
        async with client:
            async for result in client.rounds():
                if observer is not None:
                    observer.record(result.round, result.model, client)
