"""``threshold-fl bench peers``: our encrypted FedAvg round next to NVIDIA FLARE's.

On the same client vectors (uniform in [-0.1, 0.1], sample-count weights), in one run:

- **ours, threshold**: joint key of the N clients, encryption, the weighted streamed
  sum, N partial decryptions (our ring kernels) and their fusion (the parameters the
  protocol's manifest uses for N parties);
- **ours, threshold, OpenFHE kernels**: the same with OpenFHE's ``Encrypt`` and
  ``Rescale`` and its MultipartyDecryptLead/Main (the same noise width), to show what
  the ring kernels save;
- **ours, single-key**: one key pair, encryption, the sum, one decryption;
- **FLARE (TenSEAL)**: FLARE's defaults (N=8192, moduli [60, 40, 40], scale 2^40), one
  ``ckks_vector`` per layer, clients pre-weighting, the server dividing by the weight
  sum (:mod:`threshold_fl.peers.tenseal_flare`).

"HE compute" adds every client's encryption, the aggregation and the decryption work
of one round (for threshold: every client's partial decryption and the fusion).
Decryption is timed from the aggregate's bytes, as TenSEAL's is.  The
vector of 1,663,370 values is split like the paper's CNN (8 tensors); other lengths
are one layer.  Needs TenSEAL: ``pip install 'threshold-fl[bench]'``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threshold_fl._checks import bounded
from threshold_fl.bench.crypto import HeRound, decrypt_seconds, run_round, warm_up
from threshold_fl.bench.output import print_line, publish_suite, suite_error
from threshold_fl.crypto import CkksParams, context_for, threshold_params
from threshold_fl.crypto.encryption import EncryptionPath
from threshold_fl.crypto.shares import DecryptionPath
from threshold_fl.errors import ThresholdFLError
from threshold_fl.peers.tenseal_flare import FlareRound, run_flare_round

__all__ = ["PeerRow", "main", "measure"]

CNN_LENGTH = 1_663_370
DEFAULT_LENGTHS = (101, 79_510, CNN_LENGTH)


@dataclass(frozen=True)
class PeerRow:
    """One system's round on one vector length."""

    system: str
    values: int
    clients: int
    encrypt_per_client_s: float
    aggregate_s: float
    decrypt_s: float  # what decryption costs the federation (threshold: N partials + fuse)
    he_compute_s: float
    upload_bytes_per_value: float
    download_bytes_per_value: float
    max_error: float
    partial_per_ciphertext_ms: float  # one share of one ciphertext, bytes to frames (0: none)

    def cells(self) -> list[object]:
        return [self.system, f"{self.values:,}", f"{self.encrypt_per_client_s:.3f}",
                f"{self.aggregate_s:.3f}", f"{self.decrypt_s:.3f}", f"{self.he_compute_s:.2f}",
                f"{self.upload_bytes_per_value:.1f}", f"{self.download_bytes_per_value:.1f}",
                f"{self.max_error:.1e}", f"{self.partial_per_ciphertext_ms:.2f}"]


COLUMNS = ("system", "values", "encrypt/client s", "aggregate s", "decrypt s",
           "HE compute s", "up B/value", "down B/value", "max error", "partial ms/ct")
THRESHOLD, THRESHOLD_OPENFHE = "ours, threshold", "ours, threshold, OpenFHE kernels"


def layer_sizes(length: int) -> list[int]:
    """The paper's CNN tensors for its length, else one layer."""
    if length != CNN_LENGTH:
        return [length]
    from threshold_fl.ml.flatten import layout_of  # torch
    from threshold_fl.ml.models import build_model

    return [spec.size for spec in layout_of(build_model("cnn")).tensors]


def _ours(name: str, result: HeRound) -> PeerRow:
    seconds, sent, clients = result.seconds, result.bytes, result.parties
    decrypt = decrypt_seconds(result)
    partial_ms = 1e3 * seconds.get("partial_decrypt", 0.0) / max(result.ciphertexts, 1)
    return PeerRow(name, result.length, clients, seconds["encrypt"], seconds["aggregate"],
                   decrypt, seconds["encrypt"] * clients + seconds["aggregate"] + decrypt,
                   sent["upload_per_client"] / result.length,
                   sent["global_download"] / result.length, result.max_error, partial_ms)


