"""``threshold-fl bench network``: stage times on other networks, predicted and checked.

- ``predict --trace FILE [--scenario NAME ...] [--mbit R --rtt-ms L]``: each phase's
  predicted seconds (:mod:`threshold_fl.bench.linkmodel`) on the FedML-HE paper's
  bandwidth scenarios (InfiniBand, one region, across regions) or a link of your own,
  from the aggregator trace of a real run (``threshold-fl aggregator --trace``, or the
  ``server.trace.jsonl`` that ``check`` writes).
- ``check [--mbit R ...]`` (root): runs the demo federation (a private mosquitto, the
  aggregator and the clients as processes, traced) across two network namespaces of its
  own joined by a veth pair (:mod:`threshold_fl.bench.netns`), once unshaped (the
  profile), then with the link shaped by ``tc tbf`` at each rate (``--rtt-ms``: and a
  delaying relay in front of the broker, :mod:`threshold_fl.bench.relay`); predicts
  each shaped run from the unshaped profile just before it and prints measured against
  predicted, per phase, per round and for the session.  Writes ``network.md`` and
  ``network.json``.
- ``compare --profile TRACE --shaped TRACE --mbit R [--rtt-ms L]``: the same
  comparison from two stored traces (what ``check`` left under ``network-runs/``).
- ``federation --broker URL ...``: one traced demo federation against a broker, with
  long stage deadlines; what ``check`` runs inside the parties' namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols import Timeouts
from threshold_fl._checks import add_mask_options, add_model_option, bounded
from threshold_fl.app.demo import DemoConfig, run_demo
from threshold_fl.app.trace import read_trace
from threshold_fl.bench.linkmodel import (
    SCENARIOS,
    Link,
    Phase,
    PhasePrediction,
    phases_of,
    predict,
)
from threshold_fl.bench.netns import (
    DEFAULT_CONGESTION,
    NamespacePair,
    QdiscCounters,
    namespaces_usable,
    remove_stale,
)
from threshold_fl.bench.output import markdown_table, print_line, suite_error, write_suite
from threshold_fl.bench.processes import stop_group
from threshold_fl.errors import ParameterError, ThresholdFLError

__all__ = ["Comparison", "compare", "main", "totals"]

TRACE = "server.trace.jsonl"
#: Every stage deadline of a checked run: on shared cores and a slow link a CNN stage
#: can take minutes, and a party dropped for slowness would change what is measured.
STAGE_S = 1800.0


@dataclass(frozen=True)
class _TracedDemo(DemoConfig):
    """The demo with its aggregator traced and long deadlines."""

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(join_s=STAGE_S, keys_s=STAGE_S, upload_s=STAGE_S, decrypt_s=STAGE_S)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# -- comparing measured with predicted ------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """One phase (or a total) of a shaped run: measured against predicted."""

    label: str
    megabytes: float
    profile_s: float  # measured unshaped: the profile
    compute_s: float
    network_s: float  # predicted network time on the shaped link
    predicted_s: float
    measured_s: float

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted_s - self.measured_s) / self.measured_s

    def cells(self) -> list[object]:
        return [self.label, f"{self.megabytes:.1f}", f"{self.profile_s:.2f}",
                f"{self.compute_s:.2f}", f"{self.network_s:.2f}", f"{self.predicted_s:.2f}",
                f"{self.measured_s:.2f}", f"{self.error:+.1%}"]


COLUMNS = ("phase", "MB", "unshaped s", "compute s", "network s (model)", "predicted s",
           "measured s", "error")


def compare(profile: Sequence[Phase], shaped: Sequence[Phase], link: Link) -> list[Comparison]:
    """Each phase of the shaped run against its prediction from *profile*; the runs
    must have the same phases (same settings, nobody dropped)."""
    if [phase.label for phase in profile] != [phase.label for phase in shaped]:
        raise ParameterError(
            "the shaped run's phases differ from the profile's: "
            f"{[p.label for p in shaped]} vs {[p.label for p in profile]} (a party dropped "
            "or a key rotation happened in one run only); see the party logs")
    predictions = predict(profile, link)
    return [Comparison(mine.phase.label, mine.phase.bytes / 1e6, mine.phase.measured_s,
                       mine.compute_s, mine.network_s, mine.seconds, measured.measured_s)
            for mine, measured in zip(predictions, shaped, strict=True)]


def totals(rows: Sequence[Comparison]) -> list[Comparison]:
    """Set-up (keys, and mask agreement below mask fraction 1), each round, and the
    session."""
    groups: dict[str, list[Comparison]] = {}
    masked = any(row.label.startswith("mask ") for row in rows)
    for row in rows:
        key = f"set-up (keys{', mask' if masked else ''})" if not row.label.startswith(
            "round ") else " ".join(row.label.split()[:2])
        groups.setdefault(key, []).append(row)
    groups["session"] = list(rows)

    def total(label: str, items: Sequence[Comparison]) -> Comparison:
        return Comparison(label, *(sum(getattr(item, name) for item in items) for name in (
            "megabytes", "profile_s", "compute_s", "network_s", "predicted_s", "measured_s")))

    return [total(label, items) for label, items in groups.items()]


# -- predict --------------------------------------------------------------------------
def _prediction_table(phases: Sequence[Phase], links: Sequence[Link]) -> str:
    """Per phase and link: predicted seconds, and in brackets the network's part."""
    predictions = [predict(phases, link) for link in links]

    def cell(chosen: Sequence[int], mine: Sequence[PhasePrediction], rounds: int) -> str:
        total = sum(mine[i].seconds for i in chosen) / rounds
        return f"{total:.2f} ({sum(mine[i].network_s for i in chosen) / rounds:.2f})"

    groups = [(phase.label, [index], 1) for index, phase in enumerate(phases)]
    for label, in_rounds in (("set-up", False), ("per round (mean)", True)):
        chosen = [i for i, phase in enumerate(phases) if (phase.stage == "ROUND") == in_rounds]
        if chosen:
            groups.append((label, chosen, max(1, len({phases[i].round for i in chosen}))))
    rows = [[label, f"{sum(phases[i].bytes for i in chosen) / 1e6 / rounds:.1f}",
             f"{sum(phases[i].measured_s for i in chosen) / rounds:.2f}",
             *(cell(chosen, mine, rounds) for mine in predictions)]
            for label, chosen, rounds in groups]
    return markdown_table(["phase", "MB", "profile s",
                           *(f"{link.name} s (network)" for link in links)], rows)


