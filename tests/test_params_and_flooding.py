"""CkksParams validation and fingerprints; noise flooding really applied, and its cost."""

from __future__ import annotations

import numpy as np
import pytest
from crypto_helpers import aggregate, encrypted_inputs, make_federation

from threshold_fl.crypto import (
    CkksParams,
    DecryptionNoise,
    ScalingTechnique,
    SecurityLevel,
    context_for,
    fuse_partial_decryptions,
    partial_decrypt,
    with_noise_flooding,
)
from threshold_fl.errors import ParameterError


def test_defaults_resolve_to_a_secure_ring() -> None:
    params = CkksParams()
    assert params.resolved_ring_dimension == 8192
    assert params.values_per_ciphertext == 8192


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ring_dimension": 4096}, "not 128-classic-bit secure"),
        ({"ring_dimension": 3000}, "power of two"),
        ({"scaling_mod_size": 60}, "scaling_mod_size"),
        ({"first_mod_size": 50}, "first_mod_size"),
        ({"batch_size": 3}, "batch_size"),
        ({"batch_size": 8192}, "batch_size"),
        ({"scaling_technique": "bogus"}, "scaling_technique must be one of"),
        ({"security_level": "not-set"}, "explicit ring_dimension"),
        ({"decryption_noise": "flooding"}, "with_noise_flooding"),
        ({"noise_estimate_bits": 3.0}, "only meaningful"),
        ({"value_bound": 0.0}, "value_bound"),
        ({"value_bound": float("nan")}, "value_bound"),
        ({"ring_dimension": True}, "must be an int"),
        ({"statistical_security": 29}, "statistical_security must be an int in \\[30, 128\\]"),
        ({"statistical_security": 30.0}, "statistical_security must be an int"),
        ({"decryption_queries": 0}, "decryption_queries must be an int in \\[1, "),
        ({"decryption_queries": True}, "decryption_queries must be an int"),
        ({"decryption_noise": "flooding", "noise_estimate_bits": 6.5,
          "statistical_security": 60}, "error of 3.5 against values up to 16; lower "),
        ({"decryption_noise": "flooding", "noise_estimate_bits": 6.5,
          "decryption_queries": 1 << 40}, "needs noise of 2\\^43.3"),
    ],
)
def test_invalid_parameters_are_refused_before_openfhe(changes: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        CkksParams(**changes)


def test_flooding_needs_fixed_manual_scaling() -> None:
    with pytest.raises(ParameterError, match="fixed-manual"):
        CkksParams(
            decryption_noise=DecryptionNoise.FLOODING,
            noise_estimate_bits=8.0,
            scaling_technique=ScalingTechnique.FLEXIBLE_AUTO,
        )


def test_fingerprint_is_stable_and_sensitive() -> None:
    assert CkksParams().fingerprint() == CkksParams().fingerprint()
    assert CkksParams().fingerprint() == CkksParams.from_dict(CkksParams().to_dict()).fingerprint()
    variants = [
        CkksParams(scaling_mod_size=50),
        CkksParams(value_bound=8.0),
        CkksParams(security_level=SecurityLevel.CLASSIC_192),
        CkksParams(ring_dimension=16384),
        CkksParams(decryption_queries=1),
        CkksParams(statistical_security=40),
    ]
    assert len({CkksParams().fingerprint(), *(v.fingerprint() for v in variants)}) == 7


def test_from_dict_rejects_unknown_and_malformed_fields() -> None:
    with pytest.raises(ParameterError, match="unknown"):
        CkksParams.from_dict({"ring_size": 1})
    with pytest.raises(ParameterError):
        CkksParams.from_dict({"scaling_mod_size": "55"})
    with pytest.raises(ParameterError):
        CkksParams.from_dict([1, 2])


def _share_noise(context, parties: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(max error vs exact, std of the difference of two fusions with fresh main shares)."""
    federation = make_federation(context, parties)
    rng = np.random.default_rng(3)
    inputs = [rng.uniform(-1, 1, context.values_per_ciphertext) for _ in range(parties)]
    total = aggregate(
        context,
        federation.joint.key_id,
        encrypted_inputs(federation, inputs, np.ones(parties) / parties),
    )
    first = [partial_decrypt(context, s, total, lead=i == 1) for i, s in federation.secrets.items()]
    again = [*first[:-1], partial_decrypt(context, federation.secrets[parties], total, lead=False)]
    one = fuse_partial_decryptions(context, federation.joint, first)
    two = fuse_partial_decryptions(context, federation.joint, again)
    error = float(np.abs(one - np.mean(inputs, axis=0)).max())
    # Both fusions differ only by the last party's share noise: its size in slots.
    return error, float(
        np.std(one - two) * 2.0**context.scale_bits / context.params.encoding_divisor
    )


def test_noise_flooding_is_really_applied_and_stays_within_its_bound() -> None:
    fixed = context_for(CkksParams())
    flooded = context_for(with_noise_flooding(CkksParams(), 3))
    fixed_error, fixed_noise = _share_noise(fixed, 3)
    flood_error, flood_noise = _share_noise(flooded, 3)
    # Per-share noise (coefficient domain, times sqrt(2N) in slots) must be above
    # OpenFHE's fixed 2^20: 2^(estimate + 16.8) for flooding, where the estimate of
    # our one-limb aggregate is about 5.8 bits (so about 6x the fixed noise).
    assert flooded.params.decryption_noise_bits() > 22
    assert flood_noise > 4 * fixed_noise
    assert np.log2(flood_noise) > flooded.params.decryption_noise_bits() - 1
    assert fixed_error < fixed.error_bound(3)
    assert flood_error < flooded.error_bound(3)
