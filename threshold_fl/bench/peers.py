"""``threshold-fl bench peers``: our encrypted FedAvg round next to NVIDIA FLARE's.

On the same client vectors (uniform in [-0.1, 0.1], sample-count weights), in one run:

- **ours, threshold**: joint key of the N clients (and its t-of-N Shamir dealing),
  encryption, the weighted streamed sum, and the protocol's blind fusion: t = N // 2 + 1
  members each decrypt the aggregate's c1 parts into one masked share, the aggregator
  adds c0 and the shares, every client removes the pad and decodes (the parameters the
  protocol's manifest uses for N parties);
- **OpenFHE N-of-N threshold (reference)**: the same keys and parameters with
  OpenFHE's ``Encrypt`` and ``Rescale`` and OpenFHE's own threshold decryption: every
  one of the N parties' MultipartyDecryptLead/Main and their fusion (the same noise
  width; OpenFHE has no t-of-N masked shares);
- **ours, single-key**: one key pair, encryption, the sum, one decryption;
- **FLARE (TenSEAL)**: FLARE's defaults (N=8192, moduli [60, 40, 40], scale 2^40), one
  ``ckks_vector`` per layer, clients pre-weighting, the server dividing by the weight
  sum (:mod:`threshold_fl.peers.tenseal_flare`).

"HE compute" adds every client's encryption, the aggregation and the decryption work
of one round (blind fusion: the t members' shares, the fusion and every client's
decoding; the reference: the N partial decryptions and the fusion).  Decryption is
timed from the bytes received, as TenSEAL's is; "down B/value" is the most one client
downloads (a member of the set: c1 and the fused polynomials; the reference: the
aggregate and the N - 1 other partial decryptions), "share ms/ct" one member's share of
one ciphertext, from the c1 it decoded to its frames (the reference: one partial
decryption from the decoded aggregate).  The
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
from threshold_fl.bench.crypto import (
    HeRound,
    decrypt_seconds,
    download_bytes_per_client,
    run_round,
    share_seconds,
    warm_up,
)
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
    decrypt_s: float  # what decryption costs the federation (decrypt_seconds)
    he_compute_s: float
    upload_bytes_per_value: float
    download_bytes_per_value: float  # the most one client downloads
    max_error: float
    share_per_ciphertext_ms: float  # one member's share of one ciphertext (0: none)

    def cells(self) -> list[object]:
        return [self.system, f"{self.values:,}", f"{self.encrypt_per_client_s:.3f}",
                f"{self.aggregate_s:.3f}", f"{self.decrypt_s:.3f}", f"{self.he_compute_s:.2f}",
                f"{self.upload_bytes_per_value:.1f}", f"{self.download_bytes_per_value:.1f}",
                f"{self.max_error:.1e}", f"{self.share_per_ciphertext_ms:.2f}"]


COLUMNS = ("system", "values", "encrypt/client s", "aggregate s", "decrypt s",
           "HE compute s", "up B/value", "down B/value", "max error", "share ms/ct")
THRESHOLD, THRESHOLD_OPENFHE = "ours, threshold", "OpenFHE N-of-N threshold (reference)"


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
    share_ms = 1e3 * share_seconds(result) / max(result.ciphertexts, 1)
    return PeerRow(name, result.length, clients, seconds["encrypt"], seconds["aggregate"],
                   decrypt, seconds["encrypt"] * clients + seconds["aggregate"] + decrypt,
                   sent["upload_per_client"] / result.length,
                   download_bytes_per_client(result) / result.length, result.max_error,
                   share_ms)


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
    path, encryption = DecryptionPath.OPENFHE, EncryptionPath.OPENFHE  # the reference
    warm_up(context, "threshold", clients)
    warm_up(context, "threshold", clients, path=path, encryption=encryption)
    warm_up(context_for(CkksParams()), "single-key", clients)
    threshold = run_round(context, "threshold", updates, weights)
    openfhe = run_round(context, "threshold", updates, weights, path=path,
                        encryption=encryption)
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
    speedup = kernels.share_per_ciphertext_ms / max(ours.share_per_ciphertext_ms, 1e-9)
    encryption = kernels.encrypt_per_client_s / max(ours.encrypt_per_client_s, 1e-9)
    return (f"At {ours.values:,} values: our threshold round's HE compute is "
            f"{ours.he_compute_s / flare.he_compute_s:.2f}x FLARE's (max error "
            f"{ours.max_error:.1e}), its decryption (blind fusion: t = "
            f"{ours.clients // 2 + 1} members' shares, the fusion, every client's decoding) "
            f"{ours.decrypt_s / flare.decrypt_s:.2f}x FLARE's and "
            f"{ours.decrypt_s / kernels.decrypt_s:.2f}x OpenFHE's N-of-N threshold "
            f"decryption's, its upload "
            f"{ours.upload_bytes_per_value / flare.upload_bytes_per_value:.2f}x FLARE's bytes "
            f"and a member's download "
            f"{ours.download_bytes_per_value / flare.download_bytes_per_value:.2f}x FLARE's; "
            f"a member's share takes {ours.share_per_ciphertext_ms:.2f} ms per "
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
