"""Tests for threshold_fl.ml.privacy: Laplace noise on the plaintext coordinates only, and
the Laplace-mechanism epsilon accounting."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

import threshold_fl.ml as ml_package
import threshold_fl.ml.privacy as privacy_module
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml import (
    EncryptionMask,
    LaplaceNoise,
    PrivacyBudget,
    privacy_budget,
    select_random_fraction,
)
from threshold_fl.ml.privacy import SeededRandomness, laplace_samples


def _mask(length: int, indices: list[int]) -> EncryptionMask:
    return EncryptionMask(length, np.array(indices, dtype=np.int64))


def _models(rng: np.random.Generator, length: int, spread: float) -> tuple[FloatArray, ...]:
    """(update, global_model) with update - global uniform in [-spread, spread]."""
    base = rng.normal(size=length)
    return base + rng.uniform(-spread, spread, size=length), base


# --------------------------------------------------------------------------- noise


def test_lazy_export_is_the_module_object() -> None:
    assert LaplaceNoise is privacy_module.LaplaceNoise
    assert privacy_budget is privacy_module.privacy_budget
    assert {"LaplaceNoise", "PrivacyBudget", "privacy_budget"} <= set(ml_package.__all__)


def test_noise_has_laplace_mean_and_scale() -> None:
    length, b = 200_000, 0.5
    zeros = np.zeros(length)
    noise = LaplaceNoise(scale=b, clip=1.0).apply(zeros, zeros, EncryptionMask.empty(length),
                                                  SeededRandomness(1))
    # Standard errors at n = 200k: mean 0.0016, mean |x| 0.0011, variance 0.005 (for b=0.5).
    assert abs(noise.mean()) < 0.01
    assert np.abs(noise).mean() == pytest.approx(b, rel=0.01)
    assert noise.var() == pytest.approx(2 * b * b, rel=0.03)
    assert np.median(noise) == pytest.approx(0.0, abs=0.01)
    # Laplace tail: P(|X| > b) = 1/e.
    assert (np.abs(noise) > b).mean() == pytest.approx(math.exp(-1), abs=0.005)


def test_sampler_passes_a_ks_test_against_scipy_laplace() -> None:
    b = 0.25
    draws = laplace_samples(200_000, b, SeededRandomness(7))
    assert stats.kstest(draws, stats.laplace(scale=b).cdf).pvalue > 0.01
    # A wrong scale is rejected: the test can fail.
    assert stats.kstest(draws, stats.laplace(scale=1.05 * b).cdf).pvalue < 1e-6


def test_sampler_from_os_urandom_has_laplace_moments() -> None:
    b = 2.0
    draws = laplace_samples(50_000, b)  # the default source: os.urandom
    # Loose bounds (about 6 standard errors): mean se 0.013, variance se 0.18.
    assert abs(draws.mean()) < 0.08
    assert draws.var() == pytest.approx(2 * b * b, abs=1.2)
    assert len(np.unique(draws)) == draws.size


def test_sampler_maps_extreme_words_to_finite_values() -> None:
    # All-zero words: the smallest uniform 2**-53, i.e. the largest magnitude 53 ln 2 b,
    # no log(0); all-one words: uniform 1, magnitude 0, sign negative.
    low = laplace_samples(3, 1.0, lambda n: bytes(n))
    high = laplace_samples(3, 1.0, lambda n: b"\xff" * n)
    np.testing.assert_array_equal(low, np.full(3, 53 * math.log(2)))
    np.testing.assert_array_equal(np.abs(high), np.zeros(3))
    assert np.isfinite(low).all() and np.isfinite(high).all()


def test_sampler_uses_the_injected_bytes_deterministically() -> None:
    first = laplace_samples(1_000, 0.1, SeededRandomness(3))
    again = laplace_samples(1_000, 0.1, SeededRandomness(3))
    other = laplace_samples(1_000, 0.1, SeededRandomness(4))
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)
    source = SeededRandomness(3)
    assert not np.array_equal(laplace_samples(10, 0.1, source), laplace_samples(10, 0.1, source))


@pytest.mark.parametrize(("randomness", "words"), [
    (lambda n: bytes(n - 1), "exactly 16 bytes"),
    (lambda n: "x" * n, "str"),
    (42, "os.urandom"),
])
def test_sampler_rejects_a_bad_byte_source(randomness: Any, words: str) -> None:
    with pytest.raises(ParameterError, match=words):
        laplace_samples(2, 1.0, randomness)


def test_noise_only_on_plaintext_coordinates(rng: np.random.Generator) -> None:
    length = 10_000
    mask = select_random_fraction(length, 0.3, seed=7)
    update, base = _models(rng, length, spread=0.5)
    released = LaplaceNoise(scale=1.0, clip=1.0).apply(update, base, mask)
    changed = released != update
    assert not changed[mask.indices].any()
    assert changed[mask.plain_indices()].mean() > 0.999  # a Laplace draw is never exactly 0


def test_encrypted_coordinates_untouched_bit_for_bit(rng: np.random.Generator) -> None:
    length = 1_000
    mask = select_random_fraction(length, 0.5, seed=3)
    update = rng.normal(scale=1e6, size=length)  # far outside the clip bound
    update[mask.indices[:3]] = np.array([-0.0, 5e-324, np.finfo(np.float64).max])
    base = np.zeros(length)
    update_before, base_before = update.copy(), base.copy()
    released = LaplaceNoise(scale=0.1, clip=0.01).apply(update, base, mask)
    assert released[mask.indices].tobytes() == update[mask.indices].tobytes()
    assert np.signbit(released[mask.indices[0]])  # -0.0 stays -0.0
    assert released is not update
    assert update.tobytes() == update_before.tobytes()  # inputs are not modified
    assert base.tobytes() == base_before.tobytes()


def test_clipping_bounds_plaintext_step(rng: np.random.Generator) -> None:
    length, clip = 5_000, 0.25
    mask = select_random_fraction(length, 0.2, seed=11)
    update, base = _models(rng, length, spread=1.0)
    tiny = 1e-12  # noise negligible next to the tolerance below
    released = LaplaceNoise(scale=tiny, clip=clip).apply(update, base, mask)
    plain = mask.plain_indices()
    step, delta = released[plain] - base[plain], update[plain] - base[plain]
    np.testing.assert_allclose(step, np.clip(delta, -clip, clip), rtol=0, atol=1e-9)
    assert (np.abs(delta) > clip).mean() > 0.5  # the test really exercises clipping
    assert np.abs(step).max() <= clip + 1e-9


def test_same_seed_same_output() -> None:
    length = 2_000
    mask = select_random_fraction(length, 0.4, seed=5)
    update, base = _models(np.random.default_rng(1), length, spread=2.0)
    noise = LaplaceNoise(scale=0.3, clip=1.0)
    first = noise.apply(update, base, mask, SeededRandomness(42))
    again = noise.apply(update, base, mask, SeededRandomness(42))
    other = noise.apply(update, base, mask, SeededRandomness(43))
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)


# --------------------------------------------------------------------------- accounting


def test_full_mask_gives_zero_epsilon() -> None:
    budget = privacy_budget(LaplaceNoise(0.1, 1.0), EncryptionMask.full(100), rounds=50)
    assert budget == PrivacyBudget(0.0, 0.0, 50, 0, 0.0)


def test_empty_mask_gives_length_times_two_c_over_b() -> None:
    length, b, c = 100, 0.5, 0.2
    budget = privacy_budget(LaplaceNoise(b, c), EncryptionMask.empty(length))
    assert budget.epsilon_per_round == pytest.approx(length * 2 * c / b)
    assert budget.epsilon_total == budget.epsilon_per_round
    assert budget.rounds == 1
    assert budget.plain_coordinates == length
    assert budget.per_coordinate_epsilon == pytest.approx(2 * c / b)


def test_partial_mask_and_rounds_compose_linearly() -> None:
    mask = _mask(10, [0, 3, 9])  # 7 plaintext coordinates
    one = privacy_budget(LaplaceNoise(2.0, 1.0), mask)
    ten = privacy_budget(LaplaceNoise(2.0, 1.0), mask, rounds=10)
    assert one.epsilon_per_round == pytest.approx(7 * 2 * 1.0 / 2.0)
    assert ten.epsilon_per_round == one.epsilon_per_round
    assert ten.epsilon_total == pytest.approx(10 * one.epsilon_per_round)
    assert ten.plain_coordinates == 7


def test_custom_sensitivity_sums_plaintext_and_caps_at_two_c() -> None:
    mask = _mask(5, [1, 4])  # plaintext: 0, 2, 3
    sensitivity = np.array([0.5, 100.0, 0.0, 9.0, 100.0])  # 9.0 is capped at 2C = 2
    budget = privacy_budget(LaplaceNoise(0.5, 1.0), mask, rounds=3, sensitivity=sensitivity)
    assert budget.epsilon_per_round == pytest.approx((0.5 + 0.0 + 2.0) / 0.5)
    assert budget.epsilon_total == pytest.approx(3 * 5.0)
    assert budget.per_coordinate_epsilon == pytest.approx(2.0 / 0.5)
    integer = privacy_budget(LaplaceNoise(0.5, 1.0), mask, sensitivity=np.array([1, 0, 1, 1, 0]))
    assert integer.epsilon_per_round == pytest.approx(3 / 0.5)


def test_budget_str_is_one_readable_line() -> None:
    text = str(privacy_budget(LaplaceNoise(0.5, 0.25), _mask(4, [0]), rounds=10))
    assert "\n" not in text
    assert "epsilon = 3 per round" in text
    assert "30 over 10 round(s)" in text
    assert "3 plaintext coordinate(s)" in text


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("scale", "clip", "words"), [
    (0.0, 1.0, "noise scale b"), (-1.0, 1.0, "noise scale b"), (math.nan, 1.0, "> 0"),
    (math.inf, 1.0, "finite"), (True, 1.0, "real number"), ("1", 1.0, "real number"),
    (1.0, 0.0, "clip bound C"), (1.0, math.nan, "clip bound C"), (1.0, -math.inf, "> 0"),
])
def test_invalid_noise_parameters(scale: Any, clip: Any, words: str) -> None:
    with pytest.raises(ParameterError, match=words):
        LaplaceNoise(scale=scale, clip=clip)


def test_parameters_are_normalised_to_float() -> None:
    noise = LaplaceNoise(scale=np.float32(0.5), clip=2)  # type: ignore[arg-type]
    assert type(noise.scale) is float and type(noise.clip) is float


def _apply_with(**changes: Any) -> None:
    args: dict[str, Any] = {"update": np.zeros(4), "global_model": np.zeros(4),
                            "mask": _mask(4, [1]), "randomness": SeededRandomness(0)}
    args.update(changes)
    LaplaceNoise(1.0, 1.0).apply(**args)


@pytest.mark.parametrize(("changes", "words"), [
    ({"update": np.zeros(5)}, "update has 5 values but the mask covers 4"),
    ({"global_model": np.zeros(3)}, "global_model has 3 values"),
    ({"update": np.array([0.0, np.nan, 0.0, 0.0])}, "update holds NaN or infinity"),
    ({"global_model": np.array([np.inf, 0.0, 0.0, 0.0])}, "global_model holds NaN"),
    ({"update": np.zeros((2, 2))}, "1-D numpy float array"),
    ({"update": [0.0] * 4}, "flatten it"),
    ({"update": np.zeros(4, dtype=np.int64)}, "astype"),
    ({"mask": np.ones(4, dtype=bool)}, "mask must be an EncryptionMask"),
    ({"randomness": 42}, "os.urandom"),
])
def test_invalid_apply_arguments(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ParameterError, match=words):
        _apply_with(**changes)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"rounds": 0}, "rounds must be an int >= 1"),
    ({"rounds": -3}, "rounds must be an int >= 1"),
    ({"rounds": True}, "rounds must be an int"),
    ({"rounds": 2.0}, "rounds must be an int"),
    ({"sensitivity": np.array([1.0, -0.1, 1.0])}, "negative"),
    ({"sensitivity": np.array([1.0, np.nan, 1.0])}, "NaN"),
    ({"sensitivity": np.ones(4)}, "sensitivity has 4 values but the mask covers 3"),
])
def test_invalid_budget_arguments(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ParameterError, match=words):
        privacy_budget(LaplaceNoise(1.0, 1.0), _mask(3, [0]), **kwargs)


def test_invalid_budget_objects() -> None:
    with pytest.raises(ParameterError, match="noise must be a LaplaceNoise"):
        privacy_budget(0.5, _mask(3, [0]))  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="mask must be an EncryptionMask"):
        privacy_budget(LaplaceNoise(1.0, 1.0), None)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="epsilon_total must be a real number >= 0"):
        PrivacyBudget(1.0, -1.0, 1, 1, 1.0)
    with pytest.raises(ParameterError, match="plain_coordinates must be an int >= 0"):
        PrivacyBudget(1.0, 1.0, 1, -1, 1.0)
