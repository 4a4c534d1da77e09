"""Rounded shares and fused polynomials (threshold_fl.crypto.rounding): the error of a
round trip, the wire width, the compiled pass against numpy and a Python-int reference,
and the refusals of malformed bytes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from threshold_fl.arrays import U64Array
from threshold_fl.crypto import CkksParams, context_for, ntt, threshold_params
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.errors import FrameError, ParameterError

CONTEXT = context_for(threshold_params(3))
ROUNDING = ShareRounding.of(CONTEXT)
Q = ROUNDING.moduli[0]
N = CONTEXT.ring.ring_dimension


def _uniform(q: int, n: int) -> U64Array:
    """Test values uniform below q, edges included (not key material)."""
    words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) % np.uint64(q)
    edges = [0, 1, q - 1, q - 2, q - (1 << (ROUNDING.bits - 1)), (1 << ROUNDING.bits) - 1]
    return np.concatenate([np.array(edges, dtype=np.uint64), words])


def _signed_error(back: U64Array, values: U64Array, q: int) -> list[int]:
    out = []
    for a, b in zip(back.tolist(), values.tolist(), strict=True):
        d = (a - b) % q
        out.append(d - q if d > q // 2 else d)
    return out


@pytest.mark.parametrize("parties", [2, 3, 10, 50])
def test_default_parameters_drop_28_bits_and_send_4_bytes(parties: int) -> None:
    params = threshold_params(parties)
    rounding = ShareRounding(ROUNDING.moduli, params.share_rounding_bits())
    assert rounding.bits == 28 and rounding.width == 4
    # the rounding error's width (2^28 / sqrt(12)) is at most an eighth of the noise's
    assert 2.0 ** rounding.bits / 12 ** 0.5 <= 2.0 ** params.decryption_noise_bits() / 8


def test_a_round_trip_is_off_by_at_most_half_a_step_modulo_q() -> None:
    values = _uniform(Q, 20_000)
    rounded = values.copy()
    ROUNDING.round_into(rounded, Q)
    assert int(rounded.max()) < ROUNDING.levels(Q) <= 1 << (8 * ROUNDING.width)
    errors = _signed_error(ROUNDING.lift(rounded, Q), values, Q)
    assert max(abs(e) for e in errors) <= 1 << (ROUNDING.bits - 1)
    assert int(ROUNDING.lift(rounded, Q).max()) < Q
    # the error is spread over the whole step, not a constant offset
    assert np.std(errors) > (1 << ROUNDING.bits) / 4


def test_without_bits_nothing_changes_and_eight_bytes_travel() -> None:
    exact = ShareRounding(ROUNDING.moduli, 0)
    values = _uniform(Q, 1000)
    rounded = values.copy()
    exact.round_into(rounded, Q)
    np.testing.assert_array_equal(exact.lift(rounded, Q), values)
    assert exact.width == 8


def test_fixed_noise_parameters_round_less() -> None:
    params = CkksParams()  # OpenFHE's fixed 2^20 decryption noise
    assert params.share_rounding_bits() == 12


def test_bytes_round_trip_and_refuse_bad_lengths_and_values() -> None:
    values = _uniform(Q, N - 6)[:N].reshape(1, N)
    ROUNDING.round_into(values, Q)
    data = ROUNDING.to_bytes(values)
    assert len(data) == 4 * N
    np.testing.assert_array_equal(ROUNDING.from_bytes(data, 1, N, "share"), values)
    with pytest.raises(FrameError, match="share polynomial of"):
        ROUNDING.from_bytes(data[:-1], 1, N, "share")
    # every 4-byte value is below L = 2^32 here; a smaller modulus leaves values unused
    smaller = ShareRounding((Q // 3,), ROUNDING.bits)
    assert smaller.width == 4 and smaller.levels(Q // 3) < 1 << 32
    top = bytearray(data)
    top[:4] = smaller.levels(Q // 3).to_bytes(4, "little")
    with pytest.raises(FrameError, match="out of range"):
        smaller.from_bytes(bytes(top), 1, N, "share")


def test_the_share_pass_matches_numpy_and_a_python_reference(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c1, key, addend = (_uniform(Q, N)[:N] for _ in range(3))
    noise = np.frombuffer(os.urandom(8 * N), dtype=np.int64) >> 31  # about +-2^32
    compiled = ROUNDING.share(addend, c1, key, noise, Q)
    monkeypatch.setattr(ntt, "backend", lambda: "numpy")
    plain = ROUNDING.share(addend, c1, key, noise, Q)
    np.testing.assert_array_equal(compiled, plain)
    # reference: INTT(c1 * key) + noise + addend, rounded, with Python integers
    product = ntt.tables_for(N, Q).inverse(ntt.mul_mod(c1, key, Q, backend="numpy"),
                                           backend="numpy")
    half, step = 1 << (ROUNDING.bits - 1), 1 << ROUNDING.bits
    for i in (0, 1, N // 2, N - 1):
        exact = (int(product[i]) + int(noise[i]) + int(addend[i])) % Q
        assert int(plain[i]) == ((exact + half) // step) % ROUNDING.levels(Q)


def test_bad_roundings_are_refused() -> None:
    with pytest.raises(ParameterError, match="one-limb"):
        ShareRounding((Q, Q), 28)
    with pytest.raises(ParameterError, match="cannot drop"):
        ShareRounding((Q,), 60)
