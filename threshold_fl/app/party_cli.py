"""``threshold-fl aggregator``, ``client`` and ``key-authority``: run one party against a
broker, e.g. each on its own machine::

    threshold-fl aggregator --manifest manifest.json --identity parties/server \\
        --broker mqtts://broker.example:8883 --ca-file ca.pem \\
        --username server --password-file ~/.config/threshold-fl/broker-password
    threshold-fl client --manifest manifest.json --identity parties/alice \\
        --broker mqtts://broker.example:8883 --ca-file ca.pem

A client trains the model the manifest names (``threshold-fl manifest --model``), starting
from the weights its data seed gives, on its own part of the digits.

The broker password comes from ``--password-file`` (its first line) or the environment
variable TFL_BROKER_PASSWORD; ``--password`` also works but shows in ``ps`` to every user
of the machine.

Exit codes: 0 the session finished; 1 it aborted or a file or argument was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from protocols import Manifest
from threshold_fl._checks import bounded
from threshold_fl.app.client_plan import CLIENT_FAULTS, ClientPlan
from threshold_fl.app.party import (
    load_party,
    run_aggregator,
    run_client,
    run_key_authority,
)
from threshold_fl.errors import ParameterError, ThresholdFLError
from threshold_fl.identity import Identity
from transports.broker import BrokerConfig
from transports.mqtt import MqttOptions

__all__ = ["PASSWORD_ENV", "aggregator_main", "broker_config", "client_main",
           "key_authority_main", "party_parser", "read_password_file"]

#: The environment variable a broker password may come from (not shown by ``ps``).
PASSWORD_ENV = "TFL_BROKER_PASSWORD"


def party_parser(prog: str, summary: str) -> argparse.ArgumentParser:
    """The options every party command takes: files, broker, credentials, TLS."""
    parser = argparse.ArgumentParser(prog=f"threshold-fl {prog}", description=summary,
                                     epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--identity", type=Path, required=True,
                        help="this party's directory from 'threshold-fl init-party'")
    parser.add_argument("--fingerprint", default=None,
                        help="refuse to run unless the manifest has this fingerprint")
    parser.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    _credential_options(parser)
    parser.add_argument("--ca-file", default=None, help="TLS: CA certificate (mqtts)")
    parser.add_argument("--cert-file", default=None, help="TLS: client certificate")
    parser.add_argument("--key-file", default=None, help="TLS: client key")
    parser.add_argument("--give-up-after", type=bounded(float, 0.1, 86_400.0), default=60.0,
                        metavar="SECONDS",
                        help="leave when the broker stays unreachable this long (default 60)")
    parser.add_argument("--verbose", action="store_true", help="log protocol details")
    return parser


def _credential_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--username", default=None,
                        help="broker username (deploy/mosquitto's ACL wants the party id)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password", default=None,
                        help="broker password; visible to other users in ps: prefer "
                             f"--password-file or the environment variable {PASSWORD_ENV}")
    secret.add_argument("--password-file", type=Path, default=None, metavar="PATH",
                        help="read the broker password from the first line of PATH")


def read_password_file(path: Path) -> str:
    """The first line of *path*, without its line break; ParameterError if there is none."""
    try:
        with path.open(encoding="utf-8") as file:
            line = file.readline()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ParameterError(f"cannot read the password file {path}: {reason}") from None
    password = line.rstrip("\r\n")
    if not password:
        raise ParameterError(f"the password file {path} is empty: put the password on its "
                             "first line")
    return password


def _password(args: argparse.Namespace, environ: Mapping[str, str]
              ) -> tuple[str | None, str]:
    """The broker password and where it came from: --password, then --password-file,
    then the environment (argparse refuses the two options together)."""
    if args.password is not None:
        return args.password, "--password"
    if args.password_file is not None:
        return read_password_file(args.password_file), "--password-file"
    return environ.get(PASSWORD_ENV) or None, PASSWORD_ENV


def broker_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None
                  ) -> BrokerConfig:
    """The parsed options' broker: URL, TLS files and credentials (*environ* defaults to
    ``os.environ``)."""
    password, source = _password(args, os.environ if environ is None else environ)
    if password is not None and args.username is None:
        raise ParameterError(f"{source} gives a broker password but --username is missing")
    return BrokerConfig.from_url(args.broker, username=args.username, password=password,
                                 ca_file=args.ca_file, cert_file=args.cert_file,
                                 key_file=args.key_file)


def _fail(prog: str, error: Exception) -> int:
    print(f"threshold-fl {prog}: {error}", file=sys.stderr)
    return 1


def _run(prog: str, args: argparse.Namespace, work: object) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"{prog}: %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(work)  # type: ignore[arg-type]
    except ThresholdFLError as error:
        return _fail(prog, error)
    except KeyboardInterrupt:
        print(f"threshold-fl {prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def _report_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, default=None,
                        help="append one JSON line per round to this file")


Runner = Callable[[Manifest, Identity, BrokerConfig, MqttOptions], Awaitable[object]]


def _serve(prog: str, args: argparse.Namespace, runner: Runner) -> int:
    """Check the broker options, load the manifest and identity, connect, run *runner*."""
    try:
        broker = broker_config(args)  # a bad password file is refused before any work
    except ThresholdFLError as error:
        return _fail(prog, error)

    async def work() -> None:
        manifest, identity = load_party(args.manifest, args.identity, args.fingerprint)
        await runner(manifest, identity, broker, MqttOptions(give_up_after=args.give_up_after))

    return _run(prog, args, work())


def aggregator_main(argv: Sequence[str] | None = None) -> int:
    parser = party_parser("aggregator", "Run the aggregation server.")
    _report_option(parser)
    parser.add_argument("--trace", type=Path, default=None, metavar="FILE",
                        help="write every message moved (time, type, peer, bytes) to FILE "
                             "as JSON lines, for threshold-fl bench network")
    args = parser.parse_args(argv)
    return _serve("aggregator", args, lambda manifest, identity, broker, options: (
        run_aggregator(manifest, identity, broker, options=options, report=args.report,
                       trace=args.trace)))


def key_authority_main(argv: Sequence[str] | None = None) -> int:
    args = party_parser("key-authority", "Run single-key mode's key authority.").parse_args(argv)
    return _serve("key-authority", args, lambda manifest, identity, broker, options: (
        run_key_authority(manifest, identity, broker, options=options)))


def client_main(argv: Sequence[str] | None = None) -> int:
    parser = party_parser("client", "Run a client: train the manifest's model on its part of "
                                    "the digits each round.")
    parser.add_argument("--epochs", type=bounded(int, 1, 100), default=2)
    parser.add_argument("--lr", type=bounded(float, 1e-6, 10.0), default=0.05)
    parser.add_argument("--batch-size", type=bounded(int, 1, 4096), default=32)
    parser.add_argument("--split", choices=("iid", "dirichlet"), default="iid",
                        help="how the digits are split (the same at every client)")
    parser.add_argument("--alpha", type=bounded(float, 1e-3), default=0.5,
                        help="Dirichlet concentration for --split dirichlet (the same at "
                             "every client)")
    parser.add_argument("--sensitivity-samples", type=bounded(int, 1, 10_000), default=32)
    parser.add_argument("--dp-scale", type=bounded(float, 1e-9), default=None)
    parser.add_argument("--dp-clip", type=bounded(float, 1e-9), default=1.0)
    _report_option(parser)
    parser.add_argument("--save-models", type=Path, default=None, metavar="DIR",
                        help="save each round's global model in DIR as global-round-N.npy")
    parser.add_argument("--drop-at", choices=CLIENT_FAULTS, default=None,
                        help="testing: kill this process (SIGKILL) at this stage; "
                             "decrypt-frozen stops it (SIGSTOP) instead")
    parser.add_argument("--drop-round", type=bounded(int, 1), default=1)
    args = parser.parse_args(argv)

    def client(manifest: Manifest, identity: Identity, broker: BrokerConfig,
               options: MqttOptions) -> Awaitable[object]:
        plan = ClientPlan(epochs=int(args.epochs), learning_rate=args.lr,
                          batch_size=int(args.batch_size), split=args.split, alpha=args.alpha,
                          sensitivity_samples=int(args.sensitivity_samples),
                          dp_scale=args.dp_scale, dp_clip=args.dp_clip, drop_at=args.drop_at,
                          drop_round=int(args.drop_round))
        return run_client(manifest, identity, broker, plan, options=options,
                          report=args.report, save_models=args.save_models)

    return _serve("client", args, client)
