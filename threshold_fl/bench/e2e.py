"""``threshold-fl bench e2e``: the multi-process MQTT demo, once per mode.

Runs :func:`threshold_fl.app.demo.run_demo` (a private mosquitto, the aggregator and N
clients as separate OS processes, single-key mode's key authority too) for each of
threshold, single-key and plaintext FedAvg with the same seed, clients, rounds and
model; each run with the demo's baseline off, so plaintext runs once, as its own mode.
Defaults are the demo's (the paper's CNN, 3 clients, 3 rounds, 10 % selective
encryption plus the first and last layers, 2 local epochs), so the figures are those
of the README's demo.

Per mode and round, from the demo's federation rows (:func:`threshold_fl.app.rounds.combine_rows`):

- **round s**: wall-clock between consecutive round rows of the party that saw the
  shortest; round 1 starts when the last party is ready, so it includes key and mask
  agreement but not the processes' start-up;
- **stage s** (train, encrypt, aggregate, decrypt): the slowest party's seconds of
  that stage in the round, measured inside the parties (train: local training;
  encrypt: a client encoding its update; aggregate: the aggregator handling uploads;
  decrypt: a client handling what it receives; in threshold mode, its masked decryption
  share when it is in the round's decryption set, then removing the pad from the fused
  aggregate and decoding it);
  round 1's also hold set-up work;
- **MB sent / received**: payload bytes of protocol messages as the parties' MQTT
  transports count them (``MqttStats.bytes_sent`` / ``bytes_received``), once per
  recipient, summed over the aggregator and the clients; not counted: chunk and frame
  headers, transport signatures, acks, retransmissions, MQTT packet headers.  The key
  authority writes no report: in single-key mode what it sends (the keys) shows only
  in *received* bytes.  Each party closes a round at its own moment, so
  traffic near a round's end may be counted in the neighbouring round; totals are exact;
- **accuracy**: the decrypted global model's test accuracy.

Per mode: the totals and the ratios of threshold and single-key to plaintext.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from threshold_fl._checks import add_model_option, bounded
from threshold_fl.app.demo import DemoConfig, run_demo
from threshold_fl.app.rounds import RoundRow, RunReport
from threshold_fl.bench.output import (
    BENCH_FRACTION,
    markdown_table,
    print_line,
    suite_error,
    write_suite,
)
from threshold_fl.errors import ThresholdFLError

__all__ = ["MODES", "ModeTotals", "RoundFigures", "main", "run_mode", "totals_of"]

#: Every mode, in the order they run (plaintext last: the others are compared with it).
MODES = ("threshold", "single-key", "plaintext")
BASELINE = "plaintext"

BYTES_COUNTED = (
    "payload bytes of protocol messages as the parties' MQTT transports count them "
    "(MqttStats.bytes_sent / bytes_received), once per recipient, summed over the "
    "aggregator and the clients; chunk and frame headers, transport signatures, acks, "
    "retransmissions and MQTT packet headers are not counted. The key authority writes no "
    "report: in single-key mode what it sends (the keys) shows only in received bytes. "
    "Each party closes a round at its own moment (a client after decrypting, the "
    "aggregator when the round completes), so with fast local training the next round's "
    "uploads can land in the aggregator's previous round: per-round figures may shift "
    "between neighbouring rounds, totals are exact.")

COLUMN_NOTES = (
    "Each mode is a separate run of the demo (threshold-fl demo, baseline off): a private "
    "mosquitto, the aggregator and the clients (and single-key's key authority) as OS "
    "processes, same seed, model and data.\n\n"
    "- round s: wall-clock between consecutive round rows of the party that saw the "
    "shortest; round 1 starts when the last party is ready (key and mask agreement "
    "included, process start-up not).\n"
    "- train/encrypt/aggregate/decrypt s: the slowest party's seconds of the stage, "
    "measured inside the parties (encrypt: a client encoding its update; aggregate: the "
    "aggregator handling uploads; decrypt: a client handling what it receives: in "
    "threshold mode its masked decryption share when it is in the decryption set, then "
    "removing the pad from the fused aggregate and decoding it); round 1's include "
    "set-up work.\n"
    "- accuracy: the global model's test accuracy after the round.")


@dataclass(frozen=True)
class RoundFigures:
    """One mode's round, for the whole federation."""

    mode: str
    round: int
    seconds: float
    train_s: float | None
    encrypt_s: float | None
    aggregate_s: float | None
    decrypt_s: float | None
    bytes_sent: int
    bytes_received: int
    accuracy: float | None
    encrypted_fraction: float | None
    contributors: int | None

    @classmethod
    def of(cls, mode: str, row: RoundRow) -> RoundFigures:
        stage = row.stage_s.get
        return cls(mode, row.round, row.seconds, stage("train"), stage("encrypt"),
                   stage("aggregate"), stage("decrypt"), row.bytes_sent, row.bytes_received,
                   row.accuracy, row.encrypted_fraction, row.contributors)

    def cells(self) -> list[object]:
        return [self.mode, self.round, f"{self.seconds:.1f}",
                *(_optional(s, ".2f") for s in (self.train_s, self.encrypt_s,
                                                 self.aggregate_s, self.decrypt_s)),
                f"{self.bytes_sent / 1e6:.2f}", f"{self.bytes_received / 1e6:.2f}",
                _optional(self.accuracy, ".2%"), _optional(self.encrypted_fraction, ".2%")]


