"""``threshold-fl bench clients``, the whole-protocol part: a client's bytes per round
against N, the issue's goal being that they stay constant (within 10 %) from N = 3 to 50.

For each N, :func:`threshold_fl.bench.protocol_run.run_protocol` runs the real protocol
end to end in one process over the in-memory hub (not MQTT): N FederatedClient nodes
and the Aggregator node, threshold mode with the library's default t = N // 2 + 1 and
parameters for N, key agreement, mask agreement (the benchmarks' selective encryption:
top 10 % plus the first and last layers; the demo's default, fraction 1,
has no mask agreement), then FedAvg rounds, every client
training a small model (LeNet on 16x16 digits by default) with torch.  Bytes are the
encoded messages, once per recipient (as the MQTT transport's stats count payloads).
Per round, the decryption set's members (they download c1 and upload a share) and the
other clients are reported apart; every decrypted model is checked against plaintext
FedAvg of the clients' trained models.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from threshold_fl._checks import bounded
from threshold_fl.bench.output import print_line, publish_suite
from threshold_fl.bench.protocol_run import AGGREGATOR, ProtocolRun, run_protocol
from threshold_fl.ml.models import MODELS
from transports import PartyTraffic

__all__ = ["DEFAULT_CLIENTS", "GOAL", "ProtocolRow", "add_protocol_options", "measure",
           "run_part"]

DEFAULT_CLIENTS = (3, 5, 10, 20, 50)
DEFAULT_ROUNDS = 2
QUICK_CLIENTS, QUICK_ROUNDS = (3, 5), 1
DEFAULT_MODEL = "lenet"
GOAL = 1.10  # the largest over the smallest per-round bytes of a client, across N
MIB = 2**20


def _spread(values: Sequence[int]) -> tuple[float, int]:
    return (statistics.fmean(values), max(values)) if values else (0.0, 0)


@dataclass(frozen=True)
class ProtocolRow:
    """One whole-protocol run of N clients.  Per-round figures are per client and
    round, mean and max over every (round, client) pair of the group; set-up is key
    and mask agreement."""

    clients: int
    threshold: int
    rounds: int
    model: str
    parameters: int
    encrypted_values: int
    setup_sent_mean: float
    setup_sent_max: int
    setup_received_mean: float
    setup_received_max: int
    member_sent_mean: float
    member_sent_max: int
    member_received_mean: float
    member_received_max: int
    member_total_max: int  # the heaviest member's sent + received in one round
    other_sent_mean: float
    other_sent_max: int
    other_received_mean: float
    other_received_max: int
    other_total_max: int
    members_per_round: float  # clients that received c1, mean over rounds
    others_with_c1: int  # non-members that received c1, over all rounds (0)
    aggregator_setup_sent: int
    aggregator_setup_received: int
    aggregator_round_sent: float  # mean over rounds
    aggregator_round_received: float
    key_s: float
    mask_s: float
    round_s: float  # mean over rounds
    wall_s: float
    max_error: float
    error_bound: float
    #: mean bytes (sent + received) per member / other client per round, per message type
    member_kinds: dict[str, float] = field(default_factory=dict)
    other_kinds: dict[str, float] = field(default_factory=dict)
    setup_kinds: dict[str, float] = field(default_factory=dict)  # per client, mean

    def cells(self) -> list[object]:
        def pair(mean: float, most: int) -> str:
            return f"{mean:,.0f} ({most:,})"
        return [str(self.clients), str(self.threshold),
                f"{self.encrypted_values:,}/{self.parameters:,}",
                f"{self.setup_sent_mean / MIB:.2f} ({self.setup_sent_max / MIB:.2f})",
                f"{self.setup_received_mean / MIB:.2f} ({self.setup_received_max / MIB:.2f})",
                pair(self.member_sent_mean, self.member_sent_max),
                pair(self.member_received_mean, self.member_received_max),
                pair(self.other_sent_mean, self.other_sent_max),
                pair(self.other_received_mean, self.other_received_max),
                f"{self.aggregator_round_sent / MIB:.2f} / "
                f"{self.aggregator_round_received / MIB:.2f}",
                f"{self.key_s + self.mask_s:.1f}", f"{self.round_s:.2f}",
                f"{self.max_error:.1e} / {self.error_bound:.1e}"]


COLUMNS = ("clients", "t", "encrypted", "set-up sent MiB/client", "set-up recv MiB/client",
           "member sent B/round", "member recv B/round", "other sent B/round",
           "other recv B/round", "aggregator sent / recv MiB/round", "set-up s", "round s",
           "max error / bound")


def _kinds(run: ProtocolRun, pairs: Sequence[tuple[int, str]]) -> dict[str, float]:
    totals: dict[str, int] = {}
    for round_, client in pairs:
        for kind, traffic in run.traffic.by_kind(client, round_).items():
            totals[kind] = totals.get(kind, 0) + traffic.sent_bytes + traffic.received_bytes
    return {kind: total / len(pairs) for kind, total in sorted(totals.items())} if pairs else {}


def _setup_kinds(run: ProtocolRun) -> dict[str, float]:
    totals: dict[str, int] = {}
    for client in run.clients:
        for label, traffic in run.traffic.by_party[client].items():
            if label.startswith("setup:"):
                kind = label.split(":", 2)[2]
                totals[kind] = totals.get(kind, 0) + traffic.sent_bytes + traffic.received_bytes
    return {kind: total / len(run.clients) for kind, total in sorted(totals.items())}


def row_of(run: ProtocolRun, model: str) -> ProtocolRow:
    """The figures of one run (see :class:`ProtocolRow`)."""
    traffic, clients = run.traffic, run.clients
    rounds = range(1, run.manifest.rounds + 1)
    members = {r: traffic.members(r, clients) for r in rounds}
    member_pairs = [(r, c) for r in rounds for c in members[r]]
    other_pairs = [(r, c) for r in rounds for c in clients if c not in members[r]]

    def per_round(pairs: Sequence[tuple[int, str]]) -> list[PartyTraffic]:
        return [traffic.round(c, r) for r, c in pairs]

    member, other = per_round(member_pairs), per_round(other_pairs)
    setup = [traffic.setup(c) for c in clients]
    aggregator = [traffic.round(AGGREGATOR, r) for r in rounds]
    c1_label = "round:{}:DecryptRequest"
    others_with_c1 = sum(traffic.by_party[c].get(c1_label.format(r), PartyTraffic()).received
                         for r, c in other_pairs)
    return ProtocolRow(
        len(clients), run.manifest.threshold, run.manifest.rounds, model,
        run.manifest.model_length, run.encrypted_values,
        *_spread([t.sent_bytes for t in setup]), *_spread([t.received_bytes for t in setup]),
        *_spread([t.sent_bytes for t in member]), *_spread([t.received_bytes for t in member]),
        max((t.sent_bytes + t.received_bytes for t in member), default=0),
        *_spread([t.sent_bytes for t in other]), *_spread([t.received_bytes for t in other]),
        max((t.sent_bytes + t.received_bytes for t in other), default=0),
        statistics.fmean(len(m) for m in members.values()), others_with_c1,
        traffic.setup(AGGREGATOR).sent_bytes, traffic.setup(AGGREGATOR).received_bytes,
        statistics.fmean(t.sent_bytes for t in aggregator),
        statistics.fmean(t.received_bytes for t in aggregator),
        run.key_s, run.mask_s, statistics.fmean(run.round_s), run.wall_s,
        run.max_error, run.error_bound, _kinds(run, member_pairs), _kinds(run, other_pairs),
        _setup_kinds(run))


def measure(clients: int, rounds: int, *, model: str = DEFAULT_MODEL, seed: int = 0
            ) -> ProtocolRow:
    """The whole protocol at ``clients`` clients for ``rounds`` rounds, as a row."""
    return row_of(run_protocol(clients, rounds, model=model, seed=seed), model)


# -- the goal and what grows -----------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """Across N: the largest over the smallest per-round bytes of the heaviest member
    and of the heaviest other client."""

    member_ratio: float
    other_ratio: float

    @property
    def holds(self) -> bool:
        return self.member_ratio <= GOAL and self.other_ratio <= GOAL


def verdict(rows: Sequence[ProtocolRow]) -> Verdict:
    def ratio(values: list[int]) -> float:
        values = [v for v in values if v > 0]
        return max(values) / min(values) if values else 1.0
    return Verdict(ratio([row.member_total_max for row in rows]),
                   ratio([row.other_total_max for row in rows]))


def growth(first: dict[str, float], last: dict[str, float]) -> list[tuple[str, float]]:
    """Message types whose mean bytes per client grew from ``first`` to ``last``,
    largest growth first."""
    grown = [(kind, last[kind] - first.get(kind, 0.0)) for kind in last]
    return sorted([(kind, delta) for kind, delta in grown if delta > 0],
                  key=lambda item: -item[1])


def _growth_text(what: str, first: ProtocolRow, last: ProtocolRow,
                 kinds: Callable[[ProtocolRow], dict[str, float]], unit: float = 1.0,
                 unit_name: str = "B") -> str:
    digits = 0 if unit == 1 else 2
    grown = [(kind, delta) for kind, delta in growth(kinds(first), kinds(last))
             if round(delta / unit, digits) > 0]
    if not grown:
        return f"{what}: no message type grew from N = {first.clients} to {last.clients}."
    listed = ", ".join(f"{kind} +{delta / unit:,.{digits}f} {unit_name}"
                       for kind, delta in grown)
    return f"{what}, from N = {first.clients} to {last.clients}: {listed}."


def notes(rows: Sequence[ProtocolRow], wall_s: float) -> str:
    first, last = rows[0], rows[-1]
    judged = verdict(rows)
    span = f"N = {first.clients} to {last.clients}"
    headline = (
        f"Per-round bytes of a client, {span}: the heaviest member of the decryption set "
        f"{first.member_total_max:,} to {last.member_total_max:,} B (max/min across N "
        f"{judged.member_ratio:.3f}), the heaviest other client {first.other_total_max:,} "
        f"to {last.other_total_max:,} B ({judged.other_ratio:.3f}): the goal (within "
        f"{GOAL - 1:.0%}) {'holds' if judged.holds else 'does NOT hold'}.")
    members_list = (
        "DecryptRequest, DecryptionShare and Fused each carry the decryption set's member "
        f"list, t party ids (t = {first.threshold} to {last.threshold}), the only field of "
        "a round's messages that depends on N. A group's mean also moves with which "
        "clients fall in it: one client's upload can differ from another's by a few tens "
        "of bytes.")
    return "\n\n".join([
        headline,
        _growth_text("What grows per member and round", first, last,
                     lambda row: row.member_kinds) + " "
        + _growth_text("Per other client and round", first, last,
                       lambda row: row.other_kinds) + " " + members_list,
        f"Set-up (key and mask agreement) per client grows with N: "
        f"{first.setup_sent_mean / MIB:.2f} MiB sent and "
        f"{first.setup_received_mean / MIB:.2f} MiB received at N = {first.clients}, "
        f"{last.setup_sent_mean / MIB:.2f} and {last.setup_received_mean / MIB:.2f} MiB at "
        f"N = {last.clients}. "
        + _growth_text("By message type (sent + received)", first, last,
                       lambda row: row.setup_kinds, MIB, "MiB"),
        f"Measured: the whole protocol in one process over the in-memory hub (not MQTT): "
        f"N real FederatedClient nodes and the Aggregator node, threshold mode (t = N // 2 "
        f"+ 1), key agreement, mask agreement and {first.rounds} FedAvg round(s) of "
        f"{first.model} ({first.parameters:,} parameters, {first.encrypted_values:,} "
        f"encrypted: top 10 % of the sensitivity map plus the first and last layers) on "
        f"the digits. Bytes: each encoded message once per recipient (MQTT's chunk "
        f"headers and acks not included). Member: a client that received c1 in that "
        f"round; mean (max) over every (round, client) pair. Every client's decrypted "
        f"model matched plaintext FedAvg within the bound. Seconds (set-up: key and mask "
        f"agreement; round: the mean, at the aggregator) leave out building the CKKS "
        f"context, which all parties share in one process, and a warm-up run of 3 clients "
        f"before the first N (first calls into torch and OpenFHE); every party shares this "
        f"machine's cores. Whole run: {wall_s:,.0f} s.",
    ])


def _plot(rows: Sequence[ProtocolRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    counts = [row.clients for row in rows]
    figure, (per_round, setup) = pyplot.subplots(1, 2, figsize=(11, 4))
    for label, values in (
            ("member: sent + received", [r.member_sent_mean + r.member_received_mean
                                         for r in rows]),
            ("member: sent", [r.member_sent_mean for r in rows]),
            ("member: received", [r.member_received_mean for r in rows]),
            ("other client: sent + received", [r.other_sent_mean + r.other_received_mean
                                               for r in rows]),
            ("other client: sent", [r.other_sent_mean for r in rows]),
            ("other client: received", [r.other_received_mean for r in rows])):
        per_round.plot(counts, [v / 1024 for v in values], "o-", label=label)
    per_round.set_ylim(0, max(r.member_total_max for r in rows) / 1024 * 1.6)
    per_round.set_title("bytes per client per round (KiB)")
    setup.plot(counts, [r.setup_sent_mean / MIB for r in rows], "o-", label="sent")
    setup.plot(counts, [r.setup_received_mean / MIB for r in rows], "o-", label="received")
    setup.set_title("set-up bytes per client (MiB): key and mask agreement")
    for axes in (per_round, setup):
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ticker.ScalarFormatter())
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
        axes.set_xticks(counts)
        axes.set_xlabel("clients")
        axes.grid(True, which="both", alpha=0.3)
    per_round.legend(fontsize="small", ncol=2, loc="upper center")
    setup.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


# -- the command line ------------------------------------------------------------------
def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    """The options of the whole-protocol part."""
    parser.add_argument("--protocol-clients", type=bounded(int, 2, 1000), nargs="+",
                        default=list(DEFAULT_CLIENTS), metavar="N",
                        help="client counts of the whole-protocol part (default: %(default)s)")
    parser.add_argument("--protocol-rounds", type=bounded(int, 1, 1000), default=DEFAULT_ROUNDS,
                        help="FedAvg rounds after set-up (default %(default)s)")
    parser.add_argument("--protocol-model", choices=sorted(MODELS), default=DEFAULT_MODEL,
                        help="the model every client trains (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the whole-protocol part only, N = "
                             f"{', '.join(map(str, QUICK_CLIENTS))}, {QUICK_ROUNDS} round")


def run_part(args: argparse.Namespace) -> list[ProtocolRow]:
    """Run and publish the whole-protocol part (``clients-protocol.md``, ``.json``,
    ``.png``); raises ThresholdFLError if a run fails."""
    started = time.perf_counter()
    counts = sorted(set(QUICK_CLIENTS if args.quick else args.protocol_clients))
    rounds = QUICK_ROUNDS if args.quick else args.protocol_rounds
    print("\nthe whole protocol, in one process over the in-memory hub (after an untimed "
          "warm-up run):", flush=True)
    run_protocol(3, 1, model="logreg", seed=args.seed)  # first calls, JIT: not in the figures
    print_line(COLUMNS)
    rows = []
    for clients in counts:
        row = measure(clients, rounds, model=args.protocol_model, seed=args.seed)
        print_line(row.cells())
        rows.append(row)
    wall_s = time.perf_counter() - started
    text = notes(rows, wall_s)
    judged = verdict(rows)
    publish_suite(args.out, "clients-protocol",
                  f"Clients: the whole protocol, bytes per client against N "
                  f"({args.protocol_model}, {rounds} round(s))",
                  COLUMNS, rows, {"goal": GOAL, "member_ratio": judged.member_ratio,
                                  "other_ratio": judged.other_ratio, "goal_holds": judged.holds,
                                  "wall_s": wall_s},
                  notes=text, headline=text.split("\n")[0],
                  plot=lambda path: _plot(rows, path))
    return rows
