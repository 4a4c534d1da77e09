"""``threshold-fl bench threshold``: single-key vs threshold CKKS step by step (the FedML-HE
paper's Figure 12), and what noise flooding costs threshold decryption.

For each client count N (2, 3, 5, 10 by default), on the same N vectors (uniform in
[-0.1, 0.1], sample-count FedAvg weights; the paper's CNN size by default), three rounds
through :func:`threshold_fl.bench.crypto.run_round`:

- **single-key**: ``CkksParams()``, one key pair, one decryption;
- **threshold, fixed noise**: ``threshold_params(N, flooding=False)``: OpenFHE's fixed
  20-bit noise in each partial decryption;
- **threshold, flooding**: ``threshold_params(N)`` (the library's default): noise
  flooding sized for 2^16 shares per key at 30-bit statistical security
  (docs/crypto.md); OpenFHE then picks its own scale; partial decryptions by our ring
  kernels;
- **threshold, flooding, OpenFHE kernels**: the same with OpenFHE's own ``Encrypt``,
  ``Rescale`` and MultipartyDecryptLead/Main (``TFL_ENCRYPTION_PATH=openfhe``,
  ``TFL_DECRYPTION_PATH=openfhe``), same noise width.

Per round: the seconds of key generation (threshold: per party, on average, as the
parties make their shares in parallel; single-key: the one key pair), encryption (per client),
aggregation, partial decryption (per client, from the aggregate's bytes to its share's
frames) and fusion (from the shares' frames; single-key: decryption from bytes); the
bytes of one client's upload, of the aggregate every client downloads and of one
client's partial decryption; the max error of the decrypted average and its bound.
Per-client steps run in parallel in a federation, so the stacked "round latency" counts
them once; "HE compute" adds every client's work.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threshold_fl._checks import bounded
from threshold_fl.arrays import FloatArray
from threshold_fl.bench.crypto import (
    HeRound,
    decrypt_seconds,
    run_round,
    warm_up,
)
from threshold_fl.bench.output import markdown_table, print_line, publish_suite, suite_error
from threshold_fl.bench.peers import CNN_LENGTH
from threshold_fl.crypto import CkksContext, CkksParams, context_for, threshold_params
from threshold_fl.crypto.encryption import EncryptionPath
from threshold_fl.crypto.shares import DecryptionPath
from threshold_fl.errors import ThresholdFLError

__all__ = ["CONFIGURATIONS", "StepRow", "he_compute_seconds", "main", "measure",
           "noise_rows", "warm_up"]

DEFAULT_CLIENTS = (2, 3, 5, 10)
SINGLE_KEY, FIXED, FLOODING = "single-key", "threshold, fixed noise", "threshold, flooding"
FLOODING_OPENFHE = "threshold, flooding, OpenFHE kernels"
CONFIGURATIONS = (SINGLE_KEY, FIXED, FLOODING, FLOODING_OPENFHE)
MAX_LENGTH = 20_000_000  # N=10 holds 10 inputs and 3 encrypted copies of one in memory


def he_compute_seconds(result: HeRound) -> float:
    """Every client's encryption, the aggregation and all decryption work of one round
    (threshold: every client's partial decryption and the fusion); key generation is
    set-up, not part of a round."""
    seconds = result.seconds
    return seconds["encrypt"] * result.parties + seconds["aggregate"] + decrypt_seconds(result)


@dataclass(frozen=True)
class StepRow:
    """One configuration's round with N clients: seconds and bytes per step."""

    configuration: str
    clients: int
    values: int
    ring_dimension: int
    values_per_ciphertext: int
    scale_bits: float
    keygen_s: float  # threshold: one party's share (in parallel); single-key: the key pair
    encrypt_per_client_s: float
    aggregate_s: float
    partial_decrypt_per_client_s: float  # 0 for single-key
    decrypt_s: float  # threshold: fusion; single-key: decryption
    latency_s: float  # the steps above in sequence, per-client ones counted once
    he_compute_s: float
    upload_bytes_per_client: int
    download_bytes: int
    partial_bytes_per_client: int  # 0 for single-key: nobody shares decryptions
    max_error: float
    error_bound: float

    def cells(self) -> list[object]:
        return [self.configuration, self.clients, f"{self.scale_bits:.0f}",
                f"{self.keygen_s:.3f}", f"{self.encrypt_per_client_s:.3f}",
                f"{self.aggregate_s:.3f}", f"{self.partial_decrypt_per_client_s:.3f}",
                f"{self.decrypt_s:.3f}", f"{self.latency_s:.2f}", f"{self.he_compute_s:.2f}",
                _mb(self.upload_bytes_per_client), _mb(self.download_bytes),
                _mb(self.partial_bytes_per_client), f"{self.max_error:.1e}",
                f"{self.error_bound:.1e}"]


COLUMNS = ("configuration", "N", "scale bits", "keygen s", "encrypt/client s",
           "aggregate s", "partial dec/client s", "fuse/decrypt s", "latency s",
           "HE compute s", "up/client MB", "download MB", "partial/client MB", "max error",
           "error bound")
NOISE_COLUMNS = ("N", "noise", "scale bits", "partial dec/client s", "fuse s", "max error",
                 "error bound", "error / bound")


def _mb(count: int) -> str:
    return f"{count / 1e6:.2f}"


def _context(configuration: str, clients: int) -> CkksContext:
    if configuration == SINGLE_KEY:
        return context_for(CkksParams())
    return context_for(threshold_params(clients, flooding=configuration != FIXED))


def _row(configuration: str, context: CkksContext, result: HeRound) -> StepRow:
    seconds, sent = result.seconds, result.bytes
    threshold = result.mode == "threshold"
    # a client decodes the aggregate's bytes, then computes and frames its share
    partial = seconds["receive"] + seconds["partial_decrypt"] if threshold else 0.0
    decrypt = seconds["fuse"] if threshold else seconds["decrypt"]
    # run_round reports key generation per party; single-key's is one key pair, made once
    keygen = seconds["keygen"] * (1 if threshold else result.parties)
    latency = (keygen + seconds["encrypt"] + seconds["aggregate"] + partial
               + decrypt)
    return StepRow(configuration, result.parties, result.length,
                   int(context.native.GetRingDimension()), context.values_per_ciphertext,
                   context.scale_bits,
                   keygen, seconds["encrypt"], seconds["aggregate"], partial, decrypt,
                   latency, he_compute_seconds(result), sent["upload_per_client"],
                   sent["global_download"], sent.get("partial_per_client", 0),
                   result.max_error, result.error_bound)


def measure(length: int, clients: int, seed: int = 0,
            configurations: Sequence[str] = CONFIGURATIONS) -> list[StepRow]:
    """One round per configuration with *clients* clients, all on the same vectors."""
    rng = np.random.default_rng([seed, clients])
    inputs: list[FloatArray] = [rng.uniform(-0.1, 0.1, length) for _ in range(clients)]
    samples = rng.integers(400, 800, clients).astype(np.float64)
    weights = samples / samples.sum()
    rows = []
    for configuration in configurations:
        context = _context(configuration, clients)
        mode = "single-key" if configuration == SINGLE_KEY else "threshold"
        warm_up(context, mode, clients)
        openfhe = configuration == FLOODING_OPENFHE
        result = run_round(context, mode, inputs, weights,
                           path=DecryptionPath.OPENFHE if openfhe else DecryptionPath.RING,
                           encryption=EncryptionPath.OPENFHE if openfhe else EncryptionPath.RING)
        rows.append(_row(configuration, context, result))
    return rows


def noise_rows(rows: Sequence[StepRow]) -> list[list[object]]:
    """Fixed vs flooded threshold decryption, per N: time and precision."""
    table: list[list[object]] = []
    for row in rows:
        if row.configuration == SINGLE_KEY:
            continue
        noise = {FIXED: "fixed", FLOODING: "flooding",
                 FLOODING_OPENFHE: "flooding, OpenFHE kernels"}[row.configuration]
        table.append([row.clients, noise, f"{row.scale_bits:.0f}",
                      f"{row.partial_decrypt_per_client_s:.3f}", f"{row.decrypt_s:.3f}",
                      f"{row.max_error:.1e}", f"{row.error_bound:.1e}",
                      f"{row.max_error / row.error_bound:.2f}"])
    return table


def _short(configuration: str) -> str:
    return {SINGLE_KEY: "single", FIXED: "fixed", FLOODING: "flood",
            FLOODING_OPENFHE: "flood\nOpenFHE"}[configuration]


def _plot(rows: Sequence[StepRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [f"{_short(row.configuration)}\nN={row.clients}" for row in rows]
    positions = np.arange(len(rows))
    times = {"key generation": [r.keygen_s for r in rows],
             "encrypt / client": [r.encrypt_per_client_s for r in rows],
             "aggregate": [r.aggregate_s for r in rows],
             "partial decrypt / client": [r.partial_decrypt_per_client_s for r in rows],
             "fuse / decrypt": [r.decrypt_s for r in rows]}
    sizes = {"upload": [r.upload_bytes_per_client / 1e6 for r in rows],
             "aggregate download": [r.download_bytes / 1e6 for r in rows],
             "partial decryption upload": [r.partial_bytes_per_client / 1e6 for r in rows]}
    figure, axes = pyplot.subplots(1, 2, figsize=(max(10.0, 1.1 * len(rows)), 4.2))
    for panel, stacks, title in ((axes[0], times, "round latency by step (s)"),
                                 (axes[1], sizes, "one client's traffic by step (MB)")):
        bottom = np.zeros(len(rows))
        for name, heights in stacks.items():
            panel.bar(positions, heights, 0.7, bottom=bottom, label=name)
            bottom += np.asarray(heights)
        panel.set_title(title)
        panel.set_xticks(positions, labels, fontsize=8)
        panel.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    figure.suptitle(f"single-key vs threshold CKKS, {rows[0].values:,} values")
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    pyplot.close(figure)


def _headline(rows: Sequence[StepRow]) -> str:
    largest = max(row.clients for row in rows)
    mine = {row.configuration: row for row in rows if row.clients == largest}
    parts = [f"At N={largest}, {rows[0].values:,} values:"]
    if SINGLE_KEY in mine and FLOODING in mine:
        ratio = mine[FLOODING].latency_s / mine[SINGLE_KEY].latency_s
        parts.append(f"a flooded threshold round's latency is {ratio:.2f}x single-key's;")
    if FIXED in mine and FLOODING in mine:
        fixed, flood = mine[FIXED], mine[FLOODING]
        cost = ((flood.partial_decrypt_per_client_s + flood.decrypt_s)
                / (fixed.partial_decrypt_per_client_s + fixed.decrypt_s))
        parts.append(f"flooding makes partial decryption + fusion {cost:.2f}x as long, max "
                     f"error {flood.max_error:.1e} vs {fixed.max_error:.1e} with fixed noise.")
    if FLOODING in mine and FLOODING_OPENFHE in mine:
        theirs, ours = mine[FLOODING_OPENFHE], mine[FLOODING]
        ratio = theirs.partial_decrypt_per_client_s / ours.partial_decrypt_per_client_s
        encrypt = theirs.encrypt_per_client_s / ours.encrypt_per_client_s
        parts.append(f"Our ring kernels make a partial decryption {ratio:.1f}x as fast as "
                     f"OpenFHE's MultipartyDecryptMain (same noise width) and a client's "
                     f"encryption {encrypt:.1f}x as fast as OpenFHE's Encrypt and Rescale.")
    return " ".join(parts)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threshold-fl bench threshold", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=bounded(int, 2, 50), nargs="+",
                        default=list(DEFAULT_CLIENTS), help="client counts N")
    parser.add_argument("--length", type=bounded(int, 1, MAX_LENGTH), default=CNN_LENGTH,
                        help="values per client (default: the paper's CNN)")
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS,
                        default=list(CONFIGURATIONS), metavar="CONFIGURATION",
                        help=f"any of: {', '.join(repr(c) for c in CONFIGURATIONS)}")
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    return parser


def _measure_all(args: argparse.Namespace) -> list[StepRow]:
    rows: list[StepRow] = []
    print_line(COLUMNS)
    for clients in dict.fromkeys(int(n) for n in args.clients):  # in order, once each
        print(f"N={clients}: {len(args.configurations)} rounds of {args.length:,} values ...",
              flush=True)
        for row in measure(int(args.length), clients, int(args.seed), args.configurations):
            print_line(row.cells())
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.configurations = list(dict.fromkeys(args.configurations))
    try:
        rows = _measure_all(args)
    except ThresholdFLError as error:
        return suite_error("threshold", error)
    headline = _headline(rows)
    noise = noise_rows(rows)
    notes = headline
    if noise:
        notes += ("\n\n## Noise flooding's cost (threshold decryption)\n\n"
                  + markdown_table(NOISE_COLUMNS, noise))
    notes += ("\n\nkeygen: threshold, one party's share of the joint key, on average (the "
              "parties make theirs in parallel); single-key, the one key pair. "
              "latency: key generation + encryption per client + aggregation + "
              "partial decryption per client + fusion (clients work in parallel); HE compute: "
              "every client's encryption and partial decryption, the aggregation and the "
              "fusion. MB are 10^6 bytes of wire frames.")
    title = f"Single-key vs threshold CKKS, {args.length:,} values"
    publish_suite(args.out, "threshold", title, COLUMNS, rows, {"headline": headline},
                  notes=notes, headline=headline, plot=lambda path: _plot(rows, path))
    return 0
