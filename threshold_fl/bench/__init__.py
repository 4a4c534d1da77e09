"""``threshold-fl bench SUITE``: benchmarks that print their figures and write them as
markdown, JSON and PNG under one output folder (with the machine they ran on).

Suites:

- ``crypto``: single-key vs threshold CKKS microbenchmark, step by step
  (:mod:`threshold_fl.bench.crypto`);
- ``peers``: our encrypted FedAvg round next to NVIDIA FLARE's (TenSEAL, FLARE's
  defaults) on the same vectors (:mod:`threshold_fl.bench.peers`).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

__all__ = ["SUITES", "main"]

# suite -> ("module:function" taking argv and returning the exit code, one-line help)
SUITES: dict[str, tuple[str, str]] = {
    "crypto": ("threshold_fl.bench.crypto:main", "single-key vs threshold CKKS, step by step"),
    "peers": ("threshold_fl.bench.peers:main",
              "our round vs NVIDIA FLARE's TenSEAL round on the same vectors"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threshold-fl bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES), metavar="SUITE",
                        help=f"one of: {', '.join(sorted(SUITES))} (SUITE --help for options)")
    namespace, rest = parser.parse_known_args(argv)
    module_name, _, function = SUITES[namespace.suite][0].partition(":")
    code: int = getattr(importlib.import_module(module_name), function)(rest)
    return code
