"""``threshold-fl bench params``: CKKS batch size x scaling bits (the FedML-HE paper's
Table 6) on real model vectors, in threshold mode.

First, N clients (3) each train the model (the paper's CNN, 1,663,370 parameters) for a
few local epochs on their IID part of the digits, from the same initial weights, once
per run; their plaintext FedAvg (sample-count weights) is the reference.  Then, for each
decryption noise (flooding for 2^16 shares per key, the library's default; flooding for
one share, OpenFHE's own default, to show what the wider noise costs; and fixed), batch
size and requested
scaling bits, a context is built from ``threshold_params(N, batch_size=...,
scaling_mod_size=..., ring_dimension=...)`` and the N real model vectors go through one
timed threshold round (:func:`threshold_fl.bench.crypto.run_round`).  Per cell:

- **HE compute**: every client's encryption, the aggregation and the round's
  decryption by blind fusion (t = N // 2 + 1 members' shares, the aggregator's fusion,
  every client's decoding), in seconds;
- **upload bytes per value** of one client's encrypted model;
- **max error** of the decrypted average against the plaintext one, and its bound;
- **accuracy delta**: test accuracy of the decrypted average minus that of the
  plaintext average, in percentage points.

With noise flooding OpenFHE chooses its own scale whatever is asked for: the table
shows the real scale (``context.scale_bits``) next to the requested bits; fixed noise
uses the requested scale, which is where scaling bits trade precision.  The ring
dimension is fixed (8192 by default) so that batch size alone sets how many values a
ciphertext holds; ``--ring-dimension 0`` lets the library pick the smallest secure ring
per cell instead, and cells the parameters refuse are listed as skipped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from threshold_fl._checks import add_model_option, bounded
from threshold_fl.arrays import FloatArray
from threshold_fl.bench.crypto import HeRound, run_round, warm_up
from threshold_fl.bench.output import print_line, publish_suite, suite_error
from threshold_fl.bench.threshold import he_compute_seconds
from threshold_fl.crypto import CkksContext, context_for, threshold_params
from threshold_fl.crypto.params import DEFAULT_DECRYPTION_QUERIES
from threshold_fl.errors import ParameterError, ThresholdFLError

__all__ = ["LocalModels", "ParamsRow", "SkippedCell", "he_average", "main", "measure_cell",
           "train_models"]

DEFAULT_BATCH_SIZES = (1024, 2048, 4096)
DEFAULT_SCALING_BITS = (40, 50, 59)
#: flooding: sized for 2^16 shares per key (the default); flooding-1q: OpenFHE's own
#: default, one share (what the wider noise costs is the difference); fixed: 2^20.
NOISES = ("flooding", "flooding-1q", "fixed")
RING_DIMENSIONS = (0, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass(frozen=True)
class LocalModels:
    """The clients' locally trained model vectors, their FedAvg weights, and how to test
    a model vector."""

    model: str
    vectors: list[FloatArray]
    weights: FloatArray
    plain_average: FloatArray
    plain_accuracy: float
    accuracy_of: Callable[[FloatArray], float]


def train_models(model: str, clients: int, epochs: int, seed: int) -> LocalModels:
    """Every client trains *model* from the same initial weights on its IID share of the
    digits (one FedAvg round's local work); the plaintext average is tested too."""
    from threshold_fl.app.federation import client_datasets  # torch, only when training
    from threshold_fl.ml.flatten import flatten_state, restore_state
    from threshold_fl.ml.models import build_model
    from threshold_fl.ml.training import LocalTraining, evaluate, train_local

    parts, test = client_datasets(model, clients, "iid", 0.5, seed)
    plan = LocalTraining(epochs=epochs)
    vectors = []
    for index, part in enumerate(parts):
        local = build_model(model, seed=seed)
        train_local(local, part, plan, seed=seed * 100 + index)
        vectors.append(flatten_state(local)[0])
    samples = np.array([len(part) for part in parts], dtype=np.float64)
    weights = samples / samples.sum()
    tester = build_model(model, seed=seed)
    _, layout = flatten_state(tester)

    def accuracy_of(vector: FloatArray) -> float:
        restore_state(tester, vector, layout)
        return evaluate(tester, test).accuracy

    average = np.sum([w * v for w, v in zip(weights, vectors, strict=True)], axis=0)
    return LocalModels(model, vectors, weights, average, accuracy_of(average), accuracy_of)


def he_average(context: CkksContext, models: LocalModels) -> tuple[HeRound, FloatArray]:
    """One timed threshold round on the models' vectors (blind fusion, as the protocol
    decrypts), and the average it decrypted."""
    decrypted: list[FloatArray] = []
    result = run_round(context, "threshold", models.vectors, models.weights,
                       decrypted=decrypted)
    return result, decrypted[-1]


@dataclass(frozen=True)
class ParamsRow:
    """One cell of the grid."""

    noise: str
    batch_size: int
    scaling_bits: int  # requested
    scale_bits: float  # what OpenFHE uses
    ring_dimension: int
    values: int
    he_compute_s: float
    upload_bytes_per_value: float
    max_error: float
    error_bound: float
    accuracy: float
    accuracy_delta_points: float  # decrypted minus plaintext average, percentage points

    def cells(self) -> list[object]:
        return [self.noise, self.batch_size, self.scaling_bits, f"{self.scale_bits:.0f}",
                self.ring_dimension, f"{self.he_compute_s:.2f}",
                f"{self.upload_bytes_per_value:.1f}", f"{self.max_error:.1e}",
                f"{self.error_bound:.1e}", f"{self.accuracy:.2%}",
                f"{self.accuracy_delta_points:+.2f}"]


COLUMNS = ("noise", "batch size", "scaling bits", "real scale bits", "ring", "HE compute s",
           "up B/value", "max error", "error bound", "accuracy", "Δ accuracy (points)")


@dataclass(frozen=True)
class SkippedCell:
    noise: str
    batch_size: int
    scaling_bits: int
    reason: str


def measure_cell(models: LocalModels, noise: str, batch_size: int, scaling_bits: int,
                 ring_dimension: int) -> ParamsRow:
    """One threshold round of the models under these parameters (ParameterError if the
    parameters are refused)."""
    clients = len(models.vectors)
    queries = {"flooding-1q": 1}.get(noise, DEFAULT_DECRYPTION_QUERIES)
    context = context_for(threshold_params(
        clients, flooding=noise != "fixed", batch_size=batch_size,
        scaling_mod_size=scaling_bits, ring_dimension=ring_dimension,
        decryption_queries=queries))
    warm_up(context, "threshold", clients)
    result, decrypted = he_average(context, models)
    accuracy = models.accuracy_of(decrypted)
    return ParamsRow(noise, batch_size, scaling_bits, context.scale_bits,
                     int(context.native.GetRingDimension()), result.length,
                     he_compute_seconds(result), result.bytes["upload_per_client"] / result.length,
                     result.max_error, result.error_bound, accuracy,
                     (accuracy - models.plain_accuracy) * 100)


def _power_of_two(text: str) -> int:
    value = bounded(int, 1, 65536)(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"{text} is not a power of two")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threshold-fl bench params", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=_power_of_two, nargs="+",
                        default=list(DEFAULT_BATCH_SIZES),
                        help="CKKS slots per ciphertext (powers of two, at most ring/2)")
    parser.add_argument("--scaling-bits", type=bounded(int, 20, 59), nargs="+",
                        default=list(DEFAULT_SCALING_BITS), help="requested scale, 20..59 bits")
    parser.add_argument("--noise", nargs="+", choices=NOISES, default=list(NOISES),
                        help="threshold decryption noise(s) to measure")
    parser.add_argument("--ring-dimension", type=int, choices=RING_DIMENSIONS, default=8192,
                        help="fixed ring for every cell; 0: smallest secure one per cell")
    add_model_option(parser, what="the model the clients train (cnn: the paper's CNN)")
    parser.add_argument("--clients", type=bounded(int, 2, 20), default=3)
    parser.add_argument("--epochs", type=bounded(int, 1, 50), default=2,
                        help="local training epochs per client")
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    return parser


