"""The demo's results: per-round rows gathered from the parties' reports, the summary
against the plaintext baseline, ``report.json`` and ``report.png``."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocols import Manifest, Mode
from threshold_fl.app.rounds import RunReport, combine_rows, read_rows
from threshold_fl.errors import ThresholdFLError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from threshold_fl.app.demo import DemoConfig

__all__ = ["collect_run", "fraction_note", "print_summary", "report_figure",
           "summary_lines", "write_report"]


def collect_run(directory: Path, parties: Sequence[str], seconds: float) -> RunReport:
    """Read the parties' JSON-lines reports in *directory* into a :class:`RunReport`."""
    manifest = Manifest.load(directory / "manifest.json")
    mode = manifest.mode.value
    rows = {party: tuple(read_rows(directory / f"{party}.jsonl")) for party in parties}
    rounds = sorted({row.round for row in rows.get("server", ())})
    if len(rounds) != manifest.rounds:
        raise ThresholdFLError(f"{mode}: the aggregator reported rounds {rounds}, expected "
                               f"{manifest.rounds}; see the logs in {directory / 'logs'}")
    combined = tuple(
        combine_rows("federation", [row for party_rows in rows.values()
                                    for row in party_rows if row.round == round_])
        for round_ in rounds)
    return RunReport.of(manifest, seconds, combined,
                        parties={party: party_rows for party, party_rows in rows.items()
                                 if party_rows})


def _machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "system": platform.platform()}


def _summary(results: Sequence[RunReport]) -> dict[str, Any]:
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
            steady_time_overhead=_steady_ratio(main, baseline),
            wall_clock_overhead=main.seconds / baseline.seconds,
            bytes_overhead=main.bytes_sent / max(baseline.bytes_sent, 1))
    return summary


def write_report(config: DemoConfig, results: Sequence[RunReport]) -> tuple[Path, Path]:
    """``report.json`` and ``report.png`` in ``config.out``; returns their paths."""
    config.out.mkdir(parents=True, exist_ok=True)
    settings = {key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(config).items()}
    document = {"config": settings, "machine": _machine(), "summary": _summary(results),
                "runs": [result.to_dict() for result in results]}
    json_path, png_path = config.out / "report.json", config.out / "report.png"
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    _plot(results, png_path)
    return json_path, png_path


