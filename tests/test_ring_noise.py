"""The flooding-noise sampler of threshold_fl.crypto.noise: distribution, stream, hygiene."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from threshold_fl.crypto import noise
from threshold_fl.crypto.noise import AesCtrStream, GaussianSampler, reduce_mod, wipe
from threshold_fl.errors import ParameterError

SAMPLES = 1_000_000
KEY = bytes(range(32))
NONCE = bytes(16)
KERNELS = ["numpy"] + (["numba"] if noise._compiled() else [])


@pytest.fixture(params=KERNELS)
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the numpy Box-Muller and (where numba works) the compiled one."""
    monkeypatch.setattr(noise, "_kernel_ok", request.param == "numba")
    return str(request.param)


@pytest.mark.parametrize("log_sigma", [10, 22.6, 30, 45, 56])
def test_moments_and_tail(log_sigma: float, kernel: str) -> None:
    sigma = 2.0**log_sigma
    sampler = GaussianSampler(sigma)
    x = sampler.sample(SAMPLES)
    assert x.dtype == np.int64
    assert int(np.abs(x).max()) <= sampler.tail_bound
    assert sampler.tail_bound <= 8.66 * sigma * (1 + 5 / math.sqrt(sigma)) + 1
    values = x.astype(np.float64)
    mean, std = values.mean(), values.std()
    assert abs(mean) < 5 * sigma / math.sqrt(SAMPLES)
    assert abs(std / sigma - 1) < 0.01
    kurtosis = float(np.mean((values - mean) ** 4) / std**4)
    assert abs(kurtosis - 3) < 0.05  # standard error sqrt(24 / 10^6) = 0.005


@pytest.mark.parametrize("log_sigma", [24, 30, 56])
def test_low_bits_are_uniform_even_beyond_double_precision(log_sigma: float, kernel: str) -> None:
    """At 2^56 a double alone (spacing 2^4 near 8 sigma) would leave the low bits mostly 0;
    the fine part of the sample must restore them."""
    x = GaussianSampler(2.0**log_sigma).sample(1 << 18)
    counts = np.bincount((x & 15).astype(np.intp), minlength=16)
    expected = x.size / 16
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 50  # 15 degrees of freedom: p < 1e-5


def test_tail_probability_matches_the_gaussian(kernel: str) -> None:
    sigma = 2.0**20
    x = GaussianSampler(sigma).sample(SAMPLES)
    beyond = float(np.mean(np.abs(x) > 3 * sigma))
    expected = math.erfc(3 / math.sqrt(2))  # 0.0027
    assert abs(beyond - expected) < 5 * math.sqrt(expected / SAMPLES)


@pytest.mark.skipif("numba" not in KERNELS, reason="numba is not available here")
def test_the_compiled_kernel_computes_numpys_normals() -> None:
    """Same words, same formulas: equal but for an occasional last-bit difference
    between libm's and numpy's cosine."""
    words = AesCtrStream(KEY, NONCE).read_uint64(1 << 18)
    compiled = np.empty(words.size)
    noise._nb_box_muller(words.copy(), compiled)
    reference = noise._np_box_muller(words)
    np.testing.assert_allclose(compiled, reference, rtol=1e-13, atol=0)
    assert np.mean(compiled == reference) > 0.99


def test_default_samplers_are_seeded_independently() -> None:
    assert not np.array_equal(
        GaussianSampler(2.0**30).sample(64), GaussianSampler(2.0**30).sample(64)
    )


def test_key_and_nonce_make_the_noise_deterministic() -> None:
    first = GaussianSampler(2.0**40, key=KEY, nonce=NONCE)
    again = GaussianSampler(2.0**40, key=KEY, nonce=NONCE)
    other_nonce = GaussianSampler(2.0**40, key=KEY, nonce=bytes(15) + b"\x01")
    other_key = GaussianSampler(2.0**40, key=bytes(32), nonce=NONCE)
    sample = first.sample(1000)
    assert np.array_equal(sample, again.sample(1000))
    assert not np.array_equal(sample, other_nonce.sample(1000))
    assert not np.array_equal(sample, other_key.sample(1000))
    assert not np.array_equal(sample, first.sample(1000))  # the stream goes on


def test_the_stream_is_aes_256_ctr() -> None:
    """NIST SP 800-38A, F.5.5 (CTR-AES256.Encrypt), block 1: keystream = C xor P."""
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plaintext = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    ciphertext = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228")
    keystream = bytes(p ^ c for p, c in zip(plaintext, ciphertext, strict=True))
    words = AesCtrStream(key, counter).read_uint64(2)
    assert words.tobytes() == keystream


def test_sample_mod_is_one_polynomial_reduced_per_limb() -> None:
    moduli = [1152921504606830593, 576460752303439873, 65537]
    sampler = GaussianSampler(2.0**30, key=KEY, nonce=NONCE)
    residues = sampler.sample_mod(4096, moduli)
    x = GaussianSampler(2.0**30, key=KEY, nonce=NONCE).sample(4096)
    assert residues.shape == (3, 4096) and residues.dtype == np.uint64
    for row, q in zip(residues, moduli, strict=True):
        assert row.tolist() == [value % q for value in x.tolist()]  # negative x -> q - |x|


def test_reduce_mod_edges() -> None:
    values = np.array([0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63)], dtype=np.int64)
    for q in (3, 2**61 - 1, 2**63 - 25):
        assert reduce_mod(values, [q])[0].tolist() == [v % q for v in values.tolist()]
    with pytest.raises(ParameterError):
        reduce_mod(values, [2**63])
    with pytest.raises(ParameterError):
        reduce_mod(values.astype(np.float64), [3])  # type: ignore[arg-type, unused-ignore]


def test_small_and_empty_counts() -> None:
    sampler = GaussianSampler(2.0**20)
    assert sampler.sample(0).shape == (0,)
    assert sampler.sample(1).shape == (1,)
    assert sampler.sample_mod(3, [65537]).shape == (1, 3)


@pytest.mark.parametrize("sigma", [0.5, 2.0**57, math.nan, math.inf, -1.0])
def test_sigma_out_of_range_raises(sigma: float) -> None:
    with pytest.raises(ParameterError):
        GaussianSampler(sigma)


def test_bad_key_or_nonce_raises() -> None:
    with pytest.raises(ParameterError):
        AesCtrStream(bytes(16))  # AES-128 key: we want AES-256
    with pytest.raises(ParameterError):
        AesCtrStream(KEY, bytes(12))


def test_wipe_zeroes_arrays_and_bytearrays() -> None:
    array = GaussianSampler(2.0**20).sample(100)
    buffer = bytearray(b"secret")
    wipe(array)
    wipe(buffer)
    assert not array.any() and buffer == bytearray(6)


def test_no_non_cryptographic_generator_in_the_source() -> None:
    source = inspect.getsource(noise)
    assert "np.random" not in source and "random." not in source
    assert "import random" not in source and "secrets" not in source