def _grid(args: argparse.Namespace, models: LocalModels
          ) -> tuple[list[ParamsRow], list[SkippedCell]]:
    rows: list[ParamsRow] = []
    skipped: list[SkippedCell] = []
    print_line(COLUMNS)
    for noise in args.noise:
        print(f"{noise} noise: {len(args.batch_sizes) * len(args.scaling_bits)} rounds of "
              f"{models.vectors[0].size:,} values ...", flush=True)
        for batch_size in args.batch_sizes:
            for bits in args.scaling_bits:
                try:
                    row = measure_cell(models, noise, batch_size, bits, args.ring_dimension)
                except ParameterError as error:
                    skipped.append(SkippedCell(noise, batch_size, bits, str(error)))
                    print(f"{noise} | {batch_size} | {bits} | skipped: {error}", flush=True)
                    continue
                print_line(row.cells())
                rows.append(row)
    return rows, skipped


def _heatmap(axes: Any, rows: Sequence[ParamsRow], batches: list[int], bits: list[int],
             value: Callable[[ParamsRow], float], label: str, text: str) -> None:
    grid = np.full((len(batches), len(bits)), np.nan)
    for row in rows:
        grid[batches.index(row.batch_size), bits.index(row.scaling_bits)] = value(row)
    axes.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), cell in np.ndenumerate(grid):
        if np.isfinite(cell):
            axes.text(j, i, format(cell, text), ha="center", va="center", color="white",
                      fontsize=8, bbox={"facecolor": "black", "alpha": 0.35, "lw": 0})
    axes.set_xticks(range(len(bits)), [str(b) for b in bits])
    axes.set_yticks(range(len(batches)), [str(b) for b in batches])
    axes.set_xlabel("requested scaling bits")
    axes.set_ylabel("batch size")
    axes.set_title(label, fontsize=9)


