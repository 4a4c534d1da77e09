"""Crypto microbenchmarks: single-key vs threshold CKKS, and fixed vs flooded noise.

Composition-layer code (it times things, so it reads the clock): the crypto
layer itself never does.  Run ``make bench`` or ``python examples/bench_crypto.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

from threshold_fl.arrays import FloatArray, U64Array
from threshold_fl.crypto import (
    MAX_VECTOR_LENGTH,
    CkksContext,
    CkksParams,
    EncryptedSum,
    EncryptedVector,
    JointPublicKey,
    KeyPair,
    PartyKeys,
    combine_public_shares,
    context_for,
    decrypt_vector,
    encrypt_vector,
    fuse_partial_decryptions,
    generate_keypair,
    lead_keygen,
    member_keygen,
    partial_decrypt,
    with_noise_flooding,
)
from threshold_fl.crypto.encryption import EncryptionPath
from threshold_fl.crypto.noise import wipe
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.shares import DecryptionPath, KeyLimbs, decode_sums
from threshold_fl.crypto.threshold import (
    DecryptionSet,
    ThresholdKey,
    blind_fusion,
    deal,
    decryption_shares,
    ring_parts,
    threshold_key,
    threshold_kit,
    unpad,
)
from threshold_fl.crypto.wire import (
    PolynomialRole,
    decode_partial_decryption,
    decode_polynomials,
    decode_vector,
    encode_partial_decryption,
    encode_polynomials,
    encode_vector,
)
from threshold_fl.errors import ParameterError

T = TypeVar("T")
P = ParamSpec("P")


@dataclass
class Timings:
    """Seconds and bytes for each step of one aggregation round."""

    seconds: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def timed(self, name: str, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``work(*args, **kwargs)``, adding its time to step ``name``."""
        with self.step(name):
            return work(*args, **kwargs)


@dataclass
class HeRound:
    """One aggregation round's figures.

    ``decryption``: "single-key" (one decryption), "blind fusion" (the protocol's t-of-N
    threshold decryption) or "N-of-N" (every party's partial decryption and their
    fusion, OpenFHE's own threshold scheme); ``decryptors``: the parties whose shares
    the round fuses (t, N, or 1 for single-key)."""

    mode: str
    parties: int
    length: int
    max_error: float
    error_bound: float
    seconds: dict[str, float]
    bytes: dict[str, int]
    ciphertexts: int = 0  # per vector
    decryption: str = "single-key"
    decryptors: int = 1


SINGLE_KEY, BLIND_FUSION, N_OF_N = "single-key", "blind fusion", "N-of-N"


def decryption_threshold(parties: int) -> int:
    """t of the benchmarks' t-of-N decryption: a strict majority, N // 2 + 1."""
    return parties // 2 + 1


def _frames_size(frames: Iterator[bytes]) -> int:
    return sum(len(frame) for frame in frames)


