"""``threshold-fl bench selective``: selective encryption's cost against plaintext FedAvg
(the FedML-HE paper's Table 7).

N clients (3) hold float32 vectors of one length (25,557,032 values, a ResNet-50, by
default; ``--large``: 86,389,248, the paper's ViT), uniform in [-0.1, 0.1], with
sample-count FedAvg weights.  For each encrypted fraction (0, 10, 30, 50, 70, 100 %):

- the encrypted part goes through threshold rounds
  (:func:`threshold_fl.bench.crypto.run_round`, ``threshold_params(N)``: noise
  flooding), in slices of a few million values so memory stays flat however long the
  vector; its time is every client's encryption, the aggregation and the decryption by
  blind fusion (the t = N // 2 + 1 members' shares, the aggregator's fusion, every
  client's decoding; key generation is set-up, not counted);
- the clear part is summed in numpy, weighted, in float32, as plaintext FedAvg does;
- **total time** adds the two, **upload** is one client's bytes: the encrypted part's
  wire frames plus 4 bytes per clear value;
- both are divided by plaintext FedAvg's (the weighted float32 sum of the whole
  vectors; 4 bytes per value); **max error** is against the exact float64 average.

Which values are encrypted does not change the cost, only how many: the encrypted part
is the first values of the vector.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from threshold_fl._checks import bounded, checked_int
from threshold_fl.arrays import Float32Array
from threshold_fl.bench.crypto import run_round, warm_up
from threshold_fl.bench.output import (
    peak_mib,
    print_line,
    publish_suite,
    reset_peak,
    suite_error,
)
from threshold_fl.bench.threshold import he_compute_seconds
from threshold_fl.crypto import CkksContext, context_for, threshold_params
from threshold_fl.errors import ThresholdFLError

__all__ = ["EncryptedPart", "PlaintextRound", "SelectiveRow", "client_vectors",
           "encrypted_part", "main", "measure", "plaintext_fedavg"]


DEFAULT_PERCENTS = (0.0, 10.0, 30.0, 50.0, 70.0, 100.0)
DEFAULT_LENGTH = 25_557_032  # ResNet-50
VIT_LENGTH = 86_389_248  # ViT-B/16, the paper's Table 7
SLICE_CIPHERTEXTS = 512  # per run_round: 4M values, a few hundred MB in flight
BYTES_PER_CLEAR_VALUE = 4  # float32


@dataclass(frozen=True)
class EncryptedPart:
    """The encrypted values' round, summed over slices."""

    values: int
    seconds: float
    upload_bytes: int
    max_error: float
    error_bound: float


def encrypted_part(context: CkksContext, inputs: Sequence[Float32Array],
                   weights: npt.NDArray[np.float64], count: int) -> EncryptedPart:
    """Threshold rounds over the first *count* values of every input, slice by slice."""
    step = SLICE_CIPHERTEXTS * context.values_per_ciphertext
    seconds, upload, error, bound = 0.0, 0, 0.0, 0.0
    for start in range(0, count, step):
        stop = min(start + step, count)
        inputs_slice = [values[start:stop].astype(np.float64) for values in inputs]
        result = run_round(context, "threshold", inputs_slice, weights)
        seconds += he_compute_seconds(result)
        upload += result.bytes["upload_per_client"]
        error, bound = max(error, result.max_error), result.error_bound
    return EncryptedPart(count, seconds, upload, error, bound)


def _weighted_sum(inputs: Sequence[Float32Array], weights: npt.NDArray[np.float64],
                  start: int) -> tuple[Float32Array, float]:
    """Plaintext FedAvg of the values from *start* on: float32, timed."""
    started = time.perf_counter()
    total = np.zeros(inputs[0].size - start, dtype=np.float32)
    for weight, values in zip(weights, inputs, strict=True):
        total += np.float32(weight) * values[start:]
    return total, time.perf_counter() - started