ROUND_COLUMNS = ("mode", "round", "round s", "train s", "encrypt s", "aggregate s",
                 "decrypt s", "MB sent", "MB received", "accuracy", "encrypted")


@dataclass(frozen=True)
class ModeTotals:
    """One mode's whole run; the ratios are to plaintext (None without a plaintext run)."""

    mode: str
    parameters: int
    wall_clock_s: float  # from starting the processes to the last exit
    protocol_s: float  # the rounds' seconds added up (no process start-up)
    bytes_sent: int
    bytes_received: int
    final_accuracy: float
    protocol_s_ratio: float | None = None
    wall_clock_ratio: float | None = None
    bytes_sent_ratio: float | None = None
    bytes_received_ratio: float | None = None

    def cells(self) -> list[object]:
        return [self.mode, f"{self.parameters:,}", f"{self.wall_clock_s:.1f}",
                f"{self.protocol_s:.1f}", f"{self.bytes_sent / 1e6:.2f}",
                f"{self.bytes_received / 1e6:.2f}", f"{self.final_accuracy:.2%}",
                *(_optional(ratio, ".2f", "x") for ratio in (
                    self.protocol_s_ratio, self.wall_clock_ratio, self.bytes_sent_ratio,
                    self.bytes_received_ratio))]


TOTAL_COLUMNS = ("mode", "parameters", "wall-clock s", "protocol s", "MB sent",
                 "MB received", "final accuracy", "protocol s vs plaintext",
                 "wall-clock vs plaintext", "sent vs plaintext", "received vs plaintext")


def _optional(value: float | None, spec: str, prefix: str = "") -> str:
    return "-" if value is None else f"{prefix}{value:{spec}}"


def run_mode(template: DemoConfig, mode: str) -> RunReport:
    """The demo's federation in *mode*, its baseline off; its folder is
    ``template.out / mode`` (manifest, the parties' JSON-lines reports, logs)."""
    (result,) = asyncio.run(run_demo(replace(template, mode=mode, baseline=False)))
    return result


def totals_of(results: Sequence[RunReport]) -> list[ModeTotals]:
    """Each run's totals, with the ratios to the plaintext run when there is one."""
    totals = [ModeTotals(result.mode, result.parameters, result.seconds,
                         result.protocol_seconds, result.bytes_sent,
                         sum(row.bytes_received for row in result.rounds),
                         result.final_accuracy) for result in results]
    baseline = next((total for total in totals if total.mode == BASELINE), None)
    if baseline is None:
        return totals
    return [total if total is baseline else replace(
        total, protocol_s_ratio=total.protocol_s / baseline.protocol_s,
        wall_clock_ratio=total.wall_clock_s / baseline.wall_clock_s,
        bytes_sent_ratio=total.bytes_sent / max(baseline.bytes_sent, 1),
        bytes_received_ratio=total.bytes_received / max(baseline.bytes_received, 1))
        for total in totals]