def _predict_main(args: argparse.Namespace) -> int:
    links = [SCENARIOS[name] for name in args.scenario]
    if args.mbit is not None:
        links.append(Link(f"{args.mbit:g} Mbit/s", args.mbit * 1e6,
                          None if args.shared else args.mbit * 1e6, args.rtt_ms / 1e3))
    phases = phases_of(read_trace(args.trace))
    for link in links:
        print(f"- {link.describe()}" + (f" ({link.note})" if link.note else ""))
    print("\n" + _prediction_table(phases, links), flush=True)
    return 0


def _compare_main(args: argparse.Namespace) -> int:
    link = Link(f"{args.mbit:g} Mbit/s", args.mbit * 1e6, None, args.rtt_ms / 1e3)
    rows = compare(phases_of(read_trace(args.profile)), phases_of(read_trace(args.shaped)),
                   link)
    print(f"{args.shaped} against the prediction from {args.profile} ({link.describe()}):\n")
    print(markdown_table(COLUMNS, [row.cells() for row in [*rows, *totals(rows)]]))
    return 0


# -- check ----------------------------------------------------------------------------
def _federation_argv(args: argparse.Namespace, url: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "threshold_fl.bench.network", "federation", "--broker", url,
            "--clients", str(args.clients), "--rounds", str(args.rounds), "--model",
            args.model, "--mode", args.mode, "--epochs", str(args.epochs),
            "--fraction", repr(args.fraction),
            *(["--no-first-last"] if args.no_first_last else []), "--out", str(out)]


def _run_in(pair: NamespacePair, argv: list[str], mode: str, label: str, timeout_s: float
            ) -> tuple[list[Phase], float, int]:
    """Run one federation in the parties' namespace: its phases, wall-clock seconds and
    payload bytes (every message of the trace, once per recipient).  It runs in a
    process group of its own, stopped whole (the demo's parties too) if it outlasts
    *timeout_s* or this process is interrupted."""
    out = Path(argv[argv.index("--out") + 1])
    print(f"network: {label}: running the federation (logs under {out}); load {_loadavg()}",
          flush=True)
    started = time.perf_counter()
    federation = subprocess.Popen(pair.exec_argv(argv), start_new_session=True)
    try:
        code = federation.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(federation)
        raise ThresholdFLError(f"the {label} federation did not finish within {timeout_s:g} s "
                               f"(--timeout); it was stopped; see the logs under {out}"
                               ) from None
    except BaseException:  # Ctrl-C, or anything else: not one party left behind
        stop_group(federation)
        raise
    seconds = time.perf_counter() - started
    if code != 0:
        stop_group(federation)  # whatever of it is left
        raise ThresholdFLError(f"the {label} federation failed (exit {code}); "
                               f"see the logs under {out}")
    trace = read_trace(out / mode / TRACE)
    payload = sum(event.bytes * len(event.peers) for event in trace if event.event != "sent")
    return phases_of(trace), seconds, payload


