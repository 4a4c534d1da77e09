"""The ``threshold-fl`` command.

Each subcommand lives in its own module, imported only when it runs (OpenFHE and torch
are slow to load), and parses the rest of the command line itself:

- ``init-party`` and ``manifest``: set up a federation (:mod:`threshold_fl.app.setup_cli`);
- ``aggregator``, ``client``, ``key-authority``: run one party against an MQTT broker
  (:mod:`threshold_fl.app.party_cli`);
- ``demo``: a whole federation as separate processes over a broker (:mod:`threshold_fl.app.demo`);
- ``train``: federated training on the digits through the whole protocol
  (:mod:`threshold_fl.app.train`);
- ``attack``: the gradient-inversion privacy evaluation (:mod:`threshold_fl.app.privacy_eval`);
- ``bench SUITE``: benchmarks (:mod:`threshold_fl.bench`).

``threshold-fl --version`` prints the version.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from threshold_fl import __version__

# command -> ("module:function" taking argv and returning the exit code, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "init-party": ("threshold_fl.app.setup_cli:init_party_main",
                   "create a party's identity keys"),
    "manifest": ("threshold_fl.app.setup_cli:manifest_main",
                 "assemble a federation manifest from the parties' public keys"),
    "aggregator": ("threshold_fl.app.party_cli:aggregator_main",
                   "run the aggregation server against a broker"),
    "client": ("threshold_fl.app.party_cli:client_main", "run a client against a broker"),
    "key-authority": ("threshold_fl.app.party_cli:key_authority_main",
                      "run single-key mode's key authority against a broker"),
    "demo": ("threshold_fl.app.demo:main",
             "a federation as separate processes over MQTT, with a plaintext baseline"),
    "train": ("threshold_fl.app.train:main", "federated training on the digits, one row per round"),
    "attack": ("threshold_fl.app.privacy_eval:main",
               "DLG gradient-inversion attack vs selective encryption"),
    "bench": ("threshold_fl.bench:main", "benchmarks: bench crypto, bench peers"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="threshold-fl",
        description="Privacy-preserving federated learning with threshold HE (OpenFHE CKKS).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, add_help=False, help=f"{summary} ({name} --help for options)")
    # Options after the command belong to it; it parses them itself.
    namespace, rest = parser.parse_known_args(argv)
    # numpy asks the kernel for transparent huge pages for arrays of 4 MB and more; on
    # a fragmented machine each such fault can cost a millisecond of compaction (it
    # added 0.3-0.4 s to the first fusion of a CNN round here).  Read when numpy is
    # imported, so set before the command loads it; inherited by the party processes.
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    if namespace.command in COMMANDS:
        module_name, _, function = COMMANDS[namespace.command][0].partition(":")
        code: int = getattr(importlib.import_module(module_name), function)(rest)
        return code
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
