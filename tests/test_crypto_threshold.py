"""Threshold key agreement and refusal to mix keys or parameters (t-of-N decryption on
ring arrays is tested in test_threshold_shares.py)."""

from __future__ import annotations

import numpy as np
import pytest
from crypto_helpers import Federation, aggregate, encrypted_inputs, make_federation

from threshold_fl.crypto import (
    CkksParams,
    EncryptedSum,
    EncryptedVector,
    combine_public_shares,
    context_for,
    decrypt_vector,
    encrypt_vector,
    fuse_partial_decryptions,
    generate_keypair,
    lead_keygen,
    member_keygen,
    partial_decrypt,
)
from threshold_fl.crypto.wire import encode_vector
from threshold_fl.errors import (
    KeyMismatchError,
    ParameterError,
    ThresholdFLError,
)

CONTEXT = context_for(CkksParams())
OTHER_CONTEXT = context_for(CkksParams(scaling_mod_size=50))
N = 5


@pytest.fixture(scope="module")
def federation() -> Federation:
    return make_federation(CONTEXT, N)


@pytest.fixture(scope="module")
def round_data(federation: Federation) -> tuple[EncryptedVector, np.ndarray]:
    rng = np.random.default_rng(7)
    inputs = [rng.uniform(-4, 4, 2 * CONTEXT.values_per_ciphertext + 3) for _ in range(N)]
    weights = rng.dirichlet(np.ones(N))
    total = aggregate(
        CONTEXT, federation.joint.key_id, encrypted_inputs(federation, inputs, weights)
    )
    return total, np.sum([w * x for w, x in zip(weights, inputs, strict=True)], axis=0)


def test_vectors_under_different_keys_cannot_be_aggregated(federation: Federation) -> None:
    other = generate_keypair(CONTEXT)
    total = EncryptedSum(CONTEXT, federation.joint.key_id, 4)
    total.add(encrypt_vector(CONTEXT, federation.joint.key, np.ones(4), weight=0.5))
    with pytest.raises(KeyMismatchError, match="not the aggregation key"):
        total.add(encrypt_vector(CONTEXT, other.public, np.ones(4), weight=0.5))


def test_relabelled_vector_is_refused_by_openfhe_key_tags(federation: Federation) -> None:
    single = generate_keypair(CONTEXT)
    first = encrypt_vector(CONTEXT, single.public, np.ones(4))
    other = generate_keypair(CONTEXT)
    relabelled = EncryptedVector(
        CONTEXT.fingerprint,
        single.public.key_id,
        4,
        encrypt_vector(CONTEXT, other.public, np.ones(4)).ciphertexts,
    )
    total = EncryptedSum(CONTEXT, single.public.key_id, 4)
    total.add(first)
    with pytest.raises(KeyMismatchError, match="cannot be combined"):
        total.add(relabelled)


def test_vectors_under_other_parameters_are_refused(federation: Federation) -> None:
    keys = generate_keypair(OTHER_CONTEXT)
    vector = encrypt_vector(OTHER_CONTEXT, keys.public, np.ones(4))
    total = EncryptedSum(CONTEXT, keys.public.key_id, 4)
    with pytest.raises(KeyMismatchError, match="other CKKS parameters"):
        total.add(vector)
    with pytest.raises(KeyMismatchError, match="other CKKS parameters"):
        member_keygen(CONTEXT, 2, keys.public)


def test_decrypting_with_the_wrong_key_is_refused(federation: Federation) -> None:
    keys, other = generate_keypair(CONTEXT), generate_keypair(CONTEXT)
    vector = encrypt_vector(CONTEXT, keys.public, np.ones(4))
    with pytest.raises(KeyMismatchError):
        decrypt_vector(CONTEXT, other.secret, vector)
    with pytest.raises(KeyMismatchError):
        partial_decrypt(CONTEXT, federation.secrets[1], vector, lead=True)


def test_partials_of_different_ciphertexts_or_keys_are_not_fused(
    federation: Federation, round_data: tuple[EncryptedVector, np.ndarray]
) -> None:
    total, _ = round_data
    other_total = aggregate(
        CONTEXT,
        federation.joint.key_id,
        encrypted_inputs(federation, [np.zeros(total.length)]),
    )
    partials = [
        partial_decrypt(CONTEXT, federation.secrets[i], total, lead=i == 1) for i in range(1, N)
    ]
    partials.append(partial_decrypt(CONTEXT, federation.secrets[N], other_total, lead=False))
    with pytest.raises(KeyMismatchError, match="another key or ciphertext"):
        fuse_partial_decryptions(CONTEXT, federation.joint, partials)
    other_federation = make_federation(CONTEXT, N)
    with pytest.raises(KeyMismatchError):
        fuse_partial_decryptions(CONTEXT, other_federation.joint, partials[:-1] + partials[:1])


