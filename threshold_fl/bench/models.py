"""``threshold-fl bench models``: a fully encrypted round per model size vs plaintext
(the FedML-HE paper's Table 4: from 101 values to BERT-base's 109,482,240).

For each vector length, one threshold round of N clients (default 3; noise flooding on,
the library's default parameters for N parties), every role in its own OS process
(:mod:`threshold_fl.bench.roles`): each client encrypts its upload streamed, the
aggregator streams the N uploads into the weighted sum, and the round decrypts by blind
fusion as the protocol does: t = N // 2 + 1 members each turn the aggregate's c1 parts
into one masked share, the aggregator adds c0 and the shares, and a client removes the
pad, decodes and checks the result against the exact weighted average.

- **HE time**: every client's encryption (with serialisation), the aggregation, the t
  members' shares, the aggregator's split and fusion, and every client's decoding (one
  client's, times N);
- **plaintext time**: the same FedAvg round on float32 vectors (serialisation and the
  same streamed weighted sum);
- **bytes**: one client's upload, ciphertext frames vs 4 bytes per float32 value;
- **memory**: peak resident memory of the aggregator's process and of a client's (the
  largest of its encryption, share and decoding processes), next to the baseline of a
  process that only imports NumPy, OpenFHE and the crypto layer.

``--large`` adds ViT-sized 86,389,248 and BERT-base's 109,482,240 values (minutes each,
up to about 17 GB of temporary files; a vector over the library's limit of
250,000,000 values would go as several segments).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threshold_fl._checks import bounded
from threshold_fl.bench.output import (
    add_role_options,
    print_line,
    progress_for,
    publish_suite,
    suite_error,
)
from threshold_fl.bench.roles import Upload, layout_for
from threshold_fl.bench.runner import (
    HeRound,
    PlainRound,
    baseline_peak_mib,
    run_he_round,
    run_plain_round,
    threads_note,
)
from threshold_fl.crypto import CkksParams, context_for, threshold_params
from threshold_fl.errors import ThresholdFLError

__all__ = ["ModelRow", "main", "measure"]

DEFAULT_LENGTHS = (101, 5_609, 79_510, 88_648, 822_570, 1_663_370, 3_315_428, 12_556_426,
                   25_557_032)
LARGE_LENGTHS = (86_389_248, 109_482_240)
MAX_LENGTH = 200_000_000
FLOAT32_BYTES = 4
SLOW_LENGTH = 2_000_000  # from here on, say what is running before each role


def _size(count: int) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1."""
    amount, unit = float(count), "B"
    for larger in ("KiB", "MiB", "GiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, larger
    return f"{amount:.0f} B" if unit == "B" else f"{amount:.1f} {unit}"


@dataclass(frozen=True)
class ModelRow:
    """One vector length: the encrypted round next to the plaintext one."""

    values: int
    clients: int
    he_s: float
    plain_s: float
    time_ratio: float
    encrypt_s: float  # all clients
    aggregate_s: float
    share_s: float  # all t members
    fuse_s: float  # the aggregator's split and fusion
    decode_s: float  # all N clients
    upload_bytes: int  # one client
    plain_bytes: int
    bytes_ratio: float
    aggregator_mib: float
    client_mib: float
    baseline_mib: float
    max_error: float
    error_bound: float
    plain_max_error: float
    wall_s: float

    def cells(self) -> list[object]:
        return [f"{self.values:,}", f"{self.he_s:.3f}", f"{self.plain_s:.5f}",
                f"{self.time_ratio:,.0f}", _size(self.upload_bytes), _size(self.plain_bytes),
                f"{self.bytes_ratio:.1f}",
                f"{self.aggregator_mib:,.0f}", f"{self.client_mib:,.0f}",
                f"{self.max_error:.1e}"]


COLUMNS = ("values", "HE s", "plain s", "HE/plain time", "upload", "plain upload",
           "HE/plain bytes", "aggregator MiB", "client MiB", "max error")


def _row(he: HeRound, plain: PlainRound, baseline_mib: float) -> ModelRow:
    encrypt, share = sum(he.encrypt_s), sum(he.share_s)
    fuse, decode = he.split_s + he.fuse_s, he.decode_s * he.parties
    he_s = encrypt + he.aggregate_s + share + fuse + decode
    plain_s = sum(plain.serialise_s) + plain.aggregate_s
    client_mib = max(he.peak_mib["encrypt"], he.peak_mib["share"], he.peak_mib["decode"])
    return ModelRow(he.length, he.parties, he_s, plain_s, he_s / plain_s, encrypt,
                    he.aggregate_s, share, fuse, decode, he.upload_bytes, plain.upload_bytes,
                    he.upload_bytes / plain.upload_bytes, he.peak_mib["aggregate"], client_mib,
                    baseline_mib, he.max_error, he.error_bound, plain.max_error, he.wall_s)


def measure(length: int, params: CkksParams, clients: int, seed: int, baseline_mib: float,
            threads: int = 1, progress: Callable[[str], None] | None = None) -> ModelRow:
    """One encrypted and one plaintext round on the same ``clients`` vectors."""
    samples = np.random.default_rng([seed, length]).integers(400, 800, clients)
    uploads = [Upload(index, float(weight)) for index, weight in
               enumerate(samples / samples.sum())]
    layout = layout_for(length, context_for(params).values_per_ciphertext)
    with tempfile.TemporaryDirectory(prefix="threshold-fl-bench-models-") as scratch:
        he = run_he_round(params, uploads, length, seed, Path(scratch), threads=threads,
                          progress=progress)
    with tempfile.TemporaryDirectory(prefix="threshold-fl-bench-models-") as scratch:
        plain = run_plain_round(uploads, layout, seed, Path(scratch))
    return _row(he, plain, baseline_mib)


def _plot(rows: Sequence[ModelRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    values = [row.values for row in rows]
    figure, (cost, memory) = pyplot.subplots(1, 2, figsize=(11, 4))
    cost.plot(values, [row.time_ratio for row in rows], "o-", label="time, HE / plaintext")
    cost.plot(values, [row.bytes_ratio for row in rows], "s-", label="upload bytes, HE / float32")
    cost.set_title("encrypted round vs plaintext round")
    memory.plot(values, [row.aggregator_mib for row in rows], "o-", label="aggregator process")
    memory.plot(values, [row.client_mib for row in rows], "s-", label="client process")
    memory.axhline(rows[0].baseline_mib, linestyle="--", color="grey",
                   label="baseline (imports only)")
    memory.set_title("peak resident memory (MiB)")
    for axes in (cost, memory):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("values per client")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    memory.yaxis.set_major_formatter(ticker.ScalarFormatter())
    memory.yaxis.set_minor_formatter(ticker.NullFormatter())
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _notes(rows: Sequence[ModelRow], clients: int, threads: int, wall_s: float) -> str:
    largest = max(rows, key=lambda row: row.values)
    headline = (f"At {largest.values:,} values the encrypted round takes "
                f"{largest.time_ratio:,.0f}x the plaintext round's time and "
                f"{largest.bytes_ratio:.1f}x its upload bytes; the aggregator's process peaks "
                f"at {largest.aggregator_mib:,.0f} MiB, a client's at "
                f"{largest.client_mib:,.0f} MiB.")
    return "\n\n".join([
        headline,
        f"Each row is one round of {clients} clients with threshold keys (noise flooding on). "
        "HE s: all clients' encryptions (with serialisation) + aggregation + decryption by "
        "blind fusion (the t = N // 2 + 1 members' shares, the aggregator's split and "
        "fusion, every client's decoding); plain s: all clients' float32 serialisations + the "
        "same streamed weighted sum. Seconds leave out file I/O and drawing the test values.",
        f"Every role ran in its own process, one at a time, with {threads_note(threads)}; "
        "memory is each process's peak resident set (VmHWM). A process that only "
        f"imports NumPy, OpenFHE and the crypto layer peaks at {rows[0].baseline_mib:,.0f} "
        "MiB. Client MiB is the largest of a client's encryption, share and decoding "
        "processes.",
        f"{sum(row.max_error <= row.error_bound for row in rows)} of {len(rows)} decrypted "
        f"averages are within their parameters' error bound (largest max error "
        f"{max(row.max_error for row in rows):.1e}). Whole run: {wall_s:,.0f} s.",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threshold-fl bench models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=bounded(int, 1, MAX_LENGTH), nargs="+",
                        default=list(DEFAULT_LENGTHS), metavar="VALUES",
                        help="vector lengths, one round each (default: the paper's up to "
                             "ResNet-50's 25,557,032)")
    parser.add_argument("--large", action="store_true",
                        help="also 86,389,248 and 109,482,240 values (minutes each)")
    parser.add_argument("--clients", type=bounded(int, 2, 20), default=3,
                        help="clients per round (default %(default)s)")
    add_role_options(parser, "models", "the client values and weights")
    args = parser.parse_args(argv)
    lengths = list(dict.fromkeys([*args.lengths, *(LARGE_LENGTHS if args.large else ())]))
    started = time.perf_counter()
    rows: list[ModelRow] = []
    try:
        params = threshold_params(args.clients)
        baseline = baseline_peak_mib(args.threads)
        print_line(COLUMNS)
        for length in lengths:
            slow = length >= SLOW_LENGTH
            row = measure(length, params, args.clients, args.seed, baseline, args.threads,
                          progress_for(f"{length:,} values") if slow else None)
            print_line(row.cells())
            rows.append(row)
    except ThresholdFLError as error:
        return suite_error("models", error)
    wall_s = time.perf_counter() - started
    notes = _notes(rows, args.clients, args.threads, wall_s)
    publish_suite(args.out, "models",
                  f"Encrypted round per model size vs plaintext, {args.clients} clients",
                  COLUMNS, rows, {"clients": args.clients, "baseline_mib": baseline,
                                  "params": params.to_dict(), "threads": args.threads,
                                  "wall_s": wall_s},
                  notes=notes, headline=notes.split("\n")[0],
                  plot=lambda path: _plot(rows, path))
    return 0