def run_round(
    context: CkksContext,
    mode: str,
    inputs: list[FloatArray],
    weights: FloatArray,
    *,
    path: DecryptionPath | None = None,
    encryption: EncryptionPath | None = None,
    decrypted: list[FloatArray] | None = None,
) -> HeRound:
    """One FedAvg aggregation in ``mode`` ('single-key' or 'threshold'), timed per step.

    Threshold decryption is the protocol's blind fusion (docs/protocol.md, section 6)
    with a set of t = N // 2 + 1 parties, unless ``path`` names a partial decryption
    path: then it is the older N-of-N scheme (every party's partial decryption, by our
    ring kernels or OpenFHE's MultipartyDecryptLead/Main, and their fusion), kept as
    the reference for OpenFHE's own threshold decryption.  ``encryption`` chooses who
    encrypts (default: ``TFL_ENCRYPTION_PATH``).  ``decrypted``, if given, receives
    the decrypted weighted sum.

    Steps (seconds, per party where the parties work in parallel):

    - ``keygen``: per party; threshold: OpenFHE's multiparty key share, the joint key
      and, for blind fusion, dealing Shamir shares of the key share and summing the
      shares it holds into its threshold key;
    - ``encrypt`` per client, ``aggregate`` at the aggregator;
    - blind fusion: ``split`` (aggregator: c0 and c1 out of the aggregate, c1 framed
      for the set), ``receive`` (per member: decoding the c1 frames), ``share`` (per
      member: its masked decryption shares and their frames), ``fuse`` (aggregator:
      decoding the t share runs, adding them to c0, framing the fused polynomials),
      ``decode`` (per client: decoding the fused frames, removing the pad, decoding
      the values);
    - N-of-N: ``receive`` (per client: decoding the aggregate's frames),
      ``partial_decrypt`` (per client: its share and frames), ``fuse`` (a client
      decoding every share run and fusing them);
    - single-key: ``decrypt`` (decoding the aggregate's frames and decrypting).

    Bytes: ``upload_per_client``; ``global_download`` (the aggregate's frames, what
    single-key and N-of-N clients download); blind fusion: ``c1_per_member`` (what a
    member downloads to make its share), ``share_per_member`` (what it uploads),
    ``fused_per_client`` (what every client downloads); N-of-N:
    ``partial_per_client`` (one party's share, which every other party downloads).
    """
    timings = Timings()
    parties = len(inputs)
    scheme = SINGLE_KEY if mode == "single-key" else BLIND_FUSION if path is None else N_OF_N
    if scheme == BLIND_FUSION and parties < 2:
        raise ParameterError("t-of-N threshold decryption needs at least 2 parties")
    keys: KeyPair | None = None
    joint: JointPublicKey | None = None
    members: list[PartyKeys] = []
    threshold_keys: list[ThresholdKey] = []
    if mode == "single-key":
        keys = timings.timed("keygen", generate_keypair, context)
        public = keys.public
    else:
        lead = timings.timed("keygen", lead_keygen, context, 1)
        members = [lead] + [
            timings.timed("keygen", member_keygen, context, i, lead.public_share)
            for i in range(2, parties + 1)
        ]
        joint = timings.timed(
            "keygen", combine_public_shares, context, {m.index: m.public_share for m in members}, 1
        )
        public = joint.key
        if scheme == BLIND_FUSION:
            threshold_keys = timings.timed("keygen", _threshold_keys, context, members,
                                           decryption_threshold(parties))
    total = EncryptedSum(context, public.key_id, inputs[0].size)
    for weight, values in zip(weights, inputs, strict=True):
        vector = timings.timed("encrypt", encrypt_vector, context, public, values,
                               weight=float(weight), path=encryption)  # clients pre-weight
        timings.bytes["upload_per_client"] = _frames_size(encode_vector(context, vector))
        timings.timed("aggregate", total.add, vector)
    aggregate: EncryptedVector = timings.timed("aggregate", total.result)
    frames = list(encode_vector(context, aggregate))
    timings.bytes["global_download"] = sum(map(len, frames))
    decryptors = 1
    if keys is not None:
        received = timings.timed("decrypt", decode_vector, context, frames)
        result = timings.timed("decrypt", decrypt_vector, context, keys.secret, received)
    elif scheme == N_OF_N:
        assert joint is not None
        decryptors = parties
        secrets = [joint.bind(member) for member in members]
        sent = []
        for secret in secrets:
            received = timings.timed("receive", decode_vector, context, frames)
            partial = timings.timed("partial_decrypt", partial_decrypt, context, secret,
                                    received, lead=secret.index == 1, path=path)
            sent.append(timings.timed("partial_decrypt", list,
                                      encode_partial_decryption(context, partial)))
        timings.bytes["partial_per_client"] = sum(map(len, sent[1 if parties > 1 else 0]))
        result = timings.timed("fuse", _fuse, context, joint, sent, aggregate.digest)
    else:
        decryptors = decryption_threshold(parties)
        try:
            result = _blind_fusion(context, timings, public.key_id, aggregate,
                                   threshold_keys[:decryptors], parties)
        finally:
            for key in threshold_keys:
                key.wipe()
    if decrypted is not None:
        decrypted.append(result)
    expected = np.sum([w * x for w, x in zip(weights, inputs, strict=True)], axis=0)
    # Clients' and members' steps happen once per party, in parallel in a real
    # federation: report them per party.
    for name, count in (("keygen", parties), ("encrypt", parties), ("decode", parties),
                        ("receive", decryptors), ("partial_decrypt", decryptors),
                        ("share", decryptors)):
        if name in timings.seconds:
            timings.seconds[name] /= count
    return HeRound(
        mode,
        parties,
        inputs[0].size,
        float(np.abs(result - expected).max()),
        context.error_bound(parties),
        timings.seconds,
        timings.bytes,
        len(aggregate.ciphertexts),
        scheme,
        decryptors,
    )


