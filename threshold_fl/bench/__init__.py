"""``threshold-fl bench SUITE``: benchmarks that print their figures and write them as
markdown, JSON and PNG under one output folder (with the machine they ran on).

``threshold-fl bench all`` runs every suite but ``crypto`` and ``dropout`` into one folder
(``make bench``).  Suites:

- ``peers``: our encrypted FedAvg round next to NVIDIA FLARE's (TenSEAL, FLARE's
  defaults) on the same vectors;
- ``models``: a fully encrypted round per model size (the paper's Table 4), each
  role in its own process for its peak memory;
- ``selective``: encrypted fraction 0-100 % (Table 7);
- ``params``: batch size x scaling bits (Table 6);
- ``clients``: a client's bytes per round against N with the whole protocol (N = 3 to
  50), and 2 to 200 clients per role (Figure 14a);
- ``threshold``: single-key vs threshold N = 2, 3, 5, 10 and noise flooding (Figure 12);
- ``e2e``: the multi-process MQTT demo per mode;
- ``dropout``: the MQTT demo's joint decryption with a member of the set killed, against
  none (not in ``all``);
- ``scale``: 10 to 100 real parties (clients packed several per process) over a private
  mosquitto, 30 % vanishing across the stages; set-up and round time (Figure 14a end to
  end), bytes, CPU and memory per N (not in ``all``);
- ``large``: one round with a BERT-size update over MQTT, uploads streamed in parts,
  each party a process: peak memory, bytes, stage times (not in ``all``: long);
- ``network``: each stage's time on the paper's bandwidth scenarios, predicted from a
  run's trace, and checked on a ``tc``-shaped link between network namespaces (root;
  not in ``all``);
- ``crypto``: the older single-key vs threshold microbenchmark.

Results, and how they were made, are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["ALL_ORDER", "SUITES", "main", "run_all"]

# suite -> ("module:function" taking argv and returning the exit code, one-line help)
SUITES: dict[str, tuple[str, str]] = {
    "crypto": ("threshold_fl.bench.crypto:main", "single-key vs threshold CKKS, step by step"),
    "peers": ("threshold_fl.bench.peers:main",
              "our round vs NVIDIA FLARE's TenSEAL round on the same vectors"),
    "models": ("threshold_fl.bench.models:main",
               "fully encrypted round per model size vs plaintext, peak memory per role"),
    "selective": ("threshold_fl.bench.selective:main",
                  "encrypted fraction 0-100 % on a large vector vs plaintext"),
    "params": ("threshold_fl.bench.params:main",
               "batch size x scaling bits: time, bytes, error, accuracy delta"),
    "clients": ("threshold_fl.bench.clients:main",
                "bytes per client against N (whole protocol); 2 to 200 clients per role"),
    "threshold": ("threshold_fl.bench.threshold:main",
                  "single-key vs threshold N = 2, 3, 5, 10, and noise flooding's cost"),
    "e2e": ("threshold_fl.bench.e2e:main",
            "the MQTT demo per mode: wall-clock per round, bytes on the wire"),
    "dropout": ("threshold_fl.bench.dropout:main",
                "decryption latency with a member of the set killed vs none (MQTT demo)"),
    "scale": ("threshold_fl.bench.scale:main",
              "10 to 100 real parties over mosquitto, 30 % dropped; Figure 14a end to end"),
    "large": ("threshold_fl.bench.large:main",
              "a BERT-size round over MQTT, parties as processes: peak memory, bytes"),
    "network": ("threshold_fl.bench.network:main",
                "stage times on other links: predicted from a trace, checked on a shaped one"),
}


#: What ``bench all`` (and ``make bench``) runs, in order: quick ones first.  ``crypto``
#: is left out: the threshold suite measures the same steps on the CNN vector.
ALL_ORDER = ("peers", "threshold", "params", "selective", "models", "clients", "e2e")
#: Suites that take ``--large`` (the 86M and 109M-value vectors).
LARGE_SUITES = frozenset({"models", "selective"})


def _suite_main(suite: str) -> Callable[[list[str]], int]:
    module_name, _, function = SUITES[suite][0].partition(":")
    run: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), function)
    return run


def run_all(argv: Sequence[str]) -> int:
    """``threshold-fl bench all``: every suite into one folder, with a summary."""
    parser = argparse.ArgumentParser(
        prog="threshold-fl bench all",
        description="Run the suites one after another into one output folder.")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--large", action="store_true",
                        help="also the 86M and 109M-value vectors (models, selective)")
    parser.add_argument("--only", nargs="+", choices=ALL_ORDER, metavar="SUITE",
                        help=f"run only these (of {', '.join(ALL_ORDER)})")
    args = parser.parse_args(list(argv))
    chosen = [suite for suite in ALL_ORDER if args.only is None or suite in args.only]
    results: list[tuple[str, int, float]] = []
    for number, suite in enumerate(chosen, 1):
        print(f"\n=== [{number}/{len(chosen)}] threshold-fl bench {suite} "
              f"({SUITES[suite][1]}) ===", flush=True)
        suite_args = ["--out", str(args.out)]
        if args.large and suite in LARGE_SUITES:
            suite_args.append("--large")
        started = time.perf_counter()
        code = _suite_main(suite)(suite_args)
        results.append((suite, code, time.perf_counter() - started))
    print("\nsuite       exit  minutes")
    for suite, code, seconds in results:
        print(f"{suite:<10} {code:>5}  {seconds / 60:7.1f}")
    failed = [suite for suite, code, _ in results if code != 0]
    combined = _combine(args.out, [suite for suite, code, _ in results if code == 0])
    print(f"results in {args.out}/ (all of them in {combined})"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _combine(folder: Path, suites: Sequence[str]) -> Path:
    """One markdown file with every suite's tables and plots (for docs/benchmarks.md)."""
    parts = []
    for suite in suites:  # a suite's own report, then its parts' (clients-protocol.md)
        for report in [folder / f"{suite}.md", *sorted(folder.glob(f"{suite}-*.md"))]:
            if not report.exists():  # a suite run for one part only
                continue
            text = report.read_text(encoding="utf-8").strip()
            text = text.replace("\n# ", "\n## ").removeprefix("# ")  # titles become h2
            name = report.stem
            plot = f"\n\n![{name}]({name}.png)" if (folder / f"{name}.png").exists() else ""
            parts.append(f"## {text}{plot}\n")
    combined = folder / "all.md"
    combined.write_text("\n".join(parts), encoding="utf-8")
    return combined


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "all":
        return run_all(args[1:])
    if args and args[0] in SUITES:  # the suite parses the rest, its --help included
        return _suite_main(args[0])(args[1:])
    parser = argparse.ArgumentParser(prog="threshold-fl bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=["all", *sorted(SUITES)], metavar="SUITE",
                        help=f"all, or one of: {', '.join(sorted(SUITES))} "
                        "(SUITE --help for options)")
    parser.parse_args(args)  # only reached without a known suite: help, or an error
    return 2