def _max_error(inputs: Sequence[Float32Array], weights: npt.NDArray[np.float64],
               total: Float32Array, start: int) -> float:
    """Largest |total - exact float64 average| over the values from *start* on."""
    error = 0.0
    step = 1 << 22  # chunks: the float64 reference of a whole ViT would be 700 MB
    for offset in range(0, total.size, step):
        window = slice(start + offset, start + min(offset + step, total.size))
        exact = np.sum([w * values[window].astype(np.float64)
                        for w, values in zip(weights, inputs, strict=True)], axis=0)
        error = max(error, float(np.abs(total[offset:offset + step] - exact).max()))
    return error


@dataclass(frozen=True)
class PlaintextRound:
    values: int
    seconds: float
    upload_bytes: int
    max_error: float


def plaintext_fedavg(inputs: Sequence[Float32Array], weights: npt.NDArray[np.float64],
                     repeats: int = 3) -> PlaintextRound:
    """The whole vectors' weighted sum: the fastest of *repeats*, since the first pays
    page faults on freshly allocated memory (the baseline every ratio divides by)."""
    seconds = math.inf
    for _ in range(checked_int(repeats, "repeats", 1)):
        total, once = _weighted_sum(inputs, weights, 0)
        seconds = min(seconds, once)
    return PlaintextRound(total.size, seconds, BYTES_PER_CLEAR_VALUE * total.size,
                          _max_error(inputs, weights, total, 0))


@dataclass(frozen=True)
class SelectiveRow:
    """One encrypted fraction's round, and its ratios to plaintext FedAvg."""

    percent: float
    values: int
    encrypted_values: int
    he_compute_s: float
    clear_sum_s: float
    total_s: float
    upload_bytes_per_client: int
    time_ratio: float
    bytes_ratio: float
    max_error: float
    error_bound: float  # of the encrypted part; 0 when nothing is encrypted

    def cells(self) -> list[object]:
        return [f"{self.percent:g} %", f"{self.encrypted_values:,}", f"{self.he_compute_s:.2f}",
                f"{self.clear_sum_s:.3f}", f"{self.total_s:.2f}",
                f"{self.upload_bytes_per_client / 1e6:.1f}", f"{self.time_ratio:.1f}",
                f"{self.bytes_ratio:.2f}", f"{self.max_error:.1e}"]


COLUMNS = ("encrypted", "encrypted values", "HE compute s", "clear sum s", "total s",
           "upload/client MB", "time ÷ plaintext", "bytes ÷ plaintext", "max error")


def measure(context: CkksContext, inputs: Sequence[Float32Array],
            weights: npt.NDArray[np.float64], percent: float,
            plaintext: PlaintextRound) -> SelectiveRow:
    """One round with the first *percent* % of the values encrypted."""
    length = inputs[0].size
    count = round(length * percent / 100)
    encrypted = encrypted_part(context, inputs, weights, count)
    total, clear_seconds = _weighted_sum(inputs, weights, count)
    clear_error = _max_error(inputs, weights, total, count) if total.size else 0.0
    seconds = encrypted.seconds + clear_seconds
    upload = encrypted.upload_bytes + BYTES_PER_CLEAR_VALUE * total.size
    return SelectiveRow(percent, length, count, encrypted.seconds, clear_seconds, seconds,
                        upload, seconds / plaintext.seconds, upload / plaintext.upload_bytes,
                        max(encrypted.max_error, clear_error), encrypted.error_bound)


def client_vectors(length: int, clients: int, seed: int
                   ) -> tuple[list[Float32Array], npt.NDArray[np.float64]]:
    """Float32 vectors uniform in [-0.1, 0.1] and sample-count weights."""
    rng = np.random.default_rng(seed)
    inputs = []
    for _ in range(clients):
        values = rng.random(length, dtype=np.float32)  # float32 throughout: no 8-byte copy
        values *= 0.2
        values -= 0.1
        inputs.append(values)
    samples = rng.integers(400, 800, clients).astype(np.float64)
    return inputs, samples / samples.sum()