def _threshold_keys(context: CkksContext, members: Sequence[PartyKeys],
                    threshold: int) -> list[ThresholdKey]:
    """Every party deals Shamir shares of its key share (t of N) and sums the shares it
    holds into its threshold key; the dealt shares are wiped."""
    parties = len(members)
    dealt = []
    for member in members:
        with KeyLimbs(context, member.secret.native) as limbs:
            dealt.append(deal(limbs, parties, threshold))
    try:
        return [threshold_key(j, [shares[j] for shares in dealt])
                for j in range(1, parties + 1)]
    finally:
        for shares in dealt:
            for held in shares.values():
                for limb in held.values():
                    wipe(limb)


def _blind_fusion(context: CkksContext, timings: Timings, key_id: str,
                  aggregate: EncryptedVector, keys: Sequence[ThresholdKey],
                  parties: int) -> FloatArray:
    """The protocol's decryption of the aggregate by the set of parties 1..t (the keys
    given): shares on c1, fusion at the aggregator, every client unpads and decodes."""
    length = aggregate.length
    members = tuple(key.index for key in keys)
    dset = DecryptionSet(members, len(members), os.urandom(32))  # binding: bench-only
    pair = {(a, b): os.urandom(32) for a in members for b in members if a < b}
    group_key, sigma = os.urandom(32), threshold_kit(context).sigma

    def split() -> tuple[U64Array, list[bytes]]:
        c0, c1, _ = ring_parts(context, aggregate)
        return c0, list(encode_polynomials(context, PolynomialRole.C1, key_id, length, c1))

    c0, c1_frames = timings.timed("split", split)
    rounding = ShareRounding.of(context)
    timings.bytes["c1_per_member"] = sum(map(len, c1_frames))
    sent = []
    for key in keys:
        c1 = timings.timed("receive", decode_polynomials, context, c1_frames, PolynomialRole.C1,
                           key_id=key_id, length=length)

        def share(c1: U64Array = c1, key: ThresholdKey = key) -> list[bytes]:
            pair_keys = {other: pair[min(key.index, other), max(key.index, other)]
                         for other in members if other != key.index}
            shares = decryption_shares(
                c1, rounding, key, dset, sigma=sigma, noise_seed=os.urandom(32),
                pair_keys=pair_keys,
                group_key=group_key if key.index == dset.pad_holder else None, attempt=1)
            return list(encode_polynomials(context, PolynomialRole.SHARE, key_id, length,
                                           shares))

        sent.append(timings.timed("share", share))
    timings.bytes["share_per_member"] = sum(map(len, sent[-1]))

    def fuse() -> list[bytes]:
        shares = [decode_polynomials(context, frames, PolynomialRole.SHARE, key_id=key_id,
                                     length=length) for frames in sent]
        fused = blind_fusion(c0, shares, rounding)
        return list(encode_polynomials(context, PolynomialRole.FUSED, key_id, length, fused))

    fused_frames = timings.timed("fuse", fuse)
    timings.bytes["fused_per_client"] = sum(map(len, fused_frames))
    values: FloatArray = np.empty(0)
    for _ in range(parties):
        values = timings.timed("decode", client_decode, context, fused_frames, key_id, length,
                               group_key, dset)
    return values


