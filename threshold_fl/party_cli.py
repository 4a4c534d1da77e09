"""``threshold-fl aggregator``, ``client`` and ``key-authority``: run one party against a
broker, e.g. each on its own machine::

    threshold-fl aggregator --manifest manifest.json --identity parties/server \\
        --broker mqtts://broker.example:8883 --ca-file ca.pem --username server --password ...
    threshold-fl client --manifest manifest.json --identity parties/alice \\
        --broker mqtts://broker.example:8883 --ca-file ca.pem --model cnn

Exit codes: 0 the session finished; 1 it aborted or a file or argument was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from protocols import Manifest
from threshold_fl._checks import bounded
from threshold_fl.errors import ThresholdFLError
from threshold_fl.identity import Identity
from threshold_fl.party import (
    DROP_STAGES,
    ClientPlan,
    load_party,
    run_aggregator,
    run_client,
    run_key_authority,
)
from transports.broker import BrokerConfig
from transports.mqtt import MqttOptions

__all__ = ["aggregator_main", "client_main", "key_authority_main"]


def _common(prog: str, summary: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"threshold-fl {prog}", description=summary,
                                     epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--identity", type=Path, required=True,
                        help="this party's directory from 'threshold-fl init-party'")
    parser.add_argument("--fingerprint", default=None,
                        help="refuse to run unless the manifest has this fingerprint")
    parser.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password", default=None)
    parser.add_argument("--ca-file", default=None, help="TLS: CA certificate (mqtts)")
    parser.add_argument("--cert-file", default=None, help="TLS: client certificate")
    parser.add_argument("--key-file", default=None, help="TLS: client key")
    parser.add_argument("--give-up-after", type=bounded(float, 0.1, 86_400.0), default=60.0,
                        metavar="SECONDS",
                        help="leave when the broker stays unreachable this long (default 60)")
    parser.add_argument("--verbose", action="store_true", help="log protocol details")
    return parser


def _broker(args: argparse.Namespace) -> BrokerConfig:
    return BrokerConfig.from_url(args.broker, username=args.username, password=args.password,
                                 ca_file=args.ca_file, cert_file=args.cert_file,
                                 key_file=args.key_file)


def _run(prog: str, args: argparse.Namespace, work: object) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"{prog}: %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(work)  # type: ignore[arg-type]
    except ThresholdFLError as error:
        print(f"threshold-fl {prog}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"threshold-fl {prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def _report_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, default=None,
                        help="append one JSON line per round to this file")


Runner = Callable[[Manifest, Identity, BrokerConfig, MqttOptions], Awaitable[object]]


def _serve(prog: str, args: argparse.Namespace, runner: Runner) -> int:
    """Load the manifest and identity, connect, run *runner*."""

    async def work() -> None:
        manifest, identity = load_party(args.manifest, args.identity, args.fingerprint)
        await runner(manifest, identity, _broker(args),
                     MqttOptions(give_up_after=args.give_up_after))

    return _run(prog, args, work())


def aggregator_main(argv: Sequence[str] | None = None) -> int:
    parser = _common("aggregator", "Run the aggregation server.")
    _report_option(parser)
    args = parser.parse_args(argv)
    return _serve("aggregator", args, lambda manifest, identity, broker, options: (
        run_aggregator(manifest, identity, broker, options=options, report=args.report)))


def key_authority_main(argv: Sequence[str] | None = None) -> int:
    args = _common("key-authority", "Run single-key mode's key authority.").parse_args(argv)
    return _serve("key-authority", args, lambda manifest, identity, broker, options: (
        run_key_authority(manifest, identity, broker, options=options)))


def client_main(argv: Sequence[str] | None = None) -> int:
    parser = _common("client", "Run a client: train on its part of the digits each round.")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=bounded(int, 1, 100), default=2)
    parser.add_argument("--lr", type=bounded(float, 1e-6, 10.0), default=0.05)
    parser.add_argument("--batch-size", type=bounded(int, 1, 4096), default=32)
    parser.add_argument("--split", choices=("iid", "dirichlet"), default="iid")
    parser.add_argument("--alpha", type=bounded(float, 1e-3), default=0.5)
    parser.add_argument("--data-seed", type=bounded(int, 0), default=0,
                        help="must be the same at every client: it fixes the split")
    parser.add_argument("--sensitivity-samples", type=bounded(int, 1, 10_000), default=32)
    parser.add_argument("--dp-scale", type=bounded(float, 1e-9), default=None)
    parser.add_argument("--dp-clip", type=bounded(float, 1e-9), default=1.0)
    _report_option(parser)
    parser.add_argument("--save-models", type=Path, default=None, metavar="DIR",
                        help="save each round's global model in DIR as global-round-N.npy")
    parser.add_argument("--drop-at", choices=DROP_STAGES, default=None,
                        help="testing: kill this process (SIGKILL) at this stage")
    parser.add_argument("--drop-round", type=bounded(int, 1), default=1)
    args = parser.parse_args(argv)

    def client(manifest: Manifest, identity: Identity, broker: BrokerConfig,
               options: MqttOptions) -> Awaitable[object]:
        plan = ClientPlan(model=args.model, epochs=int(args.epochs), learning_rate=args.lr,
                          batch_size=int(args.batch_size), split=args.split, alpha=args.alpha,
                          data_seed=int(args.data_seed),
                          sensitivity_samples=int(args.sensitivity_samples),
                          dp_scale=args.dp_scale, dp_clip=args.dp_clip, drop_at=args.drop_at,
                          drop_round=int(args.drop_round))
        return run_client(manifest, identity, broker, plan, options=options,
                          report=args.report, save_models=args.save_models)

    return _serve("client", args, client)
