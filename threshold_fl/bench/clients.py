"""``threshold-fl bench clients``: two parts (``--part``, default both).

**The whole protocol** (:mod:`threshold_fl.bench.clients_protocol`): for N = 3, 5, 10,
20, 50, the real protocol end to end (key agreement, mask agreement, FedAvg rounds)
with N FederatedClient nodes and the Aggregator node in one process over the in-memory
hub, a small model trained with torch; per N, each client's bytes for set-up and per
round (members of the decryption set and the others apart), the aggregator's bytes and
seconds, and whether a client's bytes per round stay within 10 % across N.
``--quick``: this part only, N = 3 and 5, one round.

**Per role** on the paper's CNN vector (1,663,370 values; the FedML-HE paper's Figure
14a), 2 to 200 clients: seconds per step and the aggregator's peak memory, which must
stay flat in N (it streams every upload into one running sum). For each N, one threshold
round with keys for N parties (noise flooding on, the library's default parameters for
N), every role in its own OS process (:mod:`threshold_fl.bench.roles`, run by
:mod:`threshold_fl.bench.runner`), FedAvg weights 1/N. What is real and what is reused:

- **aggregation is real for all N uploads**: the aggregator's process streams N upload
  files into the sum.  Encrypting 200 distinct vectors would dominate the run, so only a
  pool of ``--pool`` distinct uploads is encrypted per N and the aggregator is fed them
  round-robin: its work per upload (structural check, modular sum) does not depend on the values;
- **decryption is real**, by blind fusion as the protocol does it: the t = N // 2 + 1
  members of the decryption set each make their masked shares, the aggregator fuses
  them with c0 and one client removes the pad and decodes (every client does the
  same), on the first ``--decrypt-ciphertexts`` ciphertexts of the aggregate (0: all of
  them); every decoded value is checked against the exact weighted average.
  Per-ciphertext work is independent, so the share, fusion and decoding seconds are
  scaled to the whole aggregate (the table says by how much).  The aggregator's split
  of the aggregate into c0 and the members' c1 frames always covers all of it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from threshold_fl._checks import bounded
from threshold_fl.bench import clients_protocol
from threshold_fl.bench.output import (
    add_role_options,
    print_line,
    progress_for,
    publish_suite,
    suite_error,
)
from threshold_fl.bench.peers import CNN_LENGTH
from threshold_fl.bench.roles import Upload
from threshold_fl.bench.runner import HeRound, baseline_peak_mib, run_he_round, threads_note
from threshold_fl.crypto import MAX_VECTOR_LENGTH, threshold_params
from threshold_fl.errors import ThresholdFLError

__all__ = ["ClientsRow", "main", "measure"]

DEFAULT_CLIENTS = (2, 5, 10, 20, 50, 100, 200)
DEFAULT_POOL = 3
DEFAULT_DECRYPT_CIPHERTEXTS = 16
SLOW_CLIENTS = 20  # from here on, say what is running before each role


@dataclass(frozen=True)
class ClientsRow:
    """One round of N clients."""

    clients: int
    values: int
    distinct_uploads: int
    encrypt_per_client_s: float  # mean over the distinct uploads
    aggregate_s: float  # all N uploads, at the server
    aggregate_per_upload_s: float
    members: int  # t, the decryption set's size
    share_per_member_s: float  # mean over the t members, whole aggregate
    fuse_s: float  # the aggregator's split and fusion, whole aggregate
    decode_per_client_s: float  # whole aggregate
    decrypted_fraction: float  # of the aggregate's ciphertexts really decrypted
    aggregator_mib: float
    baseline_mib: float
    max_error: float
    error_bound: float
    wall_s: float

    def cells(self) -> list[object]:
        return [str(self.clients), f"{self.encrypt_per_client_s:.2f}",
                f"{self.aggregate_s:.2f}", f"{self.aggregate_per_upload_s:.3f}",
                str(self.members), f"{self.share_per_member_s:.2f}", f"{self.fuse_s:.2f}",
                f"{self.decode_per_client_s:.2f}",
                f"{self.decrypted_fraction:.0%}", f"{self.aggregator_mib:,.0f}",
                f"{self.max_error:.1e}", f"{self.error_bound:.1e}"]


COLUMNS = ("clients", "encrypt/client s", "aggregate s", "aggregate/upload s", "t",
           "share/member s", "fuse s", "decode/client s", "decrypted", "aggregator MiB",
           "max error", "error bound")


def _row(he: HeRound, baseline_mib: float) -> ClientsRow:
    scale = he.ciphertexts / he.decrypted_ciphertexts
    return ClientsRow(
        he.parties, he.length, he.distinct_uploads, sum(he.encrypt_s) / len(he.encrypt_s),
        he.aggregate_s, he.aggregate_s / he.parties, he.members,
        scale * sum(he.share_s) / len(he.share_s), he.split_s + scale * he.fuse_s,
        scale * he.decode_s,
        he.decrypted_ciphertexts / he.ciphertexts, he.peak_mib["aggregate"], baseline_mib,
        he.max_error, he.error_bound, he.wall_s)


def measure(clients: int, length: int, *, pool: int, decrypt_ciphertexts: int | None,
            seed: int, baseline_mib: float, threads: int = 1,
            progress: Callable[[str], None] | None = None) -> ClientsRow:
    """One round of ``clients`` parties fed round-robin from ``pool`` distinct uploads."""
    uploads = [Upload(index % pool, 1.0 / clients) for index in range(clients)]
    with tempfile.TemporaryDirectory(prefix="threshold-fl-bench-clients-") as scratch:
        he = run_he_round(threshold_params(clients), uploads, length, seed, Path(scratch),
                          process_per_client=False, decrypt_ciphertexts=decrypt_ciphertexts,
                          threads=threads, progress=progress)
    return _row(he, baseline_mib)


def _plot(rows: Sequence[ClientsRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    counts = [row.clients for row in rows]
    figure, (steps, memory) = pyplot.subplots(1, 2, figsize=(11, 4))
    for label, seconds in (
            ("encrypt, per client", [row.encrypt_per_client_s for row in rows]),
            ("aggregate, at the server", [row.aggregate_s for row in rows]),
            ("share, per member", [row.share_per_member_s for row in rows]),
            ("fuse, at the server", [row.fuse_s for row in rows]),
            ("decode, per client", [row.decode_per_client_s for row in rows])):
        steps.plot(counts, seconds, "o-", label=label)
    steps.set_yscale("log")
    steps.set_title(f"seconds per step, {rows[0].values:,} values")
    memory.plot(counts, [row.aggregator_mib for row in rows], "o-", label="aggregator process")
    memory.axhline(rows[0].baseline_mib, linestyle="--", color="grey",
                   label="baseline (imports only)")
    memory.set_ylim(0, max(row.aggregator_mib for row in rows) * 1.3)
    memory.set_title("aggregator peak resident memory (MiB)")
    for axes in (steps, memory):
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ticker.ScalarFormatter())
        axes.set_xticks(counts)
        axes.set_xlabel("clients")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _notes(rows: Sequence[ClientsRow], pool: int, threads: int, wall_s: float) -> str:
    fewest, most = rows[0], rows[-1]
    headline = (f"The aggregator's process peaks at {fewest.aggregator_mib:,.0f} MiB for "
                f"{fewest.clients} clients and {most.aggregator_mib:,.0f} MiB for "
                f"{most.clients} ({most.aggregator_mib / fewest.aggregator_mib:.2f}x); a process "
                f"that only imports NumPy, OpenFHE and the crypto layer peaks at "
                f"{fewest.baseline_mib:,.0f} MiB.")
    fraction = ", ".join(sorted({f"{row.decrypted_fraction:.0%}" for row in rows}))
    return "\n\n".join([
        headline,
        f"Measured: the aggregation of all N uploads (the aggregator's process streams N "
        f"upload files into the running sum); decryption by blind fusion: the shares of "
        f"the t = N // 2 + 1 members of the decryption set, the aggregator's fusion and "
        f"one client's decoding (every client does the same), on {fraction} of the "
        f"aggregate's ciphertexts, with their seconds scaled linearly to the whole "
        f"aggregate (fuse s adds the aggregator's split of the whole aggregate into c0 "
        f"and c1); every decoded value checked against the exact weighted average "
        f"(within the error bound in {sum(row.max_error <= row.error_bound for row in rows)}"
        f" of {len(rows)} rounds).",
        f"Reused: only min(N, {pool}) distinct uploads are encrypted per N (encrypt/client "
        f"is their mean) and fed to the aggregator round-robin; its work per upload "
        f"(structural check, modular sum) does not depend on the values.",
        f"Seconds leave out file I/O; every role ran in its own process, one at a time, "
        f"with {threads_note(threads)}. Whole run: {wall_s:,.0f} s.",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threshold-fl bench clients", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients-list", type=bounded(int, 2, 1000), nargs="+",
                        default=list(DEFAULT_CLIENTS), metavar="N",
                        help="client counts, one round each (default: %(default)s)")
    parser.add_argument("--length", type=bounded(int, 1, MAX_VECTOR_LENGTH), default=CNN_LENGTH,
                        help="values per client (default: the paper's CNN, %(default)s)")
    parser.add_argument("--pool", type=bounded(int, 1, 1000), default=DEFAULT_POOL,
                        help="distinct uploads encrypted per N (default %(default)s)")
    parser.add_argument("--decrypt-ciphertexts", type=bounded(int, 0),
                        default=DEFAULT_DECRYPT_CIPHERTEXTS,
                        help="aggregate ciphertexts every member of the decryption set "
                             "decrypts (0: all; default %(default)s)")
    parser.add_argument("--part", choices=("both", "protocol", "roles"), default=None,
                        help="the whole protocol, the per-role rounds or both (default both; "
                             "protocol with --quick)")
    clients_protocol.add_protocol_options(parser)
    add_role_options(parser, "clients", "the client values")
    args = parser.parse_args(argv)
    part = args.part or ("protocol" if args.quick else "both")
    if part != "roles":
        try:
            clients_protocol.run_part(args)
        except ThresholdFLError as error:
            return suite_error("clients", error)
    if part == "protocol":
        return 0
    print("\nper role, one process each:", flush=True)
    counts = sorted(set(args.clients_list))
    started = time.perf_counter()
    rows: list[ClientsRow] = []
    try:
        baseline = baseline_peak_mib(args.threads)
        print_line(COLUMNS)
        for clients in counts:
            slow = clients >= SLOW_CLIENTS
            row = measure(clients, args.length, pool=args.pool,
                          decrypt_ciphertexts=args.decrypt_ciphertexts or None, seed=args.seed,
                          baseline_mib=baseline, threads=args.threads,
                          progress=progress_for(f"{clients} clients") if slow else None)
            print_line(row.cells())
            rows.append(row)
    except ThresholdFLError as error:
        return suite_error("clients", error)
    wall_s = time.perf_counter() - started
    notes = _notes(rows, args.pool, args.threads, wall_s)
    publish_suite(args.out, "clients",
                  f"Clients: time per step and aggregator memory, {args.length:,} values",
                  COLUMNS, rows, {"pool": args.pool,
                                  "decrypt_ciphertexts": args.decrypt_ciphertexts,
                                  "baseline_mib": baseline, "threads": args.threads,
                                  "wall_s": wall_s},
                  notes=notes, headline=notes.split("\n")[0],
                  plot=lambda path: _plot(rows, path))
    return 0
