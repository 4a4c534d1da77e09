"""One threshold FedAvg round spelled out with the crypto API, in one process:
3 clients, real OpenFHE, a real torch model.  Run: ``python examples/threshold_round.py``.

Each client trains its own copy of a small CNN (with BatchNorm) for a few steps
on its own data, then the federation runs one round of threshold FedAvg: key
agreement with no key authority (and t-of-N Shamir dealing of the key shares),
encryption of the flat model, weighted aggregation of ciphertexts, and joint
decryption by blind fusion: t clients send masked shares, the aggregator adds them
to c0, and the clients remove the pad.  It prints each step's time and bytes and
the decrypted model's distance from plaintext FedAvg.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from threshold_fl.arrays import U64Array
from threshold_fl.bench.crypto import Timings
from threshold_fl.crypto import (
    EncryptedSum,
    combine_public_shares,
    context_for,
    encrypt_vector,
    lead_keygen,
    member_keygen,
    threshold_params,
)
from threshold_fl.crypto import threshold as th
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.shares import KeyLimbs, decode_sums
from threshold_fl.crypto.wire import (
    PolynomialRole,
    encode_key_share,
    encode_polynomials,
    encode_public_key,
    encode_vector,
)
from threshold_fl.ml import flatten_state, restore_state


class SmallCnn(nn.Module):
    """2 conv + 2 FC with BatchNorm, for 8x8 single-channel images and 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.classifier(self.features(images))
        return result