def test_second_partial_from_one_party_is_refused(
    federation: Federation, round_data: tuple[EncryptedVector, np.ndarray]
) -> None:
    total, _ = round_data
    partials = [
        partial_decrypt(CONTEXT, federation.secrets[i], total, lead=i == 1) for i in range(1, N + 1)
    ]
    with pytest.raises(KeyMismatchError, match="more than one"):
        fuse_partial_decryptions(CONTEXT, federation.joint, [*partials, partials[2]])


def test_share_not_in_joint_key_cannot_be_bound(federation: Federation) -> None:
    stranger = member_keygen(CONTEXT, 2, federation.parties[0].public_share)
    with pytest.raises(KeyMismatchError, match="not part of joint key"):
        federation.joint.bind(stranger)


def test_joint_key_needs_the_lead() -> None:
    lead = lead_keygen(CONTEXT, 1)
    member = member_keygen(CONTEXT, 2, lead.public_share)
    with pytest.raises(ParameterError, match="lead"):
        combine_public_shares(CONTEXT, {2: member.public_share}, 1)


def test_weights_beyond_capacity_and_values_beyond_bound_are_refused(
    federation: Federation,
) -> None:
    key = federation.joint.key
    for weight in (CONTEXT.weight_capacity * 1.01, 0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ParameterError, match=r"the weight must be in \(0, "):
            encrypt_vector(CONTEXT, key, np.ones(3), weight=weight)
    with pytest.raises(ParameterError, match="must be a number"):
        encrypt_vector(CONTEXT, key, np.ones(3), weight=True)
    with pytest.raises(ParameterError, match="exceeds value_bound"):
        encrypt_vector(CONTEXT, federation.joint.key, np.array([0.0, 17.0]))
    with pytest.raises(ParameterError, match="not finite"):
        encrypt_vector(CONTEXT, federation.joint.key, np.array([np.inf]))
    with pytest.raises(ParameterError, match="1-D"):
        encrypt_vector(CONTEXT, federation.joint.key, np.ones((2, 2)))
    with pytest.raises(ThresholdFLError, match="nothing was added"):
        EncryptedSum(CONTEXT, federation.joint.key_id, 3).result()


def test_uploads_are_one_limb_and_the_sum_only_adds(federation: Federation) -> None:
    """Clients pre-weight and rescale: 16 B/value on the wire, and no level is spent."""
    rng = np.random.default_rng(11)
    length = CONTEXT.values_per_ciphertext
    inputs = [rng.uniform(-1, 1, length) for _ in range(N)]
    weights = rng.dirichlet(np.ones(N))
    vectors = encrypted_inputs(federation, inputs, weights)
    assert all(c.GetLevel() == CONTEXT.upload_level == 1 for v in vectors for c in v.ciphertexts)
    wire = sum(map(len, encode_vector(CONTEXT, vectors[0])))
    # one limb: two polynomials of ring_dimension 64-bit words for 2 * slots values
    assert 16 <= wire / length < 16.5
    first_bytes = CONTEXT.serialize(vectors[0].ciphertexts[0])
    total = aggregate(CONTEXT, federation.joint.key_id, vectors)
    assert CONTEXT.serialize(vectors[0].ciphertexts[0]) == first_bytes  # inputs not mutated
    assert all(c.GetLevel() == 1 for c in total.ciphertexts)
    partials = [partial_decrypt(CONTEXT, s, total, lead=i == 1)
                for i, s in federation.secrets.items()]
    result = fuse_partial_decryptions(CONTEXT, federation.joint, partials)
    expected = np.sum([w * x for w, x in zip(weights, inputs, strict=True)], axis=0)
    np.testing.assert_allclose(result, expected, rtol=0, atol=CONTEXT.error_bound(N))


def test_an_input_at_another_level_is_refused_before_it_joins(federation: Federation) -> None:
    key = federation.joint.key
    two_limbs = CONTEXT.native.Encrypt(key.native, CONTEXT.encode(np.ones(4) / 32))
    total = EncryptedSum(CONTEXT, federation.joint.key_id, 4)
    total.add(encrypt_vector(CONTEXT, key, np.ones(4), weight=0.5))
    with pytest.raises(ParameterError, match="at level 0 with scale degree 1"):
        total.add_chunks([two_limbs])
    assert total.inputs == 1  # the refused input left the sum as it was
    total.add(encrypt_vector(CONTEXT, key, np.ones(4), weight=0.5))
    result = total.result()
    with pytest.raises(ParameterError, match="already taken"):
        total.add(encrypt_vector(CONTEXT, key, np.ones(4), weight=0.5))
    partials = [partial_decrypt(CONTEXT, s, result, lead=i == 1)
                for i, s in federation.secrets.items()]
    np.testing.assert_allclose(fuse_partial_decryptions(CONTEXT, federation.joint, partials),
                               np.ones(4), atol=CONTEXT.error_bound(N))