def _flare(result: FlareRound) -> PeerRow:
    return PeerRow("FLARE (TenSEAL)", result.n_values, result.n_clients, result.encrypt_mean_s,
                   result.aggregate_s, result.decrypt_s, result.he_compute_s,
                   result.upload_bytes_per_value, result.download_bytes_per_value,
                   result.max_abs_error, 0.0)


def measure(length: int, clients: int, seed: int = 0) -> list[PeerRow]:
    """The three systems' rounds on the same vectors of *length* values."""
    rng = np.random.default_rng(seed)
    updates = [rng.uniform(-0.1, 0.1, length) for _ in range(clients)]
    samples = rng.integers(400, 800, clients).astype(np.float64)
    weights = samples / samples.sum()
    context = context_for(threshold_params(clients))
    for warmed, mode in ((context, "threshold"), (context_for(CkksParams()), "single-key")):
        warm_up(warmed, mode, clients)
    threshold = run_round(context, "threshold", updates, weights, path=DecryptionPath.RING)
    openfhe = run_round(context, "threshold", updates, weights, path=DecryptionPath.OPENFHE,
                        encryption=EncryptionPath.OPENFHE)
    single = run_round(context_for(CkksParams()), "single-key", updates, weights)
    flare = run_flare_round(updates, list(samples), layer_sizes(length))
    return [_ours(THRESHOLD, threshold), _ours(THRESHOLD_OPENFHE, openfhe),
            _ours("ours, single-key", single), _flare(flare)]


def _plot(rows: Sequence[PeerRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    lengths = sorted({row.values for row in rows})
    systems = list(dict.fromkeys(row.system for row in rows))
    figure, (compute, size) = pyplot.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(systems)
    for index, system in enumerate(systems):
        mine = {row.values: row for row in rows if row.system == system}
        positions = [i + (index - (len(systems) - 1) / 2) * width for i in range(len(lengths))]
        compute.bar(positions, [mine[n].he_compute_s for n in lengths], width, label=system)
        size.bar(positions, [mine[n].upload_bytes_per_value for n in lengths], width,
                 label=system)
    for axes, title in ((compute, "HE compute per round (s, log)"),
                        (size, "upload bytes per value (log)")):
        axes.set_title(title)
        axes.set_yscale("log")
        axes.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths])
        axes.set_xlabel("values per client")
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _headline(rows: Sequence[PeerRow]) -> str:
    by_system = {row.system: row for row in rows if row.values == max(r.values for r in rows)}
    ours, flare = by_system[THRESHOLD], by_system["FLARE (TenSEAL)"]
    kernels = by_system[THRESHOLD_OPENFHE]
    speedup = kernels.partial_per_ciphertext_ms / max(ours.partial_per_ciphertext_ms, 1e-9)
    encryption = kernels.encrypt_per_client_s / max(ours.encrypt_per_client_s, 1e-9)
    return (f"At {ours.values:,} values: our threshold round's HE compute is "
            f"{ours.he_compute_s / flare.he_compute_s:.2f}x FLARE's (max error "
            f"{ours.max_error:.1e}), its decryption (all partials + fusion) "
            f"{ours.decrypt_s / flare.decrypt_s:.2f}x FLARE's, its upload "
            f"{ours.upload_bytes_per_value / flare.upload_bytes_per_value:.2f}x FLARE's bytes; "
            f"a partial decryption takes {ours.partial_per_ciphertext_ms:.2f} ms per "
            f"ciphertext, {speedup:.1f}x faster than OpenFHE's MultipartyDecryptMain; "
            f"a client's encryption {encryption:.1f}x faster than OpenFHE's Encrypt and "
            "Rescale.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threshold-fl bench peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=bounded(int, 1, 30_000_000), nargs="+",
                        default=list(DEFAULT_LENGTHS))
    parser.add_argument("--clients", type=bounded(int, 2, 20), default=3)
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    rows: list[PeerRow] = []
    print_line(COLUMNS)
    try:
        for length in args.lengths:
            for row in measure(int(length), int(args.clients), int(args.seed)):
                print_line(row.cells())
                rows.append(row)
    except ThresholdFLError as error:
        return suite_error("peers", error)
    headline = _headline(rows)
    publish_suite(args.out, "peers", f"Ours vs NVIDIA FLARE (TenSEAL), {args.clients} clients",
                  COLUMNS, rows, {"headline": headline}, notes=headline, headline=headline,
                  plot=lambda path: _plot(rows, path))
    return 0