def client_decode(context: CkksContext, frames: Sequence[bytes], key_id: str, length: int,
                  group_key: bytes, dset: DecryptionSet) -> FloatArray:
    """What a client does with the fused frames: decode, remove the pad, decode the
    values (the weighted sum)."""
    fused = decode_polynomials(context, frames, PolynomialRole.FUSED, key_id=key_id,
                               length=length)
    clear = unpad(fused, group_key, dset, 1, ShareRounding.of(context))
    values: FloatArray = decode_sums(context, clear, length, coefficients=True)
    return values


def warm_up(context: CkksContext, mode: str, clients: int, *,
            path: DecryptionPath | None = None,
            encryption: EncryptionPath | None = None) -> None:
    """An untimed round on two values, as the measured one will run (``path`` and
    ``encryption`` as for :func:`run_round`): OpenFHE's first use of a context builds
    tables that would otherwise land in the first measured step, and the ring path's
    self-tests run (once per context and process)."""
    tiny: list[FloatArray] = [np.zeros(2) for _ in range(clients)]
    run_round(context, mode, tiny, np.full(clients, 1.0 / clients), path=path,
              encryption=encryption)


def decrypt_seconds(result: HeRound) -> float:
    """All decryption work of one round, from the aggregate's bytes.

    Blind fusion: the t members' receiving c1 and making their shares, the aggregator's
    split and fusion, and every one of the N clients' decoding of the fused
    polynomials; N-of-N: every party's decoding and partial decryption and one fusion;
    single-key: one decryption."""
    seconds = result.seconds
    if result.decryption == BLIND_FUSION:
        return ((seconds["receive"] + seconds["share"]) * result.decryptors
                + seconds["split"] + seconds["fuse"] + seconds["decode"] * result.parties)
    if result.decryption == N_OF_N:
        return ((seconds["receive"] + seconds["partial_decrypt"]) * result.decryptors
                + seconds["fuse"])
    return seconds["decrypt"]


def member_share_seconds(result: HeRound) -> float:
    """One member's (N-of-N: one party's) decryption work, from the bytes it receives to
    its share's frames; 0 for single-key."""
    seconds = result.seconds
    return seconds.get("receive", 0.0) + seconds.get("share", seconds.get("partial_decrypt", 0.0))


def share_seconds(result: HeRound) -> float:
    """One member's share and its frames (N-of-N: one partial decryption), without
    decoding what it received; 0 for single-key."""
    return result.seconds.get("share", result.seconds.get("partial_decrypt", 0.0))


def download_bytes_per_client(result: HeRound) -> int:
    """The most one client downloads in a round: blind fusion, a member's c1 and the
    fused polynomials; N-of-N, the aggregate and the N - 1 other partial decryptions;
    single-key, the aggregate."""
    sent = result.bytes
    if result.decryption == BLIND_FUSION:
        return sent["c1_per_member"] + sent["fused_per_client"]
    return sent["global_download"] + sent.get("partial_per_client", 0) * (result.parties - 1)


def share_bytes_per_member(result: HeRound) -> int:
    """What one member uploads to decrypt (N-of-N: one party's partial decryption)."""
    return result.bytes.get("share_per_member", result.bytes.get("partial_per_client", 0))


def _fuse(context: CkksContext, joint: JointPublicKey, sent: list[list[bytes]],
          digest: str) -> FloatArray:
    """What a client does with the partial decryptions it downloads (N-of-N)."""
    partials = [decode_partial_decryption(context, frames) for frames in sent]
    return fuse_partial_decryptions(context, joint, partials, vector_digest=digest)


def benchmark(
    sizes: list[int],
    party_counts: list[int],
    modes: list[str],
    seed: int = 0,
    params: CkksParams | None = None,
    progress: Callable[[str], None] = print,
) -> list[HeRound]:
    context = context_for(params or CkksParams())
    rng = np.random.default_rng(seed)
    results = []
    for size in sizes:
        for parties in party_counts:
            inputs = [rng.uniform(-1, 1, size) for _ in range(parties)]
            weights = rng.dirichlet(np.ones(parties))
            for mode in modes:
                result = run_round(context, mode, inputs, weights)
                progress(format_row(result))
                results.append(result)
    return results


