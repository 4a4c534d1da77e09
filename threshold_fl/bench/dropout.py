"""``threshold-fl bench dropout``: the joint decryption when a member of the decryption
set dies, against the same federation without a dropout.

Each run is the demo's federation (:func:`threshold_fl.app.demo.run_demo`: a private
mosquitto, the aggregator and N clients as separate OS processes) in threshold mode,
baseline off:

- **A**: no dropout;
- **B**: the same federation and seed; in the last round (``--rounds``, default 2) one
  member of that round's decryption set kills itself with SIGKILL on receiving its
  DecryptRequest, before it makes its share (``threshold-fl client --drop-at decrypt``).
  The broker publishes its Last Will; the aggregator asks another set (attempt 2).

Figures of the measured round, from the aggregator's report (its round rows):

- **decryption s**: from handing the first DecryptRequest (attempt 1) to the transport
  to handing over the Fused broadcast; in B that spans the dead member's Last Will,
  the new set's shares and the fusion;
- **attempts**: how many decryption sets the aggregator asked;
- **c1 to victim s**: from the first DecryptRequest to the victim's (the same client in
  A) being handed over whole to the broker, from the aggregator's trace;
- **heard s**: from the first DecryptRequest to the broker's news that the victim is
  offline (its Last Will) reaching the aggregator (B only, from the trace); between the
  two lie the victim's receipt, its death and the kernel tearing it down;
- **last set s**: the part of the decryption seconds from asking the last set; in B,
  the rest is waiting to hear of the death (the request reaching the victim, the kernel
  tearing the killed process down, the broker's Last Will, the aggregator handling it);
- **vs A**: the decryption seconds over A's (the goal is at most 2x);
- **last set vs A**: the last set's seconds over A's decryption seconds: what replacing
  the set cost the protocol, apart from the wait;
- **round s**: the aggregator's whole round, from the previous round's end to every
  live client's confirmation (in B it includes dropping the dead client).

Each pair runs at every ``--fraction`` given: by default full encryption (the default
setting of ``demo`` and ``manifest``) and the paper's 10 %.  A dropout costs about the
same wait whatever the step, so the ratio is worst where the step is shortest.

Before the runs, :func:`~threshold_fl.bench.crash_probe.crash_detection_s` times the
wait that no protocol can shorten: SIGKILL of a process that loaded what a client loads
to its Last Will reaching a subscriber (``--probe-repeats``, median).

Timing is printed and written, never asserted; ``--repeats`` runs the pair again.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from protocols.fusion import choose_set
from threshold_fl._checks import add_model_option, bounded
from threshold_fl.app.demo import DemoConfig, run_demo
from threshold_fl.app.rounds import RunReport
from threshold_fl.app.trace import TraceEvent, read_trace
from threshold_fl.bench.crash_probe import crash_detection_s
from threshold_fl.bench.output import (
    BENCH_FRACTION,
    markdown_table,
    print_line,
    suite_error,
    write_suite,
)
from threshold_fl.errors import ThresholdFLError
from threshold_fl.identity import PartyId

__all__ = ["COLUMNS", "DropoutFigures", "figures_of", "main", "victim"]

#: ``--quick``: the MLP, one local epoch, two rounds (model, epochs, rounds).
QUICK = ("mlp", 1, 2)
NOTES = (
    "A: no dropout. B: the same federation and seed; in the measured (last) round one "
    "member of the decryption set kills itself (SIGKILL) on receiving its DecryptRequest, "
    "before making its share; the broker publishes its Last Will and the aggregator asks "
    "another set.\n\n"
    "- decryption s: from the aggregator handing the first DecryptRequest (attempt 1) to "
    "the transport to handing over the Fused broadcast.\n"
    "- attempts: decryption sets asked.\n"
    "- c1 to victim s: from the first DecryptRequest to the victim's (the same client in "
    "A) handed over whole to the broker.\n"
    "- heard s: from the first DecryptRequest to the victim's Last Will reaching the "
    "aggregator.\n"
    "- last set s: the part of the decryption seconds from asking the last set; in B the "
    "rest is waiting to hear of the death.\n"
    "- vs A: decryption seconds over run A's (goal: at most 2x).\n"
    "- last set vs A: the last set's seconds over run A's decryption seconds.\n"
    "- round s: the aggregator's whole round, from the previous round's end to the last "
    "live client's confirmation.")
COLUMNS = ("encrypted", "run", "killed", "attempts", "decryption s", "c1 to victim s",
           "heard s", "last set s", "vs A", "last set vs A", "round s", "accuracy")
#: ``--fraction`` by default: full encryption (the default setting) and the paper's 10 %.
FRACTIONS = (1.0, BENCH_FRACTION)


@dataclass(frozen=True)
class DropoutFigures:
    """The measured round of one run, as the aggregator saw it."""

    fraction: float
    run: str
    repeat: int
    killed: str | None
    round: int
    attempts: int
    decryption_s: float
    last_set_s: float
    round_s: float
    accuracy: float | None
    contributors: int | None
    to_victim_s: float | None = None  # first DecryptRequest to the victim's handed over
    heard_s: float | None = None  # first DecryptRequest to the victim's Last Will heard
    ratio: float | None = None  # decryption_s over the same repeat's run A
    last_set_ratio: float | None = None  # last_set_s over the same repeat's A decryption_s

    def cells(self) -> list[object]:
        def times(ratio: float | None) -> str:
            return "-" if ratio is None else f"{ratio:.2f}x"

        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        return [f"{self.fraction:.0%}", f"{self.run}{self.repeat}" if self.repeat > 1
                else self.run, self.killed or "-", self.attempts,
                f"{self.decryption_s:.3f}", seconds(self.to_victim_s), seconds(self.heard_s),
                f"{self.last_set_s:.3f}", times(self.ratio), times(self.last_set_ratio),
                f"{self.round_s:.2f}", "-" if self.accuracy is None else f"{self.accuracy:.2%}"]

    def against(self, a: DropoutFigures) -> DropoutFigures:
        """These figures with the ratios to run *a* (the same repeat without a dropout)."""
        return replace(self, ratio=self.decryption_s / a.decryption_s,
                       last_set_ratio=self.last_set_s / a.decryption_s)


def victim(config: DemoConfig, round_: int) -> int:
    """The client (numbered from 1) to kill: the last member of *round_*'s decryption set
    when every client is alive (the aggregator's own choice, t = N/2 + 1)."""
    names = [PartyId(config.client_name(n)) for n in range(1, config.clients + 1)]
    members = choose_set(names, names, config.clients // 2 + 1, round_)
    assert members is not None
    return names.index(members[-1]) + 1


def figures_of(run: str, repeat: int, result: RunReport, killed: str | None, *,
               fraction: float, trace: Sequence[TraceEvent] = (), watched: str = ""
               ) -> DropoutFigures:
    """The last round's figures of *result*, from the aggregator's row; with its
    *trace*, when the *watched* client's DecryptRequest went and its Will came."""
    row = result.parties["server"][-1]
    if row.decryption_s is None or row.attempts is None or row.last_set_s is None:
        raise ThresholdFLError(f"run {run}: the aggregator's round {row.round} has no joint "
                               "decryption (nothing encrypted?)")
    accuracy = result.rounds[-1].accuracy
    to_victim, heard = _victim_times(trace, row.round, watched)
    return DropoutFigures(fraction, run, repeat, killed, row.round, row.attempts,
                          row.decryption_s, row.last_set_s, row.seconds, accuracy,
                          row.contributors, to_victim_s=to_victim, heard_s=heard)


def _victim_times(trace: Sequence[TraceEvent], round_: int, watched: str
                  ) -> tuple[float | None, float | None]:
    """Seconds from round *round_*'s first DecryptRequest to *watched*'s being handed
    over, and to the first news after it that *watched* is offline (None if absent)."""
    requests = [e for e in trace if e.kind == "DecryptRequest" and e.round == round_]
    if not requests:
        return None, None
    start = min(e.t for e in requests)
    sent = [e.t for e in requests if e.event == "sent" and watched in e.peers]
    offline = [e.t for e in trace if e.event == "offline" and e.peers == (watched,)
               and e.t >= start]
    return (min(sent) - start if sent else None,
            min(offline) - start if offline else None)


def _run(config: DemoConfig) -> RunReport:
    (result,) = asyncio.run(run_demo(config))
    return result




def _parser() -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="threshold-fl bench dropout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=bounded(int, 3, 20), default=defaults.clients)
    parser.add_argument("--rounds", type=bounded(int, 2, 100), default=2,
                        help="rounds per run; the kill and the figures are in the last one")
    add_model_option(parser, default=defaults.model)
    parser.add_argument("--epochs", type=bounded(int, 1, 100), default=defaults.epochs)
    parser.add_argument("--fraction", type=bounded(float, 0.0, 1.0), nargs="+",
                        default=list(FRACTIONS),
                        help="shares of coordinates encrypted (plus the first and last "
                             "layers below 1), a pair of runs each (default: 1 and 0.1)")
    parser.add_argument("--seed", type=bounded(int, 0), default=defaults.seed)
    parser.add_argument("--repeats", type=bounded(int, 1, 20), default=1,
                        help="run the pair (A, B) this many times")
    parser.add_argument("--probe-repeats", type=bounded(int, 0, 50), default=5,
                        help="kill a client-like process this many times to time its Last "
                             "Will (the median is reported; 0 skips the probe)")
    parser.add_argument("--quick", action="store_true",
                        help="the MLP, 1 epoch, 2 rounds (overrides those options)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="folder for dropout.md/.json; the runs go under dropout-runs/")
    return parser


def _write(out: Path, template: DemoConfig, fractions: Sequence[float],
           rows: Sequence[DropoutFigures], detection_s: float | None) -> list[Path]:
    settings = {"clients": template.clients, "rounds": template.rounds,
                "model": template.model, "epochs": template.epochs,
                "fractions": list(fractions), "seed": template.seed, "mode": template.mode}
    headline = _headline(rows, detection_s)
    notes = f"{headline}\n\n{NOTES}"
    data: dict[str, Any] = {"settings": settings, "rows": [asdict(row) for row in rows],
                            "crash_detection_s": detection_s, "headline": headline}
    title = (f"Decryption with a member of the set killed: {template.model}, "
             f"{template.clients} clients, round {template.rounds}")
    paths = write_suite(out, "dropout", title, markdown_table(COLUMNS, [r.cells() for r in rows]),
                        data, notes=notes)
    return list(paths)


def _headline(rows: Sequence[DropoutFigures], detection_s: float | None) -> str:
    dropped = [row for row in rows if row.ratio is not None]
    if not dropped:
        return "No run with a dropout."

    def span(values: Sequence[float | None]) -> str:
        known = [value for value in values if value is not None]
        return f"{min(known):.2f}x to {max(known):.2f}x"

    parts = []
    for fraction in dict.fromkeys(row.fraction for row in dropped):
        some = [row for row in dropped if row.fraction == fraction]
        parts.append(f"{span([row.ratio for row in some])} the no-dropout step at "
                     f"{fraction:.0%} encrypted (from asking the new set: "
                     f"{span([row.last_set_ratio for row in some])})")
    line = ("Decryption step with one member of the set killed: " + "; ".join(parts)
            + " (goal: at most 2x).")
    heard = [row.heard_s - row.to_victim_s for row in dropped
             if row.heard_s is not None and row.to_victim_s is not None]
    if heard:
        line += (f" From the victim's request handed to the broker to its Last Will at the "
                 f"aggregator: {_ms(min(heard))} to {_ms(max(heard))} ms.")
    if detection_s is not None:
        line += (f" A killed client-like process's Last Will arrives {detection_s * 1e3:.0f} ms "
                 "after SIGKILL (median of the probe).")
    return line


def _ms(seconds: float) -> str:
    return f"{math.floor(seconds * 1e3 + 0.5):.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model, epochs, rounds = QUICK if args.quick else (args.model, int(args.epochs),
                                                      int(args.rounds))
    out: Path = args.out
    fractions = tuple(dict.fromkeys(float(f) for f in args.fraction))  # in order, once
    rows: list[DropoutFigures] = []
    try:
        template = DemoConfig(clients=int(args.clients), rounds=rounds, model=model,
                              fraction=fractions[0], epochs=epochs, seed=int(args.seed),
                              mode="threshold", baseline=False, save_models=True, out=out,
                              trace=True)
        number = victim(template, template.rounds)
        print(f"dropout: {template.model}, {template.clients} clients, {template.rounds} "
              f"rounds, {_percents(fractions)} encrypted; B kills "
              f"{template.client_name(number)} (in round {template.rounds}'s decryption set) "
              f"on its DecryptRequest; party logs under {out / 'dropout-runs'}/", flush=True)
        detection_s = None
        if args.probe_repeats:
            detection_s = crash_detection_s(template.model, int(args.probe_repeats))
            print(f"crash probe: a killed {template.model} client's Last Will arrives "
                  f"{detection_s * 1e3:.0f} ms after SIGKILL (median of "
                  f"{args.probe_repeats})", flush=True)
        print_line(COLUMNS)
        for fraction in fractions:
            for repeat in range(1, int(args.repeats) + 1):
                folder = _folder(out, fraction, len(fractions), repeat, int(args.repeats))
                rows += _pair(replace(template, fraction=fraction), folder, repeat, number)
        paths = _write(out, template, fractions, rows, detection_s)
    except (ThresholdFLError, OSError) as error:
        return suite_error("dropout", error)
    except KeyboardInterrupt:
        print("threshold-fl bench dropout: interrupted", file=sys.stderr)
        return 130
    written = ", ".join(str(path) for path in paths)
    print(f"\n{_headline(rows, detection_s)}\nwrote {written}", flush=True)
    return 0


def _folder(out: Path, fraction: float, fractions: int, repeat: int, repeats: int) -> Path:
    """Where a pair's runs go: a folder per fraction and per repeat only when there are
    several."""
    folder = out / "dropout-runs"
    if fractions > 1:
        folder /= f"encrypted-{fraction:g}"
    return folder / f"repeat-{repeat}" if repeats > 1 else folder


def _pair(template: DemoConfig, folder: Path, repeat: int, number: int
          ) -> list[DropoutFigures]:
    """Run A and B of one repeat at *template*'s fraction; print and return their rows."""
    killed = template.client_name(number)
    rows: list[DropoutFigures] = []
    for run, config in (("A", replace(template, out=folder / "A")),
                        ("B", replace(template, out=folder / "B", drop_client=number,
                                      drop_at="decrypt", drop_round=template.rounds))):
        result = _run(config)
        trace = read_trace(config.out / config.mode / "server.trace.jsonl")
        row = figures_of(run, repeat, result, killed if run == "B" else None,
                         fraction=template.fraction, trace=trace, watched=killed)
        row = row.against(rows[0]) if rows else row
        print_line(row.cells())
        rows.append(row)
    return rows


def _percents(fractions: Sequence[float]) -> str:
    return " and ".join(f"{fraction:.0%}" for fraction in fractions)