def _plot(rows: Sequence[SelectiveRow], plaintext: PlaintextRound, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [f"{row.percent:g} %" for row in rows]
    positions = np.arange(len(rows))
    figure, (timing, size) = pyplot.subplots(1, 2, figsize=(11, 4))
    timing.bar(positions, [r.he_compute_s for r in rows], 0.6, label="HE (encrypted part)")
    timing.bar(positions, [r.clear_sum_s for r in rows], 0.6,
               bottom=[r.he_compute_s for r in rows], label="clear sum")
    timing.axhline(plaintext.seconds, color="black", linestyle="--", label="plaintext FedAvg")
    timing.set_title("round time (s)")
    size.bar(positions, [r.upload_bytes_per_client / 1e6 for r in rows], 0.6)
    size.axhline(plaintext.upload_bytes / 1e6, color="black", linestyle="--",
                 label="plaintext FedAvg")
    size.set_title("upload per client (MB)")
    for axes, ratios in ((timing, [r.time_ratio for r in rows]),
                         (size, [r.bytes_ratio for r in rows])):
        axes.set_xticks(positions, labels)
        axes.set_xlabel("share of values encrypted")
        for position, ratio, patch in zip(positions, ratios, axes.patches[-len(rows):],
                                          strict=True):
            axes.annotate(f"{ratio:.1f}x", (position, patch.get_y() + patch.get_height()),
                          ha="center", va="bottom", fontsize=8)
        axes.legend(fontsize=8)
    figure.suptitle(f"selective encryption, {rows[0].values:,} values, vs plaintext FedAvg")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threshold-fl bench selective", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--percents", type=bounded(float, 0.0, 100.0), nargs="+",
                        default=list(DEFAULT_PERCENTS), help="encrypted shares, in %%")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--length", type=bounded(int, 1, 100_000_000), default=DEFAULT_LENGTH,
                      help="values per client (default: a ResNet-50's %(default)s)")
    size.add_argument("--large", action="store_true",
                      help=f"the paper's ViT: {VIT_LENGTH:,} values (about 2.5 GB of memory)")
    parser.add_argument("--clients", type=bounded(int, 2, 20), default=3)
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    return parser


def _measure_all(args: argparse.Namespace, length: int
                 ) -> tuple[CkksContext, PlaintextRound, list[SelectiveRow]]:
    inputs, weights = client_vectors(length, args.clients, args.seed)
    context = context_for(threshold_params(args.clients))
    warm_up(context, "threshold", args.clients)
    plaintext = plaintext_fedavg(inputs, weights)
    print(f"plaintext FedAvg: {plaintext.seconds:.3f} s, "
          f"{plaintext.upload_bytes / 1e6:.1f} MB per client", flush=True)
    print_line(COLUMNS)
    rows = []
    for percent in args.percents:
        count = round(length * percent / 100)
        if count:
            print(f"{percent:g} %: encrypting {count:,} values per client ...", flush=True)
        row = measure(context, inputs, weights, percent, plaintext)
        print_line(row.cells())
        rows.append(row)
    return context, plaintext, rows


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.percents = sorted(set(args.percents))
    length = VIT_LENGTH if args.large else int(args.length)
    reset_peak()
    try:
        context, plaintext, rows = _measure_all(args, length)
    except ThresholdFLError as error:
        return suite_error("selective", error)
    peak = peak_mib()
    notes = (f"Plaintext FedAvg: {plaintext.seconds:.3f} s, {plaintext.upload_bytes / 1e6:.1f} MB "
             f"per client (float32). Encrypted parts run in threshold rounds of "
             f"{SLICE_CIPHERTEXTS} ciphertexts; time is every client's work plus the "
             f"aggregator's, not the round's latency. Peak memory of the run: {peak:,.0f} MiB.")
    title = f"Selective encryption, {args.clients} clients, {length:,} values"
    publish_suite(args.out, "selective", title, COLUMNS, rows,
                  {"plaintext": asdict(plaintext), "clients": args.clients,
                   "scale_bits": context.scale_bits,
                   "ring_dimension": int(context.native.GetRingDimension()),
                   "values_per_ciphertext": context.values_per_ciphertext,
                   "slice_values": SLICE_CIPHERTEXTS * context.values_per_ciphertext,
                   "peak_memory_mib": peak}, notes=notes,
                  headline=f"peak memory {peak:,.0f} MiB",
                  plot=lambda path: _plot(rows, plaintext, path))
    return 0
