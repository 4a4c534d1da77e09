"""Streamed aggregation of very long vectors: time and peak memory.

Each client's values are generated, encrypted and framed one ciphertext at a
time and streamed into EncryptedSum.add_chunks, as an aggregator would consume
them off the wire.  Peak memory should not grow with the number of clients.
    python examples/bench_streaming.py --length 1e7 --clients 2
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator

import numpy as np

from threshold_fl.crypto import (
    MAX_VECTOR_LENGTH,
    CkksContext,
    CkksParams,
    EncryptedSum,
    PublicKey,
    ciphertext_count,
    context_for,
    encrypt_chunks,
    generate_keypair,
)
from threshold_fl.crypto.frames import FrameKind, encode_frame
from threshold_fl.crypto.ring import build
from threshold_fl.crypto.wire import stream_vector


def client_frames(context: CkksContext, key: PublicKey, length: int, seed: int,
                  weight: float) -> Iterator[bytes]:
    """One frame per ciphertext, values drawn chunk by chunk (never the whole vector)."""
    rng = np.random.default_rng(seed)
    step = context.values_per_ciphertext
    count = ciphertext_count(context, length)
    for index, start in enumerate(range(0, length, step)):
        values = rng.uniform(-1, 1, min(step, length - start))
        blobs = [build(c)
                 for c in encrypt_chunks(context, key, values, weight=weight)]
        meta = {
            "key_id": key.key_id,
            "length": length,
            "aggregated": False,
            "first": index,
            "count": count,
        }
        yield encode_frame(FrameKind.CIPHERTEXTS, context.fingerprint, meta, blobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=float, default=1e7)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args(argv)
    length = int(args.length)
    if not 1 <= length <= MAX_VECTOR_LENGTH or not 1 <= args.clients <= 64:
        parser.error(f"--length must be in 1..{MAX_VECTOR_LENGTH} and --clients in 1..64")
    context = context_for(CkksParams())
    keys = generate_keypair(context)
    total = EncryptedSum(context, keys.public.key_id, length)
    start = time.perf_counter()
    for client in range(args.clients):
        frames = client_frames(context, keys.public, length, client, 1 / args.clients)
        total.add_chunks(stream_vector(context, frames, key_id=keys.public.key_id, length=length))
        print(f"client {client + 1}/{args.clients} aggregated", flush=True)
    total.result()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"length {length:.0e}, {args.clients} clients: {time.perf_counter() - start:.1f} s, "
        f"peak RSS {peak_mib:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