def report_figure(results: Sequence[RunReport]) -> Figure:
    """Accuracy, MB sent and seconds per round, one series per run; the rounds are the
    integer x ticks, each mode's bars side by side around their round's tick."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 3.8))
    accuracy, traffic, seconds = figure.subplots(1, 3)
    width = 0.8 / len(results)
    for index, result in enumerate(results):
        rounds = [row.round for row in result.rounds]
        accuracy.plot(rounds, [100 * (row.accuracy or 0.0) for row in result.rounds],
                      marker="o", label=result.mode)
        traffic.bar([r + (index - (len(results) - 1) / 2) * width for r in rounds],
                    [row.bytes_sent / 1e6 for row in result.rounds], width, label=result.mode)
        seconds.plot(rounds, [row.seconds for row in result.rounds], marker="o",
                     label=result.mode)
    ticks = sorted({row.round for result in results for row in result.rounds})
    for axes, title in ((accuracy, "test accuracy (%)"), (traffic, "MB sent by all parties"),
                        (seconds, "seconds per round")):
        axes.set_title(title)
        axes.set_xlabel(f"round (1 includes {results[0].setup})" if results else "round")
        axes.set_xticks(ticks)  # whole rounds only; matplotlib would add 1.5, 2.5, ...
        axes.set_xlim(min(ticks, default=1) - 0.5, max(ticks, default=1) + 0.5)
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _plot(results: Sequence[RunReport], path: Path) -> None:
    # A bare Figure, not pyplot: no global state, no GUI backend to choose.
    report_figure(results).savefig(path, dpi=110)


def _steady_ratio(main: RunReport, baseline: RunReport) -> float | None:
    """Time of the rounds after the first, encrypted over plaintext."""
    mine, theirs = main.steady_seconds, baseline.steady_seconds
    return None if mine is None or not theirs else mine / theirs


def _percent(fraction: float) -> str:
    """10% / 0.5% / 12.25%: at most two decimals, no trailing zeros."""
    return f"{fraction * 100:.2f}".rstrip("0").rstrip(".") + "%"


def fraction_note(result: RunReport, model: str) -> str:
    """Why the encrypted share differs from the requested one ('' when it does not, as
    printed): the first and last layers come on top, or the count rounds up."""
    fraction, requested = result.encrypted_fraction, result.requested_fraction
    if fraction is None or requested is None or f"{fraction:.2%}" == f"{requested:.2%}":
        return ""
    if result.mode == Mode.PLAINTEXT.value:
        reason = "plaintext FedAvg encrypts nothing"
    elif result.always_encrypted and fraction > requested:
        share = ("all" if result.always_encrypted >= result.parameters
                 else _percent(result.always_encrypted / result.parameters))
        reason = ("the first and last layers are always encrypted as well (--no-first-last "
                  f"to turn off) and they hold {share} of {model}'s parameters")
    else:
        reason = "the top fraction is rounded up to whole coordinates"
    return f" (requested {_percent(requested)}; {reason})"


def _overhead_lines(main: RunReport, baseline: RunReport) -> list[str]:
    lines = [f"  HE overhead: x{main.protocol_seconds / baseline.protocol_seconds:.2f} time, "
             f"whole run ({main.protocol_seconds:.1f} s vs {baseline.protocol_seconds:.1f} s "
             f"from the last party ready to the end; wall-clock with start-up "
             f"{main.seconds:.1f} s vs {baseline.seconds:.1f} s)"]
    mine, theirs = main.steady_seconds, baseline.steady_seconds
    if mine is not None and theirs:
        last = main.rounds[-1].round
        span = "round 2" if last == 2 else f"rounds 2-{last}"
        lines.append(f"               x{mine / theirs:.2f} time, {span} only, without round "
                     f"1's {main.setup} ({mine:.1f} s vs {theirs:.1f} s)")
    lines.append(f"               x{main.bytes_sent / max(baseline.bytes_sent, 1):.2f} bytes "
                 f"({main.bytes_sent / 1e6:.1f} MB vs {baseline.bytes_sent / 1e6:.1f} MB sent)")
    return lines


def summary_lines(config: DemoConfig, results: Sequence[RunReport],
                  paths: tuple[Path, Path]) -> list[str]:
    """The summary printed after the runs: accuracy, the gap to the baseline, overheads."""
    main = results[0]
    fraction = main.encrypted_fraction
    encrypted = ("" if fraction is None else f", {fraction:.2%} of the parameters encrypted"
                 + fraction_note(main, config.model))
    dropped = ("" if config.drop_client is None else
               f"; client {config.drop_client} vanished at {config.drop_at} "
               f"(round {config.drop_round})")
    lines = [f"summary: {config.model} ({main.parameters:,} parameters), {config.clients} "
             f"clients as separate processes, {config.rounds} rounds, {main.mode}"
             f"{encrypted}{dropped}",
             f"  final accuracy ({main.mode}): {main.final_accuracy:.2%}"]
    if len(results) > 1:
        baseline = results[1]
        gap = (main.final_accuracy - baseline.final_accuracy) * 100
        lines.append(f"  plaintext FedAvg, same seed: {baseline.final_accuracy:.2%} "
                     f"(gap {gap:+.2f} points)")
        lines += _overhead_lines(main, baseline)
    else:
        lines.append(f"  {main.protocol_seconds:.1f} s from the last party ready to the end "
                     f"({main.seconds:.1f} s with start-up), {main.bytes_sent / 1e6:.1f} MB sent")
    lines.append(f"  report: {paths[0]} and {paths[1]}; party logs under "
                 f"{config.out}/<mode>/logs")
    return lines


def print_summary(config: DemoConfig, results: Sequence[RunReport],
                  paths: tuple[Path, Path]) -> None:
    print("\n".join(summary_lines(config, results, paths)))
