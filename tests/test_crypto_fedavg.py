"""FedAvg equivalence on real OpenFHE: decrypted aggregate vs the numpy weighted average.

The bound is CkksContext.error_bound(N): 8 standard deviations of N partial
decryption noises (2^20 per coefficient) summed over the ring, over the scale
2^55, times the encoding divisor 2 * value_bound.  About 1.5e-6 for N=5.
"""

from __future__ import annotations

import numpy as np
import pytest
from crypto_helpers import Federation, aggregate, encrypted_inputs, make_federation

from threshold_fl.crypto import (
    CkksParams,
    DecryptionNoise,
    EncryptedVector,
    context_for,
    decrypt_vector,
    encrypt_vector,
    fuse_partial_decryptions,
    generate_keypair,
    partial_decrypt,
    threshold_params,
)
from threshold_fl.errors import CryptoError

CONTEXT = context_for(CkksParams())
S = CONTEXT.values_per_ciphertext
LENGTHS = [0, 1, S - 1, S, S + 1, 3 * S + 5]
PARTIES = [1, 2, 3, 5, 7]


def _inputs(
    rng: np.random.Generator, parties: int, length: int
) -> tuple[list[np.ndarray], np.ndarray]:
    bound = CONTEXT.params.value_bound
    inputs = [rng.uniform(-bound, bound, length) for _ in range(parties)]
    return inputs, rng.dirichlet(np.ones(parties))


def _expected(inputs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.sum([w * x for w, x in zip(weights, inputs, strict=True)], axis=0).reshape(-1)


def test_bound_is_about_one_in_a_million() -> None:
    assert CONTEXT.error_bound(7) < 2e-6


@pytest.mark.parametrize("parties", PARTIES)
@pytest.mark.parametrize("length", LENGTHS)
def test_single_key_fedavg_matches_numpy(
    rng: np.random.Generator, parties: int, length: int
) -> None:
    keys = generate_keypair(CONTEXT)
    inputs, weights = _inputs(rng, parties, length)
    vectors = [encrypt_vector(CONTEXT, keys.public, x, weight=float(w))
               for x, w in zip(inputs, weights, strict=True)]
    result = decrypt_vector(CONTEXT, keys.secret, aggregate(CONTEXT, keys.public.key_id, vectors))
    assert result.shape == (length,)
    np.testing.assert_allclose(
        result, _expected(inputs, weights), rtol=0, atol=CONTEXT.error_bound(parties)
    )


@pytest.mark.parametrize("parties", PARTIES)
@pytest.mark.parametrize("length", LENGTHS)
def test_threshold_fedavg_matches_numpy(
    rng: np.random.Generator, parties: int, length: int
) -> None:
    federation = make_federation(CONTEXT, parties)
    inputs, weights = _inputs(rng, parties, length)
    total = aggregate(
        CONTEXT, federation.joint.key_id, encrypted_inputs(federation, inputs, weights)
    )
    partials = [
        partial_decrypt(CONTEXT, secret, total, lead=index == 1)
        for index, secret in federation.secrets.items()
    ]
    result = fuse_partial_decryptions(
        CONTEXT, federation.joint, partials, vector_digest=total.digest
    )
    assert result.shape == (length,)
    np.testing.assert_allclose(
        result, _expected(inputs, weights), rtol=0, atol=CONTEXT.error_bound(parties)
    )


def _three_party_round(rng: np.random.Generator) -> tuple[Federation, EncryptedVector]:
    federation = make_federation(CONTEXT, 3)
    inputs = encrypted_inputs(federation, [rng.uniform(-1, 1, 10)] * 3, np.ones(3) / 3)
    return federation, aggregate(CONTEXT, federation.joint.key_id, inputs)


def test_one_lead_share_is_needed_for_fusion(rng: np.random.Generator) -> None:
    federation, total = _three_party_round(rng)
    partials = [partial_decrypt(CONTEXT, s, total, lead=False) for s in federation.secrets.values()]
    with pytest.raises(CryptoError, match="exactly one lead"):
        fuse_partial_decryptions(CONTEXT, federation.joint, partials)


def test_threshold_without_all_shares_is_refused(rng: np.random.Generator) -> None:
    federation, total = _three_party_round(rng)
    partials = [partial_decrypt(CONTEXT, federation.secrets[i], total, lead=i == 1) for i in (1, 2)]
    with pytest.raises(CryptoError, match=r"missing \[3\]"):
        fuse_partial_decryptions(CONTEXT, federation.joint, partials)


@pytest.mark.parametrize("parties", [2, 3, 5, 7])
def test_flooded_threshold_fedavg_stays_within_its_bound(
    rng: np.random.Generator, parties: int
) -> None:
    context = context_for(threshold_params(parties))
    assert context.params.decryption_noise is DecryptionNoise.FLOODING
    federation = make_federation(context, parties)
    length = context.values_per_ciphertext + 1
    bound = context.params.value_bound
    inputs = [rng.uniform(-bound, bound, length) for _ in range(parties)]
    weights = rng.dirichlet(np.ones(parties))
    total = aggregate(
        context, federation.joint.key_id, encrypted_inputs(federation, inputs, weights)
    )
    partials = [
        partial_decrypt(context, s, total, lead=i == 1) for i, s in federation.secrets.items()
    ]
    result = fuse_partial_decryptions(context, federation.joint, partials)
    np.testing.assert_allclose(
        result, _expected(inputs, weights), rtol=0, atol=context.error_bound(parties)
    )
