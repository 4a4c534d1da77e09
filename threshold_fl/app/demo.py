"""``threshold-fl demo`` (``make demo``): a whole federation as separate OS processes.

It starts an MQTT broker (a private mosquitto on a free loopback port unless
``--broker`` names one), creates an identity for every party and a manifest, and runs
the aggregator and N clients as ``threshold-fl aggregator`` / ``client`` processes (and
single-key mode's key authority): threshold key agreement, mask agreement from the
clients' sensitivity maps below ``--fraction`` 1 (none by default: everything is
encrypted, the mask is all ones), then FedAvg rounds training a real model on the digits.  The
same federation then runs as plaintext FedAvg with the same seed, the baseline.  It
prints one row per round, a summary (final accuracy against the baseline, HE overhead
in time and bytes) and writes ``report.json`` and ``report.png`` to ``--out``.

    threshold-fl demo                                  # CNN, 3 clients, 3 rounds, all encrypted
    threshold-fl demo --fraction 0.1                   # selective encryption (warns)
    threshold-fl demo --model mlp --rounds 2           # a quick one
    threshold-fl demo --drop-client 3 --at after-upload   # another set decrypts, live

Exit codes: 0 the runs finished; 1 a run failed (the logs say why); 2 bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from protocols import Manifest, MaskPolicy, Mode, ModelSpec, Timeouts, make_manifest
from threshold_fl._checks import add_mask_options, add_model_option, bounded, selective_warning
from threshold_fl.app.client_plan import DROP_STAGES, check_drop_stage
from threshold_fl.app.demo_report import collect_run, print_summary, write_report
from threshold_fl.app.rounds import RunReport, header, setup_words
from threshold_fl.errors import ParameterError, ThresholdFLError
from threshold_fl.identity import Identity
from transports.broker import private_broker

__all__ = ["DemoConfig", "DemoError", "main", "run_demo"]

#: Models whose clients take minutes per round on two cores get longer stage deadlines.
_SLOW_MODELS = ("cnn", "transformer")


class DemoError(ThresholdFLError):
    """A demo run did not finish; the message names the party and its log."""


@dataclass(frozen=True)
class DemoConfig:
    """One demo: the federation's settings and where the report goes."""

    clients: int = 3
    rounds: int = 3
    mode: str = "threshold"
    model: str = "cnn"
    fraction: float = 1.0  # everything encrypted; below 1 is selective (docs/privacy.md)
    first_and_last: bool = True
    epochs: int = 2
    seed: int = 0
    drop_client: int | None = None  # 1-based; the client vanishes (SIGKILL) at drop_at
    drop_at: str = "after-upload"
    drop_round: int = 1
    baseline: bool = True
    save_models: bool = False  # each client saves each round's global model (models/<client>)
    broker: str | None = None
    trace: bool = False  # the aggregator writes server.trace.jsonl (threshold_fl.app.trace)
    out: Path = Path("demo-report")

    def __post_init__(self) -> None:
        from threshold_fl.ml.models import MODELS  # torch

        if self.model not in MODELS:
            raise ParameterError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.mode not in {mode.value for mode in Mode}:
            raise ParameterError(f"unknown mode {self.mode!r}; use one of "
                                 f"{[mode.value for mode in Mode]}")
        if self.drop_at not in DROP_STAGES:
            raise ParameterError(f"--at must be one of {DROP_STAGES}, got {self.drop_at!r}")
        if self.drop_client is not None:
            check_drop_stage(self.drop_at, self.fraction, "--at")
        if self.drop_client is not None and not 1 <= self.drop_client <= self.clients:
            raise ParameterError(f"--drop-client must be in 1..{self.clients} "
                                 f"(clients are numbered from 1), got {self.drop_client}")
        if (self.drop_client is not None and self.mode == Mode.THRESHOLD.value
                and self.clients - 1 < self.clients // 2 + 1):
            raise ParameterError(f"with {self.clients} clients the survivors of a dropout "
                                 "cannot reach the decryption threshold (a majority); use "
                                 "--clients 3 or more")
        if self.drop_round > self.rounds:
            raise ParameterError(f"--drop-round {self.drop_round} is after the last round "
                                 f"({self.rounds})")

    @property
    def timeouts(self) -> Timeouts:
        """Stage deadlines: generous for the work, short enough that a dropout costs
        seconds, not the 10-minute upload default."""
        slow = self.model in _SLOW_MODELS
        return Timeouts(join_s=90.0, keys_s=60.0, upload_s=240.0 if slow else 30.0,
                        decrypt_s=60.0 if slow else 20.0)

    def client_name(self, number: int) -> str:
        # zero-padded so that the manifest's sorted order is the numeric order
        return f"client-{number:0{len(str(self.clients))}d}"


async def _wait_all(processes: dict[str, asyncio.subprocess.Process], deadline_s: float
                    ) -> None:
    async def wait() -> None:
        await asyncio.gather(*(process.wait() for process in processes.values()))

    try:
        await asyncio.wait_for(wait(), deadline_s)
    except asyncio.TimeoutError:
        for process in processes.values():
            if process.returncode is None:
                process.kill()
        await wait()
        raise DemoError(f"the federation did not finish within {deadline_s:.0f} s; "
                        "every party was stopped (see the logs)") from None


class _Federation:
    """One run: the parties' identities, the manifest and the processes."""

    def __init__(self, config: DemoConfig, directory: Path, broker_url: str) -> None:
        self.config, self.directory, self.broker_url = config, directory, broker_url
        self.clients = [config.client_name(n) for n in range(1, config.clients + 1)]
        self.logs = directory / "logs"

    def prepare(self) -> Manifest:
        self.logs.mkdir(parents=True, exist_ok=True)
        for stale in [*self.directory.glob("*.jsonl"), *self.logs.glob("*.log")]:
            stale.unlink()
        names = ["server", *self.clients]
        if self.config.mode == Mode.SINGLE_KEY.value:
            names.append("authority")
        identities = {name: Identity.generate(name) for name in names}
        for name, identity in identities.items():
            identity.save(self.directory / "parties" / name, overwrite=True)
        manifest = make_manifest(
            session=f"demo-{secrets.token_hex(8)}",  # fresh per run: no cross-run replay
            aggregator=identities["server"].public,
            clients=[identities[name].public for name in self.clients],
            key_authority=identities["authority"].public if "authority" in identities else None,
            model=ModelSpec(self.config.model, self.config.seed), mode=self.config.mode,
            rounds=self.config.rounds, timeouts=self.config.timeouts,
            mask=MaskPolicy(self.config.fraction, self.config.first_and_last))
        manifest.save(self.directory / "manifest.json")
        return manifest

    def argv(self, party: str) -> list[str]:
        role = {"server": "aggregator", "authority": "key-authority"}.get(party, "client")
        argv = [sys.executable, "-m", "threshold_fl.app.cli", role,
                "--manifest", str(self.directory / "manifest.json"),
                "--identity", str(self.directory / "parties" / party),
                "--broker", self.broker_url]
        if role != "key-authority":
            argv += ["--report", str(self.directory / f"{party}.jsonl")]
        if role == "aggregator" and self.config.trace:
            argv += ["--trace", str(self.directory / f"{party}.trace.jsonl")]
        if role == "client":
            argv += ["--epochs", str(self.config.epochs)]
            if self.config.save_models:
                argv += ["--save-models", str(self.directory / "models" / party)]
            if self.clients.index(party) + 1 == self.config.drop_client:
                argv += ["--drop-at", self.config.drop_at,
                         "--drop-round", str(self.config.drop_round)]
        return argv

    async def run(self, progress: _Progress) -> RunReport:
        manifest = self.prepare()
        parties = ["server", *self.clients]
        if manifest.key_authority is not None:
            parties.append("authority")
        started = time.perf_counter()
        processes = {}
        with contextlib.ExitStack() as files:
            for party in parties:
                log = files.enter_context((self.logs / f"{party}.log").open("wb"))
                processes[party] = await asyncio.create_subprocess_exec(
                    *self.argv(party), stdout=log, stderr=asyncio.subprocess.STDOUT)
            watcher = asyncio.create_task(progress.watch(self.directory / "server.jsonl"))
            try:
                await _wait_all(processes, self._deadline_s(manifest))
            finally:
                watcher.cancel()
        seconds = time.perf_counter() - started
        self._check_exits({party: p.returncode for party, p in processes.items()})
        return collect_run(self.directory, parties, seconds)

    def _deadline_s(self, manifest: Manifest) -> float:
        """A backstop only: the parties enforce the manifest's deadlines themselves."""
        timeouts = manifest.timeouts
        per_round = timeouts.upload_s + 2 * timeouts.decrypt_s
        setup = timeouts.join_s + 2 * timeouts.keys_s + per_round
        return setup + manifest.rounds * per_round + 60.0

    def _check_exits(self, codes: dict[str, int | None]) -> None:
        dropped = (None if self.config.drop_client is None
                   else self.clients[self.config.drop_client - 1])
        for party, code in codes.items():
            if party == dropped and code == -9:
                continue  # it vanished as scripted
            if code != 0:
                log = self.logs / f"{party}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-8:]
                raise DemoError(f"{party} exited with status {code}; the end of {log}:\n  "
                                + "\n  ".join(tail))


class _Progress:
    """Round-by-round progress from the aggregator's report: a bar on a terminal, a
    line per round otherwise (CI logs)."""

    def __init__(self, label: str, rounds: int, setup: str) -> None:
        self.label, self.rounds = label, rounds
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=rounds, desc=f"{label}: {setup}", unit="round", leave=False)
        else:
            print(f"{label}: starting the parties; {setup} first", flush=True)

    async def watch(self, report: Path) -> None:
        from threshold_fl.app.rounds import read_rows

        seen, started = 0, time.perf_counter()
        while True:
            await asyncio.sleep(0.25)
            with contextlib.suppress(ThresholdFLError, OSError):  # a line half-written
                done = len(read_rows(report))
                for round_ in range(seen + 1, done + 1):
                    self._advance(round_, time.perf_counter() - started)
                seen = max(seen, done)

    def _advance(self, round_: int, elapsed: float) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.label}: round {min(round_ + 1, self.rounds)}")
            self.bar.update(1)
        else:
            print(f"{self.label}: round {round_}/{self.rounds} aggregated at {elapsed:.0f} s",
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.asynccontextmanager
async def _broker(url: str | None) -> AsyncIterator[str]:
    if url is not None:
        yield url
        return
    async with private_broker() as private_url:
        yield private_url


async def run_demo(config: DemoConfig) -> list[RunReport]:
    """The configured run and, unless it is plaintext or ``baseline`` is off, the
    plaintext-FedAvg run with the same seed (and the same scripted dropout)."""
    runs = [config]
    if config.baseline and config.mode != Mode.PLAINTEXT.value:
        runs.append(replace(config, mode=Mode.PLAINTEXT.value))
    results = []
    async with _broker(config.broker) as url:
        print(f"broker: {url}" + (" (private, stopped at the end)" if config.broker is None
                                  else ""), flush=True)
        for run in runs:
            progress = _Progress(run.mode, run.rounds, setup_words(run.fraction))
            try:
                result = await _Federation(run, config.out / run.mode, url).run(progress)
            finally:
                progress.close()
            print(f"\n{run.mode}: {result.parameters:,} parameters, {run.clients} clients")
            print(header())
            for row in result.rounds:
                print(row.line())
            print(flush=True)
            results.append(result)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threshold-fl demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=bounded(int, 2, 20), default=3)
    parser.add_argument("--rounds", type=bounded(int, 1, 100), default=3)
    parser.add_argument("--mode", choices=[mode.value for mode in Mode], default="threshold")
    add_model_option(parser)
    add_mask_options(parser)
    parser.add_argument("--epochs", type=bounded(int, 1, 100), default=2)
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--drop-client", type=bounded(int, 1), default=None, metavar="K",
                        help="client K (from 1) vanishes with SIGKILL at --at")
    parser.add_argument("--at", choices=DROP_STAGES, default="after-upload",
                        help="when --drop-client vanishes (default: after-upload)")
    parser.add_argument("--drop-round", type=bounded(int, 1), default=1)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the plaintext FedAvg run")
    parser.add_argument("--broker", default=None,
                        help="mqtt://host:port of a broker to use (default: a private one)")
    parser.add_argument("--out", type=Path, default=Path("demo-report"),
                        help="report folder (default: demo-report)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = DemoConfig(
            clients=int(args.clients), rounds=int(args.rounds), mode=args.mode,
            model=args.model, fraction=args.fraction, first_and_last=not args.no_first_last,
            epochs=int(args.epochs), seed=int(args.seed), drop_client=args.drop_client,
            drop_at=args.at, drop_round=int(args.drop_round), baseline=not args.no_baseline,
            broker=args.broker, out=args.out)
        warning = selective_warning(config.fraction, config.mode)
        if warning is not None:
            print(warning, file=sys.stderr, flush=True)
        results = asyncio.run(run_demo(config))
        paths = write_report(config, results)
    except (ThresholdFLError, OSError) as error:
        print(f"threshold-fl demo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("threshold-fl demo: interrupted", file=sys.stderr)
        return 130
    print_summary(config, results, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