def train_locally(model: nn.Module, samples: int, seed: int, steps: int) -> None:
    """A few SGD steps on this client's own (synthetic, class-dependent) data."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    images = torch.randn(samples, 1, 8, 8, generator=generator) + labels.view(-1, 1, 1, 1) / 5
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for step in range(steps):
        batch = slice((step * 32) % samples, (step * 32) % samples + 32)
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()


def _kib(count: int) -> str:
    return f"{count / 1024:,.0f} KiB"


def _threshold_keys(context: Any, parties: Sequence[Any], threshold: int
                    ) -> dict[int, th.ThresholdKey]:
    """Every party deals t-of-N Shamir shares of its key share (sealed for each holder on
    the wire, as KEY_SHARE frames); holder j adds the shares it holds."""
    dealt = {}
    for party in parties:
        with KeyLimbs(context, party.secret.native) as secret:
            dealt[party.index] = th.deal(secret, len(parties), threshold)
    encode_key_share(context, dealer_index=1, holder_index=2, parties=len(parties),
                     threshold=threshold, dealer_public_id=parties[0].public_share.key_id,
                     limbs=dealt[1][2])  # what one delivery carries
    return {j: th.threshold_key(j, [dealt[i][j] for i in dealt]) for j in dealt}


def _pair_keys(members: Sequence[int]) -> dict[int, dict[int, bytes]]:
    """Pairwise mask keys (the protocol derives them from the X25519 identities)."""
    keys: dict[int, dict[int, bytes]] = {j: {} for j in members}
    for a in members:
        for b in members:
            if a < b:
                keys[a][b] = keys[b][a] = os.urandom(32)
    return keys


def _frames(context: Any, role: PolynomialRole, key_id: str, length: int,
            arrays: U64Array) -> int:
    return sum(map(len, encode_polynomials(context, role, key_id, length, arrays)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One threshold FedAvg round, step by step.")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="local SGD steps per client")
    args = parser.parse_args(argv)
    if not 2 <= args.clients <= 20 or args.steps < 0:
        parser.error("--clients must be in 2..20 (t-of-N needs two) and --steps >= 0")
    torch.manual_seed(0)
    timings = Timings()
    context = context_for(threshold_params(args.clients))
    print(
        f"CKKS: ring {context.params.resolved_ring_dimension}, scale 2^{context.scale_bits:.0f}, "
        f"{context.values_per_ciphertext} values per ciphertext, "
        f"decryption noise {context.params.decryption_noise.value}, params "
        f"{context.fingerprint[:16]}"
    )

    global_model = SmallCnn()
    samples = [200 + 150 * i for i in range(args.clients)]
    local_vectors = []
    for index, count in enumerate(samples):
        model = SmallCnn()
        model.load_state_dict(global_model.state_dict())
        timings.timed("local training", train_locally, model, count, index, args.steps)
        vector, layout = flatten_state(model)
        local_vectors.append(vector)
    print(
        f"model: {layout.size:,} float values in {len(layout.tensors)} tensors "
        f"(non-float buffers kept out: {', '.join(layout.non_float) or 'none'})"
    )

    # Stage 1: key agreement, star topology, no key authority.
    lead = timings.timed("key agreement", lead_keygen, context, 1)
    parties = [lead] + [
        timings.timed("key agreement", member_keygen, context, i, lead.public_share)
        for i in range(2, args.clients + 1)
    ]
    timings.bytes["key agreement"] = sum(
        len(encode_public_key(context, p.public_share, party_index=p.index)) for p in parties
    )
    joint = timings.timed(
        "key agreement",
        combine_public_shares,
        context,
        {p.index: p.public_share for p in parties},
        1,
    )
    threshold = args.clients // 2 + 1
    keys = timings.timed("key agreement", _threshold_keys, context, parties, threshold)

    # Stage 3: each client encrypts its update times its FedAvg weight (its share of the
    # samples); the aggregator only adds; the clients decrypt jointly.
    weights = np.array(samples, dtype=np.float64) / sum(samples)
    total = EncryptedSum(context, joint.key_id, layout.size)
    for weight, vector in zip(weights, local_vectors, strict=True):
        encrypted = timings.timed("encrypt", encrypt_vector, context, joint.key, vector,
                                  weight=float(weight))
        timings.bytes["encrypt"] = timings.bytes.get("encrypt", 0) + sum(
            map(len, encode_vector(context, encrypted))
        )
        timings.timed("aggregate", total.add, encrypted)
    aggregate = timings.timed("aggregate", total.result)
    c0, c1, _ = th.ring_parts(context, aggregate)
    rounding = ShareRounding.of(context)  # shares travel rounded, in coefficient form
    dset = th.DecryptionSet(tuple(range(1, threshold + 1)), threshold, b"example")
    pair_keys, group = _pair_keys(dset.members), os.urandom(32)
    shares = [
        timings.timed("decryption shares", th.decryption_shares, c1, rounding, keys[j], dset,
                      sigma=th.threshold_kit(context).sigma, noise_seed=os.urandom(32),
                      pair_keys=pair_keys[j],
                      group_key=group if j == dset.pad_holder else None)
        for j in dset.members
    ]
    timings.seconds["decryption shares"] /= threshold  # the members work in parallel
    key_id, length = joint.key_id, layout.size
    timings.bytes["aggregate"] = _frames(context, PolynomialRole.C1, key_id, length, c1) * threshold
    timings.bytes["decryption shares"] = sum(
        _frames(context, PolynomialRole.SHARE, key_id, length, share) for share in shares)
    fused = timings.timed("blind fusion", th.blind_fusion, c0, shares, rounding)
    timings.bytes["blind fusion"] = _frames(context, PolynomialRole.FUSED, key_id, length,
                                            fused) * args.clients
    decrypted = timings.timed("unpad and decode", lambda: decode_sums(
        context, th.unpad(fused, group, dset, 0, rounding), length, coefficients=True))
    restore_state(global_model, decrypted, layout)

    plaintext = np.sum([w * v for w, v in zip(weights, local_vectors, strict=True)], axis=0)
    difference = decrypted - plaintext
    print(f"\n{'step':<20}{'seconds':>10}{'bytes on the wire':>20}")
    for step, seconds in timings.seconds.items():
        sent = timings.bytes.get(step)
        print(f"{step:<20}{seconds:>10.3f}{_kib(sent) if sent else '-':>20}")
    print(
        f"\n(bytes: encrypt = all uploads; aggregate = the c1 parts to each of the "
        f"{threshold} members of the decryption set; decryption shares = their shares to "
        "the aggregator; blind fusion = the padded result to every client)"
    )
    print(f"\ndecrypted global model vs plaintext FedAvg over {layout.size:,} values:")
    print(
        f"  max |difference| = {np.abs(difference).max():.2e}   "
        f"L2 distance = {np.linalg.norm(difference):.2e}   "
        f"bound per value = {context.error_bound(args.clients):.2e}"
    )
    within = bool(np.abs(difference).max() <= context.error_bound(args.clients))
    print("  within the bound: " + ("yes" if within else "NO"))
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
