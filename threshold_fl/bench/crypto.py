"""Crypto microbenchmarks: single-key vs threshold CKKS, and fixed vs flooded noise.

Composition-layer code (it times things, so it reads the clock): the crypto
layer itself never does.  Run ``make bench`` or ``python examples/bench_crypto.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

from threshold_fl.arrays import FloatArray
from threshold_fl.crypto import (
    MAX_VECTOR_LENGTH,
    CkksContext,
    CkksParams,
    EncryptedSum,
    EncryptedVector,
    JointPublicKey,
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
from threshold_fl.crypto.shares import DecryptionPath
from threshold_fl.crypto.wire import (
    decode_partial_decryption,
    decode_vector,
    encode_partial_decryption,
    encode_vector,
)

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
    mode: str
    parties: int
    length: int
    max_error: float
    error_bound: float
    seconds: dict[str, float]
    bytes: dict[str, int]
    ciphertexts: int = 0  # per vector


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
) -> HeRound:
    """One FedAvg aggregation in ``mode`` ('single-key' or 'threshold'), timed per step.

    Decryption starts from the aggregate's bytes, as a client receives them (TenSEAL's
    decryption is timed the same way): "receive" is decoding them, "partial_decrypt"
    the share and its frames, "fuse" decoding the others' frames and the fusion.
    ``path`` chooses who computes partial decryptions (default: ``TFL_DECRYPTION_PATH``),
    ``encryption`` who encrypts (default: ``TFL_ENCRYPTION_PATH``).
    """
    timings = Timings()
    parties = len(inputs)
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
    total = EncryptedSum(context, public.key_id, inputs[0].size)
    for weight, values in zip(weights, inputs, strict=True):
        vector = timings.timed("encrypt", encrypt_vector, context, public, values,
                               weight=float(weight), path=encryption)  # clients pre-weight
        timings.bytes["upload_per_client"] = _frames_size(encode_vector(context, vector))
        timings.timed("aggregate", total.add, vector)
    aggregate: EncryptedVector = timings.timed("aggregate", total.result)
    frames = list(encode_vector(context, aggregate))
    timings.bytes["global_download"] = sum(map(len, frames))
    if mode == "single-key":
        received = timings.timed("decrypt", decode_vector, context, frames)
        result = timings.timed("decrypt", decrypt_vector, context, keys.secret, received)
    else:
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
    expected = np.sum([w * x for w, x in zip(weights, inputs, strict=True)], axis=0)
    # Encryption and partial decryption happen once per client, in parallel in a
    # real federation: report them per client.
    for name in ("encrypt", "receive", "partial_decrypt"):
        if name in timings.seconds:
            timings.seconds[name] /= parties
    timings.seconds["keygen"] /= parties
    return HeRound(
        mode,
        parties,
        inputs[0].size,
        float(np.abs(result - expected).max()),
        context.error_bound(parties),
        timings.seconds,
        timings.bytes,
        len(aggregate.ciphertexts),
    )


def warm_up(context: CkksContext, mode: str, clients: int) -> None:
    """An untimed round on two values: OpenFHE's first use of a context builds tables
    that would otherwise land in the first measured step, and the ring path's
    self-test runs (once per context and process)."""
    tiny: list[FloatArray] = [np.zeros(2) for _ in range(clients)]
    run_round(context, mode, tiny, np.full(clients, 1.0 / clients))


def decrypt_seconds(result: HeRound) -> float:
    """All decryption work of one round, from the aggregate's bytes: threshold, every
    client's decoding and partial decryption and one fusion; single-key, one decryption."""
    seconds = result.seconds
    if result.mode != "threshold":
        return seconds["decrypt"]
    return (seconds["receive"] + seconds["partial_decrypt"]) * result.parties + seconds["fuse"]


def _fuse(context: CkksContext, joint: JointPublicKey, sent: list[list[bytes]],
          digest: str) -> FloatArray:
    """What a client does with the partial decryptions it downloads."""
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
    "pdec/cl",
    "fuse/dec",
    "up B/val",
    "max error",
)


def format_header() -> str:
    return " | ".join(f"{name:>10}" for name in COLUMNS)


def format_row(result: HeRound) -> str:
    seconds = result.seconds
    finish = seconds.get("fuse", seconds.get("decrypt", 0.0))
    cells = [
        result.mode,
        str(result.parties),
        str(result.length),
        f"{seconds['keygen']:.4f}s",
        f"{seconds['encrypt']:.3f}s",
        f"{seconds['aggregate']:.3f}s",
        f"{seconds.get('partial_decrypt', 0.0):.3f}s",
        f"{finish:.3f}s",
        f"{result.bytes['upload_per_client'] / max(result.length, 1):.2f}",
        f"{result.max_error:.1e}",
    ]
    return " | ".join(f"{cell:>10}" for cell in cells)


def flooding_comparison(parties: int, size: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Precision and time of threshold decryption with fixed vs flooded noise."""
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
            "partial_decrypt_s": result.seconds["partial_decrypt"],
            "fuse_s": result.seconds["fuse"],
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
    print(
        "seconds: keygen per party, encrypt and partial decrypt per client; "
        "up B/val: upload bytes per value"
    )
    print(format_header())
    results = benchmark(args.sizes, args.parties, args.modes)
    print("\nthreshold decryption noise, N=3, 100000 values:")
    flooding = flooding_comparison(3, 100_000)
    for name, row in flooding.items():
        print(
            f"  {name:>8}: max error {row['max_error']:.2e} (bound {row['error_bound']:.2e}), "
            f"partial decrypt {row['partial_decrypt_s']:.3f}s/client, "
            f"fuse {row['fuse_s']:.3f}s, scale 2^{row['scale_bits']:.0f}"
        )
    write_json(args.output, results, {"noise": flooding})
    print(f"\nwrote {args.output}")
    return 0
