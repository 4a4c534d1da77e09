"""The ``threshold-fl`` command.

``threshold-fl demo [options]`` runs the in-process threshold FedAvg demo
(:mod:`threshold_fl.demo`); ``threshold-fl bench [options]`` the crypto
microbenchmark; ``threshold-fl --version`` prints the version.  Later issues
add the multi-party commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from threshold_fl import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="threshold-fl",
        description="Privacy-preserving federated learning with threshold HE (OpenFHE CKKS).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "demo",
        add_help=False,
        help="one threshold FedAvg round in this process (demo --help for options)",
    )
    sub.add_parser(
        "bench", add_help=False, help="single-key vs threshold crypto microbenchmark (bench --help)"
    )
    # Options after the command belong to it; it parses them itself.
    namespace, rest = parser.parse_known_args(argv)
    if namespace.command == "demo":
        from threshold_fl.demo import main as demo_main  # imports OpenFHE and torch

        return demo_main(rest)
    if namespace.command == "bench":
        from threshold_fl.bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