COLUMNS = (
    "mode",
    "N",
    "length",
    "keygen",
    "encrypt/cl",
    "aggregate",
    "share/mbr",
    "fuse/dec",
    "decode/cl",
    "up B/val",
    "max error",
)


def format_header() -> str:
    return " | ".join(f"{name:>10}" for name in COLUMNS)


def format_row(result: HeRound) -> str:
    seconds = result.seconds
    finish = seconds.get("split", 0.0) + seconds.get("fuse", seconds.get("decrypt", 0.0))
    cells = [
        result.mode,
        str(result.parties),
        str(result.length),
        f"{seconds['keygen']:.4f}s",
        f"{seconds['encrypt']:.3f}s",
        f"{seconds['aggregate']:.3f}s",
        f"{member_share_seconds(result):.3f}s",
        f"{finish:.3f}s",
        f"{seconds.get('decode', 0.0):.3f}s",
        f"{result.bytes['upload_per_client'] / max(result.length, 1):.2f}",
        f"{result.max_error:.1e}",
    ]
    return " | ".join(f"{cell:>10}" for cell in cells)


def flooding_comparison(parties: int, size: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Precision and time of threshold decryption (blind fusion) with fixed vs flooded
    noise: a member's share, the aggregator's fusion, a client's decoding, and all the
    decryption work of the round."""
    rng = np.random.default_rng(seed)
    inputs = [rng.uniform(-1, 1, size) for _ in range(parties)]
    weights = np.ones(parties) / parties
    out = {}
    for name, params in (
        ("fixed", CkksParams()),
        ("flooding", with_noise_flooding(CkksParams(), parties)),
    ):
        result = run_round(context_for(params), "threshold", inputs, weights)
        out[name] = {
            "max_error": result.max_error,
            "error_bound": result.error_bound,
            "share_s": member_share_seconds(result),
            "fuse_s": result.seconds["split"] + result.seconds["fuse"],
            "decode_s": result.seconds["decode"],
            "decrypt_s": decrypt_seconds(result),
            "scale_bits": context_for(params).scale_bits,
            "noise_estimate_bits": params.noise_estimate_bits or 0.0,
        }
    return out


def write_json(path: Path, results: list[HeRound], extra: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"rounds": [asdict(result) for result in results], **extra}
    path.write_text(json.dumps(payload, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Print one row per (vector length, N, mode) and write a JSON file."""
    parser = argparse.ArgumentParser(
        prog="threshold-fl bench crypto",
        description="Single-key vs threshold CKKS microbenchmark."
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_660_000])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["single-key", "threshold"],
        choices=["single-key", "threshold"],
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results/crypto.json"))
    args = parser.parse_args(argv)
    if any(not 1 <= size <= MAX_VECTOR_LENGTH for size in args.sizes) or any(
        not 1 <= n <= 64 for n in args.parties
    ):
        parser.error(f"sizes must be in 1..{MAX_VECTOR_LENGTH} and party counts in 1..64")
    if "threshold" in args.modes and min(args.parties) < 2:
        parser.error("threshold mode's t-of-N decryption needs at least 2 parties")
    print(
        "seconds: keygen per party, encrypt per client, share per member of the "
        "decryption set (t = N // 2 + 1, receiving c1 included), fuse/dec at the "
        "aggregator (single-key: the decryption), decode per client; "
        "up B/val: upload bytes per value"
    )
    print(format_header())
    results = benchmark(args.sizes, args.parties, args.modes)
    print("\nthreshold decryption noise, N=3, 100000 values:")
    flooding = flooding_comparison(3, 100_000)
    for name, row in flooding.items():
        print(
            f"  {name:>8}: max error {row['max_error']:.2e} (bound {row['error_bound']:.2e}), "
            f"share {row['share_s']:.3f}s/member, fuse {row['fuse_s']:.3f}s, "
            f"decode {row['decode_s']:.3f}s/client, scale 2^{row['scale_bits']:.0f}"
        )
    write_json(args.output, results, {"noise": flooding})
    print(f"\nwrote {args.output}")
    return 0
