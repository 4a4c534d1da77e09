"""``threshold-fl bench scale``: up to a hundred real parties over a real broker, 30 %
of the clients vanishing across the stages, and the paper's Figure 14a end to end.

For each N (default 10, 25, 50, 100): a private mosquitto, the aggregator in its own OS
process and the N clients packed ``--per-process`` to an OS process
(:mod:`threshold_fl.bench.scale_party`), each client with its own MQTT connection,
identity and state machine.  Threshold mode, t = N // 2 + 1, the library's CKKS
parameters for N, logistic regression on the digits (the top 10 % of the sensitivity
map plus the first and last layers encrypted), ``--rounds`` FedAvg rounds.  A fraction
(``--drop``, 30 %) of the clients vanishes in round 1's stages, in turn: during key
agreement (on the lead's relayed PublicShare, before making its own), before its upload,
on its DecryptRequest (members of the decryption set the aggregator will pick) and after
its upload.  Each shuts its TCP connection without an MQTT DISCONNECT, so the broker
publishes its Last Will.

Checked: the session completes, and every surviving client's decrypted global model of
every round equals plaintext FedAvg of that round's contributors' trained models within
the crypto bound.  Reported per N: join, key agreement (the last, clean attempt: N^2
sealed deliveries relayed; a power law is fitted), mask agreement, each round's
seconds at the aggregator (round 1 with the dropouts; the last round with the survivors
only, the Figure 14a point), a client's bytes per round, the aggregator's bytes, and CPU
seconds and peak memory of the aggregator, the broker and the client processes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from protocols import MaskPolicy, Mode, ModelSpec, make_manifest
from protocols.fusion import choose_set
from protocols.manifest import Manifest, Timeouts
from threshold_fl._checks import bounded
from threshold_fl.app.rounds import RoundRow, read_rows
from threshold_fl.bench.output import print_line, publish_suite, status_mib, suite_error
from threshold_fl.bench.protocol_run import fedavg_bound, fedavg_deviation
from threshold_fl.bench.scale_party import RunSpec
from threshold_fl.errors import ParameterError, ThresholdFLError
from threshold_fl.identity import Identity, PartyId
from transports.broker import MosquittoBroker
from transports.mqtt import MqttOptions

__all__ = ["DROP_ORDER", "ScaleRow", "ScaleRunFailed", "main", "plan_drops", "run_scale"]

DEFAULT_CLIENTS = (10, 25, 50, 100)
DEFAULT_PER_PROCESS = 10
#: The stages a dropped client vanishes in, in turn (see the module docstring).
DROP_ORDER = ("keys", "before-upload", "decrypt", "after-upload")
AGGREGATOR = "server"
#: Stage deadlines: generous, as a slow party dropped at a deadline would change what is
#: measured; every planned dropout is seen through its Last Will within seconds.
TIMEOUTS = Timeouts(join_s=900.0, keys_s=1800.0, upload_s=900.0, decrypt_s=900.0)
MIB = 2**20
#: Messages the aggregator's transport queues for it; more wait unacked at their senders
#: (back-pressure), so its memory does not grow with the N^2 key deliveries it relays.
AGGREGATOR_INBOX = 64


class ScaleRunFailed(ThresholdFLError):
    """A scale run did not complete as planned; the message names the log to read."""


def plan_drops(names: Sequence[str], threshold: int, count: int, round_: int = 1
               ) -> dict[str, str]:
    """*count* clients to vanish in round *round_*, the stages of :data:`DROP_ORDER` in
    turn, spread over the clients (never the first, the key agreement's lead); those
    that vanish on their DecryptRequest are members of the set the aggregator will ask
    once the others are gone (:func:`protocols.fusion.choose_set`)."""
    stages = [DROP_ORDER[index % len(DROP_ORDER)] for index in range(count)]
    others = [stage for stage in stages if stage != "decrypt"]
    pool = list(names[1:])
    spacing = len(pool) / max(1, len(others))
    drops = {pool[int(index * spacing)]: stage for index, stage in enumerate(others)}
    holders = [name for name in names if drops.get(name) != "keys"]
    alive = [PartyId(name) for name in holders if name not in drops]
    members = choose_set([PartyId(name) for name in holders], alive, threshold, round_) or ()
    victims = [member for member in reversed(members) if member != names[0]]
    decrypting = len(stages) - len(others)
    if len(victims) < decrypting or len(alive) - decrypting < threshold:
        raise ParameterError(f"{count} dropouts of {len(names)} clients leave fewer than "
                             f"t = {threshold} to decrypt; drop fewer")
    drops.update({str(victim): "decrypt" for victim in victims[:decrypting]})
    return drops


@dataclass(frozen=True)
class ScaleRow:
    """One run of N clients.  Seconds are the aggregator's wall clock: join (processes
    started to the first KeygenStart), key agreement (the last attempt's KeygenStart to
    KeyAgreed; *key_attempts* counts restarts after a dropout), set-up (first KeygenStart
    to MaskAgreed) and each round (to its RoundCompleted).  Client bytes are payloads per
    recipient (MqttStats), per surviving client in the last round, mean and max."""

    clients: int
    threshold: int
    processes: int
    planned_drops: dict[str, int]
    dropped: int
    contributors: list[int]
    join_s: float
    key_s: float
    key_attempts: int
    setup_s: float
    round_s: list[float]
    client_sent_mean: float
    client_sent_max: int
    client_received_mean: float
    client_received_max: int
    client_first_round_mean: float  # sent + received in round 1, set-up included
    aggregator_sent: int
    aggregator_received: int
    aggregator_cpu_s: float
    aggregator_peak_mib: float
    broker_cpu_s: float
    broker_peak_mib: float
    clients_cpu_s: float
    pack_peak_mib: float
    max_error: float
    error_bound: float
    wall_s: float

    def cells(self) -> list[object]:
        rounds = " / ".join(f"{seconds:.1f}" for seconds in self.round_s)
        planned = sum(self.planned_drops.values())
        return [self.clients, self.threshold, f"{self.dropped} of {planned}",
                f"{self.join_s:.1f}", f"{self.key_s:.1f} ({self.key_attempts})",
                f"{self.setup_s:.1f}", rounds,
                f"{self.client_sent_mean:,.0f} / {self.client_received_mean:,.0f}",
                f"{self.aggregator_sent / MIB:,.0f} / {self.aggregator_received / MIB:,.0f}",
                f"{self.aggregator_cpu_s:.0f} / {self.aggregator_peak_mib:,.0f}",
                f"{self.broker_cpu_s:.0f} / {self.broker_peak_mib:,.0f}",
                f"{self.clients_cpu_s:.0f} / {self.pack_peak_mib:,.0f}",
                f"{self.max_error:.1e} / {self.error_bound:.1e}", f"{self.wall_s:.0f}"]


COLUMNS = ("clients", "t", "dropped", "join s", "keys s (attempts)", "set-up s",
           "round s (1 / ...)", "client B/round sent / recv", "aggregator MiB sent / recv",
           "aggregator CPU s / peak MiB", "broker CPU s / peak MiB",
           "client processes CPU s / peak MiB each", "max error / bound", "wall s")


# -- one run ---------------------------------------------------------------------------
def _prepare(folder: Path, clients: int, rounds: int, seed: int) -> tuple[Manifest, list[str]]:
    names = [f"client-{index:03d}" for index in range(1, clients + 1)]
    identities = {name: Identity.generate(name) for name in [AGGREGATOR, *names]}
    for name, identity in identities.items():
        identity.save(folder / "parties" / name, overwrite=True)
    manifest = make_manifest(
        session=f"bench-scale-{secrets.token_hex(8)}", aggregator=identities[AGGREGATOR].public,
        clients=[identities[name].public for name in names], model=ModelSpec("logreg", seed),
        mode=Mode.THRESHOLD, rounds=rounds, mask=MaskPolicy(0.1, True), timeouts=TIMEOUTS)
    manifest.save(folder / "manifest.json")
    for sub in ("reports", "logs", "figures"):
        (folder / sub).mkdir(exist_ok=True)
    return manifest, names


def _proc_usage(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and peak resident MiB of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = status_mib("VmHWM", pid)
    return cpu_s, float("nan") if peak is None else peak


class _Processes:
    """The party processes of one run, each logging to ``logs/<who>.log``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, who: str, argv: Sequence[str]) -> None:
        log = (self.folder / "logs" / f"{who}.log").open("wb")
        self._logs.append(log)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.running[who] = subprocess.Popen(
            [sys.executable, "-m", "threshold_fl.bench.scale_party", *argv],
            stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait(self, deadline_s: float) -> None:
        ends = time.monotonic() + deadline_s
        try:
            for who, process in self.running.items():
                left = max(0.0, ends - time.monotonic())
                try:
                    code = process.wait(left)
                except subprocess.TimeoutExpired:
                    raise ScaleRunFailed(
                        f"the run did not finish within {deadline_s:.0f} s (--deadline); "
                        f"every party was stopped; see {self.folder / 'logs'}/") from None
                if code != 0:
                    raise ScaleRunFailed(f"{who} exited with status {code}; the end of its "
                                         f"log:\n  " + _tail(self.folder / "logs" / f"{who}.log"))
        finally:
            self.stop()

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()


def _tail(path: Path, lines: int = 8) -> str:
    return "\n  ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def _figures(folder: Path, who: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "figures" / f"{who}.json").read_text())
    return data


def frame_queue_for(clients: int) -> int:
    """Frames a party may have read but not yet handled: room for every sender's full
    window (the aggregator hears from all N at once in key agreement), and their acks.
    With the default 256, frames beyond it were dropped at N = 50 and came again only
    after an ack timeout, costing seconds each."""
    return max(MqttOptions().frame_queue_limit, 2 * MqttOptions().window * (clients + 1))


def run_scale(clients: int, *, out: Path, per_process: int = DEFAULT_PER_PROCESS,
              rounds: int = 2, drop: float = 0.3, epochs: int = 1, seed: int = 0,
              deadline_s: float = 3600.0) -> ScaleRow:
    """One run of *clients* clients (see the module docstring); raises ScaleRunFailed."""
    folder = out / "scale-runs" / f"n{clients:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest, names = _prepare(folder, clients, rounds, seed)
    drops = plan_drops(names, manifest.threshold, round(drop * clients))
    packs = [names[index:index + per_process] for index in range(0, clients, per_process)]
    started = time.time()
    with MosquittoBroker() as broker:
        RunSpec(broker.url, drops, 1, epochs, aggregator_inbox_limit=AGGREGATOR_INBOX,
                frame_queue_limit=frame_queue_for(clients)).save(folder)
        processes = _Processes(folder)
        try:
            processes.start(AGGREGATOR, ["aggregator", str(folder)])
            for pack in packs:
                processes.start(f"pack-{pack[0]}", ["clients", str(folder), *pack])
            processes.wait(deadline_s)
        finally:
            processes.stop()
        assert broker.pid is not None
        broker_cpu_s, broker_peak_mib = _proc_usage(broker.pid)
    wall_s = time.time() - started
    return _row(folder, manifest, names, drops, len(packs), started, wall_s,
                (broker_cpu_s, broker_peak_mib))


def _row(folder: Path, manifest: Manifest, names: list[str], drops: Mapping[str, str],
         processes: int, started: float, wall_s: float, broker: tuple[float, float]
         ) -> ScaleRow:
    server = _figures(folder, "server")
    packs = [_figures(folder, f"pack-{name}") for name in names
             if (folder / "figures" / f"pack-{name}.json").exists()]
    marks = server["marks"]
    contributors = {int(r): members for r, members in server["contributors"].items()}
    if sorted(contributors) != list(range(1, manifest.rounds + 1)):
        raise ScaleRunFailed(f"the aggregator completed rounds {sorted(contributors)}, not "
                             f"1..{manifest.rounds}; see {folder / 'logs'}/")
    survivors = [name for name in names if name not in drops]
    if set(server["dropped"]) != set(drops) or not all(
            reason.startswith("went offline") for reason in server["dropped"].values()):
        raise ScaleRunFailed(f"planned drops {dict(drops)}, each seen through its Last Will; "
                             f"the aggregator dropped {server['dropped']}")
    max_error, bound = _check_models(folder, manifest, names, survivors, contributors)
    last = [_last_row(folder, name, manifest.rounds) for name in survivors]
    first = [read_rows(folder / "reports" / f"{name}.jsonl")[0] for name in survivors]
    ends = [marks["mask"][-1], *marks["rounds"]]
    planned = {stage: sum(1 for s in drops.values() if s == stage) for stage in DROP_ORDER}
    return ScaleRow(
        len(names), manifest.threshold, processes, planned, len(server["dropped"]),
        [len(contributors[r]) for r in sorted(contributors)],
        marks["keygen"][0] - started, marks["keys"][-1] - marks["keygen"][-1],
        len(marks["keygen"]), marks["mask"][-1] - marks["keygen"][0],
        [b - a for a, b in itertools.pairwise(ends)],
        _mean([row.bytes_sent for row in last]), max(row.bytes_sent for row in last),
        _mean([row.bytes_received for row in last]), max(row.bytes_received for row in last),
        _mean([row.bytes_sent + row.bytes_received for row in first]),
        server["bytes_sent"], server["bytes_received"], server["cpu_s"], server["peak_mib"],
        broker[0], broker[1], sum(pack["cpu_s"] for pack in packs),
        max(pack["peak_mib"] for pack in packs), max_error, bound, wall_s)


def _mean(values: Sequence[int]) -> float:
    return sum(values) / len(values)


def _last_row(folder: Path, name: str, rounds: int) -> RoundRow:
    rows = read_rows(folder / "reports" / f"{name}.jsonl")
    if len(rows) != rounds:
        raise ScaleRunFailed(f"{name} completed {len(rows)} of {rounds} rounds; see its "
                             f"pack's log under {folder / 'logs'}/")
    return rows[-1]


def _check_models(folder: Path, manifest: Manifest, names: list[str], survivors: list[str],
                  contributors: Mapping[int, list[str]]) -> tuple[float, float]:
    """Every survivor's global models against plaintext FedAvg of the contributors."""
    import numpy as np

    from threshold_fl.app.federation import client_datasets

    assert manifest.model is not None
    parts, _ = client_datasets(manifest.model.name, len(names), "iid", 0.5,
                               manifest.model.data_seed)
    samples = {name: len(parts[manifest.client_ids.index(PartyId(name))]) for name in names}
    models = folder / "models"
    trained = {r: {c: np.load(models / c / f"trained-round-{r}.npy") for c in members}
               for r, members in contributors.items()}
    results = {c: {r: np.load(models / c / f"global-round-{r}.npy") for r in contributors}
               for c in survivors}
    max_error, largest = fedavg_deviation(contributors, samples, trained, results)
    bound = fedavg_bound(manifest, max(len(m) for m in contributors.values()), largest)
    if not max_error <= bound:
        raise ScaleRunFailed(f"a decrypted model is {max_error:.2e} from plaintext FedAvg "
                             f"of the contributors, beyond the bound {bound:.2e}")
    return max_error, bound


# -- the suite ---------------------------------------------------------------------------
def power_fit(counts: Sequence[int], seconds: Sequence[float]) -> tuple[float, float]:
    """(a, k) of the least-squares fit seconds = a * N^k in log-log space."""
    xs, ys = [math.log(n) for n in counts], [math.log(max(s, 1e-9)) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread
    return math.exp(my - k * mx), k


def _notes(rows: Sequence[ScaleRow], per_process: int) -> str:
    lines = []
    if len(rows) >= 2:
        a, k = power_fit([r.clients for r in rows], [r.key_s for r in rows])
        lines.append(f"Key agreement (the clean attempt) against N fits {a:.3g} * N^{k:.2f} s.")
        first, last = rows[0], rows[-1]
        lines.append(
            f"Aggregator peak memory {first.aggregator_peak_mib:,.0f} MiB at N = "
            f"{first.clients}, {last.aggregator_peak_mib:,.0f} MiB at N = {last.clients} "
            f"({last.aggregator_peak_mib / first.aggregator_peak_mib:.2f}x; goal at most "
            f"1.5x). A surviving client's bytes in the last round: "
            f"{first.client_sent_mean + first.client_received_mean:,.0f} B at N = "
            f"{first.clients}, {last.client_sent_mean + last.client_received_mean:,.0f} B at "
            f"N = {last.clients}.")
    lines.append(
        f"Clients packed {per_process} per OS process, each with its own MQTT connection, "
        "identity and state machine; the aggregator and mosquitto in their own processes; "
        "every process shares this machine's cores. Round 1 holds the dropouts; the last "
        "round runs with the survivors only. Dropped clients shut their TCP connection "
        "without DISCONNECT (the broker's Last Will tells the aggregator). Every surviving "
        "client's global model of every round matched plaintext FedAvg of the round's "
        "contributors within the bound.")
    return "\n\n".join(lines)


def _plot(rows: Sequence[ScaleRow], path: Path, roles: Sequence[Mapping[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    counts = [row.clients for row in rows]
    figure, (times, memory, traffic) = pyplot.subplots(1, 3, figsize=(15, 4.2))
    times.plot(counts, [row.round_s[-1] for row in rows], "o-",
               label="round, end to end over MQTT (survivors)")
    times.plot(counts, [row.round_s[0] for row in rows], "s--",
               label="round 1, with the dropouts")
    times.plot(counts, [row.key_s for row in rows], "^-", label="key agreement")
    if len(rows) >= 2:
        a, k = power_fit(counts, [row.key_s for row in rows])
        grid = [counts[0] + (counts[-1] - counts[0]) * i / 50 for i in range(51)]
        times.plot(grid, [a * n**k for n in grid], ":", label=f"fit {a:.2g} N^{k:.2f}")
    if roles:  # bench clients' per-role figures, one process per role
        role_counts = [int(r["clients"]) for r in roles]
        times.plot(role_counts, [float(r["aggregate_s"]) + float(r["fuse_s"]) for r in roles],
                   "x:", label="per role (bench clients): aggregator")
        times.plot(role_counts, [float(r["encrypt_per_client_s"])
                                 + float(r["share_per_member_s"])
                                 + float(r["decode_per_client_s"]) for r in roles],
                   "+:", label="per role (bench clients): one client")
    times.set_yscale("log")
    times.set_title("seconds against N (Figure 14a)")
    memory.plot(counts, [row.aggregator_peak_mib for row in rows], "o-", label="aggregator")
    memory.plot(counts, [row.broker_peak_mib for row in rows], "s-", label="mosquitto")
    memory.plot(counts, [row.pack_peak_mib for row in rows], "^-",
                label="a client process (peak)")
    memory.set_title("peak resident memory (MiB)")
    traffic.plot(counts, [(r.client_sent_mean + r.client_received_mean) / 1024 for r in rows],
                 "o-", label="a client, last round")
    traffic.plot(counts, [r.client_first_round_mean / 1024 for r in rows], "s--",
                 label="a client, round 1 with set-up")
    traffic.set_yscale("log")
    traffic.set_title("KiB per client (sent + received)")
    for axes in (times, memory, traffic):
        axes.set_xlabel("clients")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _roles(path: Path | None) -> list[dict[str, Any]]:
    """The per-role rows of a ``bench clients`` result (clients.json), if given."""
    if path is None:
        return []
    try:
        rows: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ParameterError(f"--roles {path}: not a 'bench clients' result ({error}); "
                             "give the clients.json that 'threshold-fl bench clients "
                             "--part roles' wrote") from None
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threshold-fl bench scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=bounded(int, 4, 500), nargs="+",
                        default=list(DEFAULT_CLIENTS), metavar="N")
    parser.add_argument("--per-process", type=bounded(int, 1, 100),
                        default=DEFAULT_PER_PROCESS, help="clients per OS process")
    parser.add_argument("--rounds", type=bounded(int, 2, 20), default=2,
                        help="FedAvg rounds (the dropouts are in round 1)")
    parser.add_argument("--drop", type=bounded(float, 0.0, 0.45), default=0.3,
                        help="fraction of the clients that vanish (default %(default)s)")
    parser.add_argument("--epochs", type=bounded(int, 1, 100), default=1)
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--deadline", type=bounded(float, 60.0), default=3600.0,
                        help="seconds before one N's run is stopped (a backstop)")
    parser.add_argument("--roles", type=Path, default=None, metavar="CLIENTS_JSON",
                        help="plot these per-role figures (bench clients' clients.json) "
                             "beside the end-to-end ones")
    parser.add_argument("--replot", type=Path, default=None, metavar="SCALE_JSON",
                        help="run nothing: draw scale.png in --out from an earlier "
                             "scale.json (with --roles, say)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    return parser


def _replot(source: Path, out: Path, roles: Sequence[Mapping[str, Any]]) -> Path:
    try:
        rows = [ScaleRow(**row) for row in json.loads(source.read_text("utf-8"))["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ParameterError(f"--replot {source}: not a 'bench scale' result ({error})"
                             ) from None
    out.mkdir(parents=True, exist_ok=True)
    _plot(rows, out / "scale.png", roles)
    return out / "scale.png"


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that the party processes and the broker are stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.perf_counter()
    rows: list[ScaleRow] = []
    try:
        roles = _roles(args.roles)
        if args.replot is not None:
            print(f"wrote {_replot(args.replot, args.out, roles)}")
            return 0
        print(f"scale: N = {args.clients}, {args.per_process} clients per process, "
              f"{args.drop:.0%} dropped in round 1; party logs under "
              f"{args.out / 'scale-runs'}/", flush=True)
        print_line(COLUMNS)
        for clients in args.clients:
            row = run_scale(clients, out=args.out, per_process=int(args.per_process),
                            rounds=int(args.rounds), drop=float(args.drop),
                            epochs=int(args.epochs), seed=int(args.seed),
                            deadline_s=float(args.deadline))
            print_line(row.cells())
            rows.append(row)
    except (ThresholdFLError, OSError) as error:
        return suite_error("scale", error)
    except KeyboardInterrupt:
        print("threshold-fl bench scale: interrupted", file=sys.stderr)
        return 130
    text = _notes(rows, int(args.per_process))
    publish_suite(args.out, "scale", "Scale: N real parties over mosquitto, 30 % dropped",
                  COLUMNS, rows, {"wall_s": time.perf_counter() - started,
                                  "per_process": args.per_process, "roles": roles},
                  notes=text, headline=text.split("\n")[0],
                  plot=lambda path: _plot(rows, path, roles))
    return 0