def _plot(rows: Sequence[ParamsRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    noises = list(dict.fromkeys(row.noise for row in rows))
    batches = sorted({row.batch_size for row in rows})
    bits = sorted({row.scaling_bits for row in rows})
    panels: list[tuple[Callable[[ParamsRow], float], str, str]] = [
        (lambda r: r.he_compute_s, "HE compute (s)", ".1f"),
        (lambda r: r.upload_bytes_per_value, "upload bytes per value", ".0f"),
        (lambda r: float(np.log10(max(r.max_error, 1e-300))), "log10 max error", ".1f"),
        (lambda r: r.accuracy_delta_points, "Δ accuracy (points)", "+.2f")]
    figure, axes = pyplot.subplots(len(noises), len(panels), squeeze=False,
                                   figsize=(3.6 * len(panels), 3.0 * len(noises)))
    for line, noise in enumerate(noises):
        mine = [row for row in rows if row.noise == noise]
        for column, (value, label, text) in enumerate(panels):
            _heatmap(axes[line][column], mine, batches, bits, value, f"{noise}: {label}", text)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _notes(models: LocalModels, rows: Sequence[ParamsRow], skipped: Sequence[SkippedCell],
           epochs: int) -> str:
    lines = [f"{len(models.vectors)} clients trained the {models.model} model "
             f"({models.vectors[0].size:,} values) for {epochs} local epochs each on their "
             f"IID share of the digits; the plaintext FedAvg of their models scores "
             f"{models.plain_accuracy:.2%} on the test split. Δ accuracy: the decrypted "
             "average's test accuracy minus that, in percentage points."]
    flooded = {f"{row.scale_bits:.0f}" for row in rows if row.noise == "flooding"}
    if flooded:
        lines.append(f"With noise flooding OpenFHE used a scale of 2^{'/'.join(sorted(flooded))} "
                     "whatever the requested scaling bits.")
    lines += [f"Skipped: {cell.noise}, batch {cell.batch_size}, {cell.scaling_bits} bits: "
              f"{cell.reason}" for cell in skipped]
    return "\n\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("batch_sizes", "scaling_bits", "noise"):
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    try:
        print(f"training {args.clients} {args.model} models ({args.epochs} local epochs "
              "each) ...", flush=True)
        models = train_models(args.model, args.clients, args.epochs, args.seed)
        print(f"plaintext FedAvg accuracy: {models.plain_accuracy:.2%}", flush=True)
        rows, skipped = _grid(args, models)
        if not rows:
            raise ParameterError("every cell of the grid was refused; see the reasons above")
    except ThresholdFLError as error:
        return suite_error("params", error)
    notes = _notes(models, rows, skipped, args.epochs)
    title = (f"Batch size x scaling bits, threshold CKKS with {args.clients} clients, "
             f"{args.model} ({models.vectors[0].size:,} values)")
    publish_suite(args.out, "params", title, COLUMNS, rows,
                  {"skipped": [asdict(cell) for cell in skipped], "model": args.model,
                   "clients": args.clients, "epochs": args.epochs,
                   "plain_accuracy": models.plain_accuracy},
                  notes=notes, plot=lambda path: _plot(rows, path))
    return 0
