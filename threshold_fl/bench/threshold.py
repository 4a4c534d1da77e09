"""``threshold-fl bench threshold``: single-key vs threshold CKKS step by step (the FedML-HE
paper's Figure 12), and what noise flooding costs threshold decryption.

For each client count N (2, 3, 5, 10 by default), on the same N vectors (uniform in
[-0.1, 0.1], sample-count FedAvg weights; the paper's CNN size by default), three rounds
through :func:`threshold_fl.bench.crypto.run_round`:

- **single-key**: ``CkksParams()``, one key pair, one decryption;
- **threshold, fixed noise**: ``threshold_params(N, flooding=False)``: OpenFHE's fixed
  20-bit noise in each decryption share;
- **threshold, flooding**: ``threshold_params(N)`` (the library's default): noise
  flooding sized for 2^16 shares per key at 30-bit statistical security
  (docs/crypto.md); OpenFHE then picks its own scale;
- **threshold, flooding, OpenFHE N-of-N** (the reference): the same parameters with
  OpenFHE's own ``Encrypt`` and ``Rescale`` and OpenFHE's own threshold decryption,
  every one of the N parties' MultipartyDecryptLead/Main and their fusion
  (``TFL_ENCRYPTION_PATH=openfhe``; OpenFHE has no t-of-N masked shares), same noise
  width.

The threshold rounds but the reference decrypt as the protocol does (blind fusion,
docs/protocol.md section 6): a set of t = N // 2 + 1 parties each download the
aggregate's c1 parts and upload one masked share, the aggregator adds c0 and the shares,
and every client downloads the fused polynomials, removes the pad and decodes.

Per round: the seconds of key generation (threshold: per party, on average, as the
parties make their shares in parallel, dealing Shamir shares of the key share and
summing the ones held into a threshold key included; single-key: the one key pair),
encryption (per client), aggregation, a member's share (from the c1 frames it receives
to its share's frames; the reference: one party's partial decryption, from the
aggregate's bytes), the aggregator's fusion (cutting c0 and c1 out of the aggregate and
framing c1, decoding the shares, adding them, framing the result; the reference: a
client fusing the N partial decryptions; single-key: 0) and a client's decoding (of the
fused frames, the pad removed; single-key: decryption from the aggregate's bytes); the
bytes of one client's upload, of the most one client downloads (a member: c1 and the
fused polynomials; the reference: the aggregate and the N - 1 other partial
decryptions; single-key: the aggregate) and of one member's share; the max error of
the decrypted average and its bound.  Per-party steps run in parallel in a federation,
so the stacked "round latency" counts them once; "HE compute" adds every party's work.
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
    download_bytes_per_client,
    member_share_seconds,
    run_round,
    share_bytes_per_member,
    share_seconds,
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
FLOODING_OPENFHE = "threshold, flooding, OpenFHE N-of-N"  # the reference
CONFIGURATIONS = (SINGLE_KEY, FIXED, FLOODING, FLOODING_OPENFHE)
MAX_LENGTH = 20_000_000  # N=10 holds 10 inputs and 3 encrypted copies of one in memory


def he_compute_seconds(result: HeRound) -> float:
    """Every client's encryption, the aggregation and all decryption work of one round
    (:func:`threshold_fl.bench.crypto.decrypt_seconds`: blind fusion, the t members'
    shares, the fusion and every client's decoding); key generation is set-up, not part
    of a round."""
    seconds = result.seconds
    return seconds["encrypt"] * result.parties + seconds["aggregate"] + decrypt_seconds(result)


@dataclass(frozen=True)
class StepRow:
    """One configuration's round with N clients: seconds and bytes per step."""

    configuration: str
    clients: int
    decryptors: int  # t of the set (the reference: N; single-key: 1)
    values: int
    ring_dimension: int
    values_per_ciphertext: int
    ciphertexts: int
    scale_bits: float
    keygen_s: float  # threshold: one party's share (in parallel); single-key: the key pair
    encrypt_per_client_s: float
    aggregate_s: float
    share_per_member_s: float  # from the bytes received to the share's frames; 0: single-key
    share_only_s: float  # the share and its frames, without decoding what was received
    fuse_s: float  # the aggregator's (the reference: a client's fusion); 0 for single-key
    decode_per_client_s: float  # single-key: the decryption from the aggregate's bytes
    decrypt_s: float  # all decryption work of the round
    latency_s: float  # the steps above in sequence, per-party ones counted once
    he_compute_s: float
    upload_bytes_per_client: int
    download_bytes_per_client: int  # the most one client downloads
    share_bytes_per_member: int  # 0 for single-key: nobody shares decryptions
    max_error: float
    error_bound: float

    def cells(self) -> list[object]:
        return [self.configuration, self.clients,
                self.decryptors if self.configuration != SINGLE_KEY else "-",
                f"{self.scale_bits:.0f}",
                f"{self.keygen_s:.3f}", f"{self.encrypt_per_client_s:.3f}",
                f"{self.aggregate_s:.3f}", f"{self.share_per_member_s:.3f}",
                f"{self.fuse_s:.3f}", f"{self.decode_per_client_s:.3f}",
                f"{self.latency_s:.2f}", f"{self.he_compute_s:.2f}",
                _mb(self.upload_bytes_per_client), _mb(self.download_bytes_per_client),
                _mb(self.share_bytes_per_member), f"{self.max_error:.1e}",
                f"{self.error_bound:.1e}"]


COLUMNS = ("configuration", "N", "t", "scale bits", "keygen s", "encrypt/client s",
           "aggregate s", "share/member s", "fuse s", "decode/client s", "latency s",
           "HE compute s", "up/client MB", "down/client MB", "share/member MB", "max error",
           "error bound")
NOISE_COLUMNS = ("N", "noise", "scale bits", "share/member s", "fuse s", "decode/client s",
                 "decrypt s", "max error", "error bound", "error / bound")


def _mb(count: int) -> str:
    return f"{count / 1e6:.2f}"


def _context(configuration: str, clients: int) -> CkksContext:
    if configuration == SINGLE_KEY:
        return context_for(CkksParams())
    return context_for(threshold_params(clients, flooding=configuration != FIXED))


def _row(configuration: str, context: CkksContext, result: HeRound) -> StepRow:
    seconds = result.seconds
    threshold = result.mode == "threshold"
    share = member_share_seconds(result)
    fuse = seconds.get("split", 0.0) + seconds.get("fuse", 0.0) if threshold else 0.0
    decode = seconds.get("decode", 0.0) if threshold else seconds["decrypt"]
    # run_round reports key generation per party; single-key's is one key pair, made once
    keygen = seconds["keygen"] * (1 if threshold else result.parties)
    latency = keygen + seconds["encrypt"] + seconds["aggregate"] + share + fuse + decode
    return StepRow(configuration, result.parties, result.decryptors, result.length,
                   int(context.native.GetRingDimension()), context.values_per_ciphertext,
                   result.ciphertexts, context.scale_bits,
                   keygen, seconds["encrypt"], seconds["aggregate"], share,
                   share_seconds(result), fuse, decode, decrypt_seconds(result),
                   latency, he_compute_seconds(result), result.bytes["upload_per_client"],
                   download_bytes_per_client(result), share_bytes_per_member(result),
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
        openfhe = configuration == FLOODING_OPENFHE
        path = DecryptionPath.OPENFHE if openfhe else None  # None: blind fusion
        encryption = EncryptionPath.OPENFHE if openfhe else EncryptionPath.RING
        warm_up(context, mode, clients, path=path, encryption=encryption)
        result = run_round(context, mode, inputs, weights, path=path, encryption=encryption)
        rows.append(_row(configuration, context, result))
    return rows


def noise_rows(rows: Sequence[StepRow]) -> list[list[object]]:
    """Fixed vs flooded threshold decryption (and the reference), per N: time and
    precision."""
    table: list[list[object]] = []
    for row in rows:
        if row.configuration == SINGLE_KEY:
            continue
        noise = {FIXED: "fixed", FLOODING: "flooding",
                 FLOODING_OPENFHE: "flooding, OpenFHE N-of-N"}[row.configuration]
        table.append([row.clients, noise, f"{row.scale_bits:.0f}",
                      f"{row.share_per_member_s:.3f}", f"{row.fuse_s:.3f}",
                      f"{row.decode_per_client_s:.3f}", f"{row.decrypt_s:.3f}",
                      f"{row.max_error:.1e}", f"{row.error_bound:.1e}",
                      f"{row.max_error / row.error_bound:.2f}"])
    return table


def _short(configuration: str) -> str:
    return {SINGLE_KEY: "single", FIXED: "fixed", FLOODING: "flood",
            FLOODING_OPENFHE: "flood\nOpenFHE\nN-of-N"}[configuration]


def _plot(rows: Sequence[StepRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [f"{_short(row.configuration)}\nN={row.clients}" for row in rows]
    positions = np.arange(len(rows))
    times = {"key generation": [r.keygen_s for r in rows],
             "encrypt / client": [r.encrypt_per_client_s for r in rows],
             "aggregate": [r.aggregate_s for r in rows],
             "share / member": [r.share_per_member_s for r in rows],
             "fuse": [r.fuse_s for r in rows],
             "decode / client": [r.decode_per_client_s for r in rows]}
    sizes = {"upload": [r.upload_bytes_per_client / 1e6 for r in rows],
             "download": [r.download_bytes_per_client / 1e6 for r in rows],
             "share upload": [r.share_bytes_per_member / 1e6 for r in rows]}
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
        cost = flood.decrypt_s / fixed.decrypt_s
        parts.append(f"flooding makes the round's decryption work {cost:.2f}x as long, max "
                     f"error {flood.max_error:.1e} vs {fixed.max_error:.1e} with fixed noise.")
    if FLOODING in mine and FLOODING_OPENFHE in mine:
        theirs, ours = mine[FLOODING_OPENFHE], mine[FLOODING]
        ratio = theirs.share_only_s / max(ours.share_only_s, 1e-9)
        whole = theirs.decrypt_s / max(ours.decrypt_s, 1e-9)
        encrypt = theirs.encrypt_per_client_s / ours.encrypt_per_client_s
        parts.append(f"Blind fusion's decryption work (t = {ours.decryptors} members' "
                     f"shares, the fusion, {ours.clients} clients' decoding) is "
                     f"{whole:.1f}x as fast as OpenFHE's N-of-N threshold decryption (all "
                     f"{theirs.clients} partials and the fusion); a member's masked share is "
                     f"{ratio:.1f}x as fast as OpenFHE's MultipartyDecryptMain (same noise "
                     f"width) and a client's encryption {encrypt:.1f}x as fast as OpenFHE's "
                     "Encrypt and Rescale.")
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
    notes += ("\n\nThreshold rounds decrypt by blind fusion with a set of t = N // 2 + 1 "
              "parties (the protocol's); the OpenFHE N-of-N row is the reference: OpenFHE's "
              "own threshold decryption, every party's partial decryption and their fusion. "
              "keygen: threshold, one party's share of the joint key with its Shamir dealing "
              "and threshold key, on average (the parties make theirs in parallel); "
              "single-key, the one key pair. share/member: a member decoding the c1 frames "
              "and making its masked share (the reference: a party decoding the aggregate "
              "and making its partial decryption); fuse: the aggregator cutting c0 and c1 "
              "out of the aggregate, decoding the t shares, adding them to c0 and framing "
              "the result (the reference: a client fusing the N partials); decode/client: a "
              "client decoding the fused frames, removing the pad and decoding the values "
              "(single-key: the decryption). latency: key generation + encryption per "
              "client + aggregation + share per member + fusion + decoding per client "
              "(parties work in parallel); HE compute: every client's encryption, the "
              "aggregation and all decryption work (t shares, the fusion, N decodings). "
              "down/client: the most one client downloads (a member: c1 and the fused "
              "polynomials; the reference: the aggregate and N - 1 partials). MB are 10^6 "
              "bytes of wire frames.")
    title = f"Single-key vs threshold CKKS, {args.length:,} values"
    publish_suite(args.out, "threshold", title, COLUMNS, rows, {"headline": headline},
                  notes=notes, headline=headline, plot=lambda path: _plot(rows, path))
    return 0