def _plot(rows: Sequence[RoundFigures], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    modes = list(dict.fromkeys(row.mode for row in rows))
    figure, (seconds, traffic) = pyplot.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(modes)
    for index, mode in enumerate(modes):
        mine = [row for row in rows if row.mode == mode]
        positions = [row.round + (index - (len(modes) - 1) / 2) * width for row in mine]
        seconds.bar(positions, [row.seconds for row in mine], width, label=mode)
        traffic.bar(positions, [row.bytes_sent / 1e6 for row in mine], width, label=mode)
    for axes, title in ((seconds, "seconds per round"),
                        (traffic, "MB sent per round, all parties (log)")):
        axes.set_title(title)
        axes.set_xlabel("round (1 includes key and mask agreement)")
        axes.set_xticks(sorted({row.round for row in rows}))
        axes.legend()
        axes.grid(alpha=0.3, axis="y")
    traffic.set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _headline(totals: Sequence[ModeTotals]) -> str:
    parts = [f"{total.mode}: x{total.protocol_s_ratio:.2f} protocol time, "
             f"x{total.bytes_sent_ratio:.2f} bytes sent, x{total.bytes_received_ratio:.2f} "
             f"bytes received" for total in totals
             if total.protocol_s_ratio is not None and total.bytes_sent_ratio is not None
             and total.bytes_received_ratio is not None]
    if not parts:
        return "No plaintext run, so no overhead ratios."
    return "Against plaintext FedAvg, same seed: " + "; ".join(parts) + "."


def _write(out: Path, template: DemoConfig, results: Sequence[RunReport],
           rows: Sequence[RoundFigures], totals: Sequence[ModeTotals]) -> list[Path]:
    settings = {"clients": template.clients, "rounds": template.rounds,
                "model": template.model, "fraction": template.fraction,
                "first_and_last": template.first_and_last, "epochs": template.epochs,
                "seed": template.seed, "modes": [result.mode for result in results]}
    headline = _headline(totals)
    tables = (markdown_table(ROUND_COLUMNS, [row.cells() for row in rows])
              + "\n\nTotals per mode (wall-clock includes the processes' start-up; protocol "
              "s adds up the rounds):\n\n"
              + markdown_table(TOTAL_COLUMNS, [total.cells() for total in totals]))
    notes = f"{headline}\n\n{COLUMN_NOTES}\n- MB sent / received: {BYTES_COUNTED}"
    parties = {result.mode: {party: [asdict(row) for row in party_rows]
                             for party, party_rows in result.parties.items()}
               for result in results}
    data: dict[str, Any] = {"settings": settings, "bytes_counted": BYTES_COUNTED,
                            "rows": [asdict(row) for row in rows],
                            "totals": [asdict(total) for total in totals],
                            "headline": headline, "parties": parties}
    title = (f"The MQTT demo per mode: {template.model}, {template.clients} clients, "
             f"{template.rounds} rounds")
    markdown, json_path = write_suite(out, "e2e", title, tables, data, notes=notes)
    _plot(rows, out / "e2e.png")
    return [markdown, json_path, out / "e2e.png"]




def _parser() -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="threshold-fl bench e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=bounded(int, 2, 20), default=defaults.clients)
    parser.add_argument("--rounds", type=bounded(int, 1, 100), default=defaults.rounds)
    add_model_option(parser, default=defaults.model)
    parser.add_argument("--fraction", type=bounded(float, 0.0, 1.0),
                        default=BENCH_FRACTION,
                        help="share of coordinates encrypted, plus the first and last layers")
    parser.add_argument("--seed", type=bounded(int, 0), default=defaults.seed)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="modes to run (default: all; ratios need plaintext)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="folder for e2e.md/.json/.png; the runs go under e2e-runs/")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    modes = [mode for mode in MODES if mode in args.modes]  # plaintext last, no repeats
    out: Path = args.out
    results: list[RunReport] = []
    rows: list[RoundFigures] = []
    try:
        template = DemoConfig(clients=int(args.clients), rounds=int(args.rounds),
                              model=args.model, fraction=float(args.fraction),
                              seed=int(args.seed), out=out / "e2e-runs")
        for mode in modes:
            print(f"e2e: {mode}: starting ({template.model}, {template.clients} clients, "
                  f"{template.rounds} rounds; party logs under {template.out / mode}/logs)",
                  flush=True)
            result = run_mode(template, mode)
            results.append(result)
            mine = [RoundFigures.of(mode, row) for row in result.rounds]
            print_line(ROUND_COLUMNS)
            for row in mine:
                print_line(row.cells())
            rows.extend(mine)
        totals = totals_of(results)
        paths = _write(out, template, results, rows, totals)
    except (ThresholdFLError, OSError) as error:
        return suite_error("e2e", error)
    except KeyboardInterrupt:
        print("threshold-fl bench e2e: interrupted", file=sys.stderr)
        return 130
    print("\n" + " | ".join(TOTAL_COLUMNS))
    for total in totals:
        print_line(total.cells())
    print(f"\n{_headline(totals)}\nwrote {', '.join(str(path) for path in paths)}", flush=True)
    return 0