def _check(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Each run's record, and the TCP congestion control they ran with."""
    reason = namespaces_usable()
    if reason is not None:
        raise ThresholdFLError(f"cannot run the check: {reason}")
    stale = remove_stale()
    if stale:
        print(f"network: removed stale namespaces {stale}")
    out: Path = args.out / "network-runs"
    runs: dict[str, Any] = {}
    with NamespacePair() as pair, pair.broker() as url:
        congestion = pair.congestion_control(args.congestion_control)
        print(f"network: TCP congestion control {congestion} in both namespaces", flush=True)
        for mbit in args.mbit:
            # the profile right before the shaped run: the cores are shared, and
            # compute seconds drift with what else runs
            pair.shape(None)
            profile_out = out / f"{mbit:g}mbit-profile"
            profile, wall, _ = _run_in(pair, _federation_argv(args, url, profile_out),
                                       args.mode, f"profile for {mbit:g} Mbit/s", args.timeout)
            runs[f"profile for {mbit:g} Mbit/s"] = {"wall_s": wall, "load": _loadavg()}
            pair.shape(mbit * 1e6)
            before = pair.counters()
            label = f"{mbit:g} Mbit/s" + (f", RTT +{args.rtt_ms:g} ms" if args.rtt_ms else "")
            with contextlib.ExitStack() as stack:
                shaped_url = (url if not args.rtt_ms
                              else stack.enter_context(pair.relay(args.rtt_ms / 2e3)))
                shaped, wall, payload = _run_in(
                    pair, _federation_argv(args, shaped_url, out / f"{mbit:g}mbit"),
                    args.mode, label, args.timeout)
            after = pair.counters()
            link = Link(f"tbf {label}", mbit * 1e6, None, args.rtt_ms / 1e3)
            rows = compare(profile, shaped, link)
            runs[label] = {"wall_s": wall, "load": _loadavg(), "rows": rows,
                           "totals": totals(rows), "tc": _moved(before, after),
                           "payload_bytes": payload}
            _print_rows(label, rows, runs[label])
    return runs, congestion


def _moved(before: dict[str, QdiscCounters], after: dict[str, QdiscCounters]
           ) -> dict[str, dict[str, int]]:
    return {direction: {"bytes": after[direction].sent_bytes - before[direction].sent_bytes,
                        "dropped": after[direction].dropped - before[direction].dropped}
            for direction in after}


def _print_rows(label: str, rows: Sequence[Comparison], run: dict[str, Any]) -> None:
    print(f"\n{label} (tbf on both directions), measured vs predicted from the unshaped run:")
    print_line(COLUMNS)
    for row in [*rows, *run["totals"]]:
        print_line(row.cells())
    tc = run["tc"]
    print(f"through the shaped link: {tc['up']['bytes'] / 1e6:.1f} MB up, "
          f"{tc['down']['bytes'] / 1e6:.1f} MB down, for {run['payload_bytes'] / 1e6:.1f} MB "
          f"of messages; load after {run['load']}", flush=True)


def _check_main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    runs, congestion = _check(args)
    seconds = time.perf_counter() - started
    tables, data = [], {"settings": {"model": args.model, "clients": args.clients,
                                     "rounds": args.rounds, "mode": args.mode,
                                     "epochs": args.epochs, "fraction": args.fraction,
                                     "mbit": args.mbit, "rtt_ms": args.rtt_ms,
                                     "congestion_control": congestion}, "runs": {}}
    for label, run in runs.items():
        record = {key: value for key, value in run.items() if key not in ("rows", "totals")}
        if "rows" in run:
            tables.append(f"### {label}\n\n" + markdown_table(
                COLUMNS, [row.cells() for row in [*run["rows"], *run["totals"]]]))
            record["rows"] = [vars(row) for row in [*run["rows"], *run["totals"]]]
        data["runs"][label] = record
    notes = (f"Whole check: {seconds:.0f} s. Load (1, 5, 15 min) after each run: "
             + "; ".join(f"{label}: {run['load']}" for label, run in runs.items()))
    title = (f"Shaped link: {args.model}, {args.clients} clients, {args.rounds} rounds, "
             f"{args.epochs} epochs, {args.mode}, {args.fraction:.0%} encrypted, "
             f"TCP {congestion}")
    paths = write_suite(args.out, "network", title, "\n\n".join(tables), data, notes=notes)
    print(f"\n{notes}\nwrote {paths[0]} and {paths[1]}")
    return 0


# -- federation (inside the namespace) ------------------------------------------------
def _federation_main(args: argparse.Namespace) -> int:
    config = _TracedDemo(clients=args.clients, rounds=args.rounds, mode=args.mode,
                         model=args.model, epochs=args.epochs, fraction=args.fraction,
                         first_and_last=not args.no_first_last, baseline=False, trace=True,
                         broker=args.broker, out=args.out)
    (result,) = asyncio.run(run_demo(config))
    print(json.dumps({"seconds": result.seconds, "rounds": len(result.rounds)}))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threshold-fl bench network", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predict", help="predicted phase times from an aggregator trace")
    pred.add_argument("--trace", type=Path, required=True,
                      help="an aggregator's trace (threshold-fl aggregator --trace FILE)")
    pred.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS),
                      default=list(SCENARIOS), help="the paper's scenarios (default: all)")
    pred.add_argument("--mbit", type=bounded(float, 1e-3, 1e7), default=None,
                      help="also a link of this many Mbit/s, every party and the broker")
    pred.add_argument("--rtt-ms", type=bounded(float, 0.0, 1e5), default=0.0,
                      help="its round trip, party to broker (default 0)")
    pred.add_argument("--shared", action="store_true",
                      help="the parties share the broker's link (as in check)")
    comp = sub.add_parser("compare", help="a stored shaped run's trace against the "
                                           "prediction from a stored profile's")
    comp.add_argument("--profile", type=Path, required=True, help="the unshaped run's trace")
    comp.add_argument("--shaped", type=Path, required=True, help="the shaped run's trace")
    comp.add_argument("--mbit", type=bounded(float, 1e-3, 1e7), required=True,
                      help="the shaped link's rate (the parties share it)")
    comp.add_argument("--rtt-ms", type=bounded(float, 0.0, 1e5), default=0.0)
    for name, helptext in (("check", "measured vs predicted on a tc-shaped link (root)"),
                           ("federation", "one traced federation against --broker")):
        run = sub.add_parser(name, help=helptext)
        run.add_argument("--clients", type=bounded(int, 2, 20), default=3)
        run.add_argument("--rounds", type=bounded(int, 1, 20), default=2)
        add_model_option(run, default="cnn")
        run.add_argument("--mode", choices=("threshold", "single-key", "plaintext"),
                         default="threshold")
        run.add_argument("--epochs", type=bounded(int, 1, 100), default=2,
                         help="local epochs per round (default 2, the demo's)")
        add_mask_options(run)
    check, federation = sub.choices["check"], sub.choices["federation"]
    check.add_argument("--mbit", type=bounded(float, 0.1, 1e5), nargs="+", default=[100.0],
                       help="shaped rates in Mbit/s (default 100)")
    check.add_argument("--rtt-ms", type=bounded(float, 0.0, 10_000.0), default=0.0,
                       help="added round trip, party to broker, by a delaying relay in front "
                            "of the broker (tc netem is not in every kernel; default 0)")
    check.add_argument("--congestion-control", metavar="NAME", default=DEFAULT_CONGESTION,
                       help="TCP congestion control inside both namespaces (default "
                            f"{DEFAULT_CONGESTION}: loss-based, like Linux's default cubic; "
                            "'system': the machine's own)")
    check.add_argument("--timeout", type=bounded(int, 60, 86_400), default=3600,
                       help="seconds one federation may run before it is stopped, its "
                            "parties included (default 3600)")
    check.add_argument("--out", type=Path, default=Path("bench-results"),
                       help="folder for network.md/.json; the runs go under network-runs/")
    federation.add_argument("--broker", required=True, help="mqtt://host:port")
    federation.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"predict": _predict_main, "compare": _compare_main, "check": _check_main,
               "federation": _federation_main}[args.command]
    try:
        return command(args)
    except (ThresholdFLError, OSError) as error:
        return suite_error("network", error)
    except KeyboardInterrupt:
        print("threshold-fl bench network: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
