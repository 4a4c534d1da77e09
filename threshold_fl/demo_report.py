"""The demo's results: per-round rows gathered from the parties' reports, the summary
against the plaintext baseline, ``report.json`` and ``report.png``."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocols import Manifest
from threshold_fl.errors import ThresholdFLError
from threshold_fl.rounds import RoundRow, combine_rows, read_rows

if TYPE_CHECKING:
    from threshold_fl.demo import DemoConfig

__all__ = ["RunResult", "collect_run", "print_summary", "write_report"]


@dataclass(frozen=True)
class RunResult:
    """One federation run: a row per round for the whole federation (bytes summed over
    the parties, each stage's slowest party) and each party's own rows."""

    mode: str
    parameters: int
    seconds: float  # wall-clock, from starting the processes to the last exit
    rounds: tuple[RoundRow, ...]
    parties: dict[str, tuple[RoundRow, ...]]

    @property
    def protocol_seconds(self) -> float:
        """The rounds' seconds added up: the session without the processes' start-up."""
        return sum(row.seconds for row in self.rounds)

    @property
    def bytes_sent(self) -> int:
        """Bytes the parties published in their rounds (round 1 includes set-up)."""
        return sum(row.bytes_sent for row in self.rounds)

    @property
    def final_accuracy(self) -> float:
        accuracy = self.rounds[-1].accuracy if self.rounds else None
        return float("nan") if accuracy is None else accuracy


def collect_run(mode: str, directory: Path, parties: Sequence[str], seconds: float
                ) -> RunResult:
    """Read the parties' JSON-lines reports in *directory* into a :class:`RunResult`."""
    manifest = Manifest.load(directory / "manifest.json")
    rows = {party: tuple(read_rows(directory / f"{party}.jsonl")) for party in parties}
    rounds = sorted({row.round for row in rows.get("server", ())})
    if len(rounds) != manifest.rounds:
        raise ThresholdFLError(f"{mode}: the aggregator reported rounds {rounds}, expected "
                               f"{manifest.rounds}; see the logs in {directory / 'logs'}")
    combined = tuple(
        combine_rows("federation", [row for party_rows in rows.values()
                                    for row in party_rows if row.round == round_])
        for round_ in rounds)
    return RunResult(mode, manifest.model_length, seconds, combined,
                     {party: party_rows for party, party_rows in rows.items() if party_rows})


def _machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "system": platform.platform()}


def _summary(results: Sequence[RunResult]) -> dict[str, Any]:
    main = results[0]
    summary: dict[str, Any] = {"mode": main.mode, "final_accuracy": main.final_accuracy,
                               "seconds": main.seconds, "protocol_seconds": main.protocol_seconds,
                               "bytes_sent": main.bytes_sent}
    if len(results) > 1:
        baseline = results[1]
        summary.update(
            baseline_accuracy=baseline.final_accuracy,
            accuracy_gap_points=(main.final_accuracy - baseline.final_accuracy) * 100,
            time_overhead=main.protocol_seconds / baseline.protocol_seconds,
            wall_clock_overhead=main.seconds / baseline.seconds,
            bytes_overhead=main.bytes_sent / max(baseline.bytes_sent, 1))
    return summary


def _run_json(result: RunResult) -> dict[str, Any]:
    def rows(items: Sequence[RoundRow]) -> list[dict[str, Any]]:
        return [json.loads(row.as_json()) for row in items]

    return {"mode": result.mode, "parameters": result.parameters, "seconds": result.seconds,
            "protocol_seconds": result.protocol_seconds,
            "bytes_sent": result.bytes_sent, "final_accuracy": result.final_accuracy,
            "rounds": rows(result.rounds),
            "parties": {party: rows(items) for party, items in result.parties.items()}}


def write_report(config: DemoConfig, results: Sequence[RunResult]) -> tuple[Path, Path]:
    """``report.json`` and ``report.png`` in ``config.out``; returns their paths."""
    config.out.mkdir(parents=True, exist_ok=True)
    settings = {key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(config).items()}
    document = {"config": settings, "machine": _machine(), "summary": _summary(results),
                "runs": [_run_json(result) for result in results]}
    json_path, png_path = config.out / "report.json", config.out / "report.png"
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    _plot(results, png_path)
    return json_path, png_path


def _plot(results: Sequence[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (accuracy, traffic, seconds) = pyplot.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / len(results)
    for index, result in enumerate(results):
        rounds = [row.round for row in result.rounds]
        accuracy.plot(rounds, [100 * (row.accuracy or 0.0) for row in result.rounds],
                      marker="o", label=result.mode)
        traffic.bar([r + (index - (len(results) - 1) / 2) * width for r in rounds],
                    [row.bytes_sent / 1e6 for row in result.rounds], width, label=result.mode)
        seconds.plot(rounds, [row.seconds for row in result.rounds], marker="o",
                     label=result.mode)
    for axes, title in ((accuracy, "test accuracy (%)"), (traffic, "MB sent by all parties"),
                        (seconds, "seconds per round")):
        axes.set_title(title)
        axes.set_xlabel("round (1 includes key and mask agreement)")
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def print_summary(config: DemoConfig, results: Sequence[RunResult],
                  paths: tuple[Path, Path]) -> None:
    main = results[0]
    fraction = main.rounds[-1].encrypted_fraction if main.rounds else None
    encrypted = "" if fraction is None else f", {fraction:.2%} of the parameters encrypted"
    dropped = ("" if config.drop_client is None else
               f"; client {config.drop_client} vanished at {config.drop_at} "
               f"(round {config.drop_round})")
    print(f"summary: {config.model} ({main.parameters:,} parameters), {config.clients} "
          f"clients as separate processes, {config.rounds} rounds, {main.mode}"
          f"{encrypted}{dropped}")
    print(f"  final accuracy ({main.mode}): {main.final_accuracy:.2%}")
    if len(results) > 1:
        baseline = results[1]
        gap = (main.final_accuracy - baseline.final_accuracy) * 100
        print(f"  plaintext FedAvg, same seed: {baseline.final_accuracy:.2%} "
              f"(gap {gap:+.2f} points)")
        print(f"  HE overhead: x{main.protocol_seconds / baseline.protocol_seconds:.2f} time "
              f"({main.protocol_seconds:.1f} s vs {baseline.protocol_seconds:.1f} s from the "
              f"last party ready to the end; wall-clock with start-up {main.seconds:.1f} s vs "
              f"{baseline.seconds:.1f} s)")
        print(f"               x{main.bytes_sent / max(baseline.bytes_sent, 1):.2f} bytes "
              f"({main.bytes_sent / 1e6:.1f} MB vs {baseline.bytes_sent / 1e6:.1f} MB sent)")
    else:
        print(f"  {main.protocol_seconds:.1f} s from the last party ready to the end "
              f"({main.seconds:.1f} s with start-up), {main.bytes_sent / 1e6:.1f} MB sent")
    print(f"  report: {paths[0]} and {paths[1]}; party logs under {config.out}/<mode>/logs")
