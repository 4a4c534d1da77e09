"""``threshold-fl train``: federated training on the digits through the full protocol, in
one process (real OpenFHE, real torch), one table row per round.

    threshold-fl train --model cnn --mode threshold --rounds 3 --baseline

``--baseline`` also runs plaintext FedAvg with the same seed and prints the accuracy gap;
``--json FILE`` writes the report.  The parties here share one process; the MQTT
commands run them apart.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from protocols import Mode
from threshold_fl._checks import add_mask_options, add_model_option, bounded, selective_warning
from threshold_fl.app.federation import (
    SPLITS,
    FederationConfig,
    run_federation,
)
from threshold_fl.app.rounds import RunReport, header
from threshold_fl.errors import ThresholdFLError
from threshold_fl.ml.privacy import LaplaceNoise
from threshold_fl.ml.training import LocalTraining

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threshold-fl train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(parser)
    parser.add_argument("--mode", choices=[m.value for m in Mode], default="threshold")
    parser.add_argument("--clients", type=bounded(int, 2, 50), default=3)
    parser.add_argument("--rounds", type=bounded(int, 1, 1000), default=3)
    add_mask_options(parser)
    parser.add_argument("--split", choices=SPLITS, default="iid")
    parser.add_argument("--alpha", type=bounded(float, 1e-3), default=0.5,
                        help="Dirichlet concentration for --split dirichlet")
    parser.add_argument("--epochs", type=bounded(int, 1, 100), default=2)
    parser.add_argument("--lr", type=bounded(float, 1e-6, 10.0), default=0.05)
    parser.add_argument("--batch-size", type=bounded(int, 1, 4096), default=32)
    parser.add_argument("--sensitivity-samples", type=bounded(int, 1, 10_000), default=32)
    parser.add_argument("--dp-scale", type=bounded(float, 1e-9), default=None,
                        help="local DP: Laplace scale b on plaintext coordinates")
    parser.add_argument("--dp-clip", type=bounded(float, 1e-9), default=1.0,
                        help="local DP: clip each plaintext update coordinate to [-C, C]")
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--baseline", action="store_true",
                        help="also run plaintext FedAvg with the same seed and compare")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    return parser


def _config(args: argparse.Namespace, mode: str) -> FederationConfig:
    noise = None if args.dp_scale is None else LaplaceNoise(args.dp_scale, args.dp_clip)
    plan = LocalTraining(epochs=int(args.epochs), batch_size=int(args.batch_size),
                         learning_rate=args.lr)
    return FederationConfig(
        model=args.model, clients=int(args.clients), rounds=int(args.rounds), mode=mode,
        fraction=args.fraction, first_and_last=not args.no_first_last, split=args.split,
        alpha=args.alpha, training=plan, sensitivity_samples=int(args.sensitivity_samples),
        noise=noise, seed=int(args.seed))


def _run(config: FederationConfig) -> RunReport:
    print(f"\n{config.mode}: {config.model}, {config.clients} clients, {config.rounds} rounds",
          flush=True)
    print(header(), flush=True)
    return asyncio.run(run_federation(config, on_round=lambda r: print(r.line(), flush=True)))


def _as_json(config: FederationConfig, report: RunReport) -> dict[str, object]:
    return {"config": dataclasses.asdict(config), **report.to_dict()}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    modes = [args.mode]
    if args.baseline and args.mode != Mode.PLAINTEXT.value:
        modes.append(Mode.PLAINTEXT.value)
    warning = selective_warning(args.fraction, args.mode)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    try:
        configs = [_config(args, mode) for mode in modes]
        reports = [_run(config) for config in configs]
    except ThresholdFLError as error:
        print(f"threshold-fl train: error: {error}", file=sys.stderr)
        return 1
    main_report = reports[0]
    print(f"\nfinal accuracy ({main_report.mode}): {main_report.final_accuracy:.2%}, "
          f"{main_report.bytes_sent / 1e6:.1f} MB, {main_report.seconds:.1f} s")
    if main_report.privacy is not None:
        print(f"local DP: {main_report.privacy}")
    if len(reports) == 2:
        baseline = reports[1]
        gap = (main_report.final_accuracy - baseline.final_accuracy) * 100
        print(f"plaintext FedAvg, same seed: {baseline.final_accuracy:.2%} "
              f"(gap {gap:+.2f} points); HE overhead x{main_report.seconds / baseline.seconds:.2f}"
              f" time, x{main_report.bytes_sent / baseline.bytes_sent:.2f} bytes")
    if args.json is not None:
        runs = [_as_json(config, report)
                for config, report in zip(configs, reports, strict=True)]
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
