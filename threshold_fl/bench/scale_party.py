"""The party processes of ``threshold-fl bench scale`` (:mod:`threshold_fl.bench.scale`).

    python -m threshold_fl.bench.scale_party aggregator RUN_DIR
    python -m threshold_fl.bench.scale_party clients RUN_DIR NAME [NAME ...]

The aggregator runs alone in its process; a *pack* of clients shares one process, each
client with its own MQTT connection, identity and state machine (asyncio tasks in one
loop; the CKKS context is built once per process).  RUN_DIR holds ``run.json`` (the
broker's URL, each scripted drop), ``manifest.json`` and ``parties/<name>/``.  What a
process measured goes to ``figures/<who>.json``: its CPU seconds and peak memory, the
aggregator's stage times (wall clock, comparable across processes), and per client its
report rows (``reports/``), trained models and decrypted global models (``models/``).
A scripted drop shuts only that client's connection (:meth:`MqttTransport.sever`), so
the broker publishes its Last Will while the rest of the pack goes on.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocols import Manifest
from protocols.events import Event, KeyAgreed, MaskAgreed, Outgoing, RoundCompleted
from threshold_fl.app.client_plan import DROP_STAGES, ClientPlan
from threshold_fl.app.party import run_aggregator, run_client
from threshold_fl.bench.output import peak_mib
from threshold_fl.errors import ParameterError, ThresholdFLError
from threshold_fl.identity import Identity
from transports.broker import BrokerConfig
from transports.mqtt import MqttOptions

__all__ = ["RunSpec", "main"]

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunSpec:
    """What every party process of one run reads: the broker, the scripted drops
    (client -> stage, in round *drop_round*), local epochs and the transport's tuning."""

    broker: str
    drops: dict[str, str] = field(default_factory=dict)
    drop_round: int = 1
    epochs: int = 1
    inbox_limit: int = MqttOptions().inbox_limit
    aggregator_inbox_limit: int = MqttOptions().inbox_limit
    frame_queue_limit: int = MqttOptions().frame_queue_limit

    def __post_init__(self) -> None:
        bad = {client: stage for client, stage in self.drops.items()
               if stage not in DROP_STAGES}
        if bad:
            raise ParameterError(f"{RUN_FILE}: unknown drop stages {bad}; stages are "
                                 f"{DROP_STAGES}")

    def options(self, *, aggregator: bool = False) -> MqttOptions:
        return MqttOptions(
            inbox_limit=self.aggregator_inbox_limit if aggregator else self.inbox_limit,
            frame_queue_limit=self.frame_queue_limit)

    def save(self, folder: Path) -> None:
        (folder / RUN_FILE).write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> RunSpec:
        try:
            data = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError) as error:
            raise ParameterError(f"{folder / RUN_FILE}: {error}; the bench writes it, "
                                 "start the run with 'threshold-fl bench scale'") from None


def _usage() -> dict[str, float]:
    """This process's CPU seconds (user + system, all threads) and peak memory."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": peak_mib()}


def _write(folder: Path, who: str, figures: dict[str, Any]) -> None:
    (folder / "figures").mkdir(exist_ok=True)
    (folder / "figures" / f"{who}.json").write_text(json.dumps(figures), encoding="utf-8")


class _StageClock:
    """The aggregator's stage marks, wall-clock seconds: each key agreement's start (its
    first KeygenStart), KeyAgreed, MaskAgreed and each round's completion."""

    def __init__(self) -> None:
        self.marks: dict[str, list[float]] = {"keygen": [], "keys": [], "mask": []}
        self.contributors: dict[int, list[str]] = {}
        self._last_kind = ""

    def observe(self, item: Event | Outgoing) -> None:
        now = time.time()
        if isinstance(item, Outgoing):
            if item.kind == "KeygenStart" and self._last_kind != "KeygenStart":
                self.marks["keygen"].append(now)  # one step sends it to every holder
            self._last_kind = item.kind
        elif isinstance(item, KeyAgreed):
            self.marks["keys"].append(now)
        elif isinstance(item, MaskAgreed):
            self.marks["mask"].append(now)
        elif isinstance(item, RoundCompleted):
            self.marks.setdefault("rounds", []).append(now)
            self.contributors[item.round] = list(item.contributors)


async def _aggregator(folder: Path) -> int:
    spec = RunSpec.load(folder)
    manifest = Manifest.load(folder / "manifest.json")
    identity = Identity.load(folder / "parties" / str(manifest.aggregator.party_id))
    clock = _StageClock()
    result = await run_aggregator(
        manifest, identity, BrokerConfig.from_url(spec.broker),
        options=spec.options(aggregator=True), report=folder / "reports" / "server.jsonl",
        observe=clock.observe, say=lambda line: print(line, flush=True))
    _write(folder, "server", {**result, "marks": clock.marks,
                              "contributors": clock.contributors, **_usage()})
    return 0


async def _client(folder: Path, manifest: Manifest, spec: RunSpec, name: str) -> int:
    """One client of the pack; the number of rounds it completed."""
    models = folder / "models" / name
    models.mkdir(parents=True, exist_ok=True)
    plan = ClientPlan(epochs=spec.epochs, drop_at=spec.drops.get(name),
                      drop_round=spec.drop_round, vanish="connection")

    def trained(round_: int, model: Any) -> None:
        import numpy as np

        np.save(models / f"trained-round-{round_}.npy", np.asarray(model, dtype=np.float64))

    rows = await run_client(manifest, Identity.load(folder / "parties" / name),
                            BrokerConfig.from_url(spec.broker), plan, options=spec.options(),
                            report=folder / "reports" / f"{name}.jsonl", save_models=models,
                            on_trained=trained, say=lambda line: print(line, flush=True))
    return len(rows)


async def _pack(folder: Path, names: Sequence[str]) -> int:
    spec = RunSpec.load(folder)
    manifest = Manifest.load(folder / "manifest.json")
    outcomes = await asyncio.gather(*(_client(folder, manifest, spec, name) for name in names),
                                    return_exceptions=True)
    failed = {name: f"{type(outcome).__name__}: {outcome}"
              for name, outcome in zip(names, outcomes, strict=True)
              if isinstance(outcome, BaseException)}
    for name, error in failed.items():
        print(f"{name}: failed: {error}", file=sys.stderr, flush=True)
    _write(folder, f"pack-{names[0]}", {"clients": list(names), "failed": failed,
                                        **_usage()})
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] not in ("aggregator", "clients") or (
            args[0] == "clients" and len(args) < 3):
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(args[1])
    try:
        if args[0] == "aggregator":
            return asyncio.run(_aggregator(folder))
        return asyncio.run(_pack(folder, args[2:]))
    except ThresholdFLError as error:
        print(f"bench scale {args[0]}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
