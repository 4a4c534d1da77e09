"""Tests for threshold_fl.ml.mask: deterministic selection, a canonical encoding and an
exact split of vectors into encrypted and plain parts."""

from __future__ import annotations

import hashlib
import math
import pickle

import numpy as np
import numpy.typing as npt
import pytest

from threshold_fl.errors import ParameterError
from threshold_fl.ml import (
    EncryptionMask,
    first_and_last_layers,
    layout_of,
    select_random_fraction,
    select_top_fraction,
)
from threshold_fl.ml import mask as mask_module


def _reference_top(values: npt.NDArray[np.float64], count: int) -> set[int]:
    """Brute force: sort (value descending, index ascending) with Python's sort."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return set(order[:count])


def _mask(length: int, indices: list[int]) -> EncryptionMask:
    return EncryptionMask(length, np.array(indices, dtype=np.int64))


# --------------------------------------------------------------------------- top fraction


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 0.5, 0.99])
def test_top_fraction_matches_brute_force(rng: np.random.Generator, fraction: float) -> None:
    values = rng.random(1000) ** 3
    mask = select_top_fraction(values, fraction)
    count = math.ceil(fraction * 1000)
    assert mask.count == count
    assert set(mask.indices.tolist()) == _reference_top(values, count)


def test_top_fraction_with_many_ties_matches_brute_force(rng: np.random.Generator) -> None:
    values = rng.integers(0, 4, size=500).astype(np.float64)  # heavy ties
    mask = select_top_fraction(values, 0.3)
    assert set(mask.indices.tolist()) == _reference_top(values, 150)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 22])
def test_top_fraction_equals_a_stable_sort_across_tie_chunks(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(mask_module, "_TIE_CHUNK", chunk)  # ties found in several chunks
    values = rng.integers(0, 3, size=400).astype(np.float64)
    values[rng.random(400) < 0.2] = -0.0
    for fraction in (0.0, 0.05, 0.33, 0.5, 0.9, 1.0):
        count = math.ceil(fraction * 400)
        stable = np.sort(np.argsort(-values + 0.0, kind="stable")[:count])  # the old way
        assert np.array_equal(select_top_fraction(values, fraction).indices, stable)


def test_ties_go_to_the_lower_index() -> None:
    assert select_top_fraction(np.ones(10), 0.3).indices.tolist() == [0, 1, 2]
    values = np.array([1.0, 5.0, 2.0, 5.0, 5.0])
    assert select_top_fraction(values, 0.4).indices.tolist() == [1, 3]
    signed_zeros = np.array([0.0, -0.0, 0.0, -0.0])  # -0.0 is not negative, and ties with 0.0
    assert select_top_fraction(signed_zeros, 0.5).indices.tolist() == [0, 1]


def test_fraction_zero_and_one() -> None:
    values = np.arange(7, dtype=np.float64)
    assert select_top_fraction(values, 0.0) == EncryptionMask.empty(7)
    assert select_top_fraction(values, 1.0) == EncryptionMask.full(7)
    assert select_top_fraction(values, 1) == EncryptionMask.full(7)
    assert select_top_fraction(np.empty(0), 0.5) == EncryptionMask.empty(0)


@pytest.mark.parametrize(
    ("length", "fraction", "count"),
    [(10, 0.01, 1), (10, 0.11, 2), (10, 0.1, 1), (10, 0.7, 7), (100, 0.07, 7), (3, 0.5, 2)],
)
def test_count_is_the_ceiling_of_the_decimal_product(
    length: int, fraction: float, count: int
) -> None:
    # 0.07 * 100 == 7.000000000000001 in floats; the decimal reading gives 7.
    assert select_top_fraction(np.ones(length), fraction).count == count
    assert select_random_fraction(length, fraction, seed=1).count == count


def test_always_include_is_added_on_top() -> None:
    values = np.array([0.0, 0.0, 9.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    mask = select_top_fraction(values, 0.2, always_include=[(0, 2), (8, 10), (5, 5)])
    assert mask.indices.tolist() == [0, 1, 2, 3, 8, 9]
    overlapping = select_top_fraction(values, 0.2, always_include=[(2, 4), (3, 5)])
    assert overlapping.indices.tolist() == [2, 3, 4]
    only_ranges = select_top_fraction(values, 0.0, always_include=((4, 6),))
    assert only_ranges.indices.tolist() == [4, 5]


# --------------------------------------------------------------------------- determinism


def test_same_input_same_digest_and_different_masks_differ(rng: np.random.Generator) -> None:
    values = rng.random(257)
    first = select_top_fraction(values, 0.2, always_include=[(0, 3)])
    second = select_top_fraction(values.copy(), 0.2, always_include=[(0, 3)])
    assert first == second and hash(first) == hash(second)
    assert first.digest() == second.digest() and first.bits() == second.bits()
    assert select_top_fraction(values, 0.21).digest() != first.digest()
    # Same bits, different length: the digest still differs.
    assert _mask(8, [0]).bits() == _mask(7, [0]).bits()
    assert _mask(8, [0]).digest() != _mask(7, [0]).digest()
    assert _mask(8, [0]) != _mask(7, [0])


def test_digest_is_sha256_of_the_documented_encoding() -> None:
    mask = _mask(10, [0, 3, 9])
    assert mask.bits() == bytes([0b00001001, 0b00000010])
    payload = b"threshold-fl/mask/v1" + (10).to_bytes(8, "big") + mask.bits()
    assert mask.digest() == hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------- bits


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 64, 1001])
def test_bits_round_trip(rng: np.random.Generator, length: int) -> None:
    mask = EncryptionMask(length, np.flatnonzero(rng.random(length) < 0.3))
    bits = mask.bits()
    assert len(bits) == math.ceil(length / 8)
    assert EncryptionMask.from_bits(length, bits) == mask
    assert EncryptionMask.from_bits(length, EncryptionMask.full(length).bits()).count == length


def test_from_bits_rejects_bad_length_and_padding() -> None:
    bits = _mask(10, [1, 9]).bits()
    with pytest.raises(ParameterError, match="takes 3 bytes of bits, got 2"):
        EncryptionMask.from_bits(17, bits)
    with pytest.raises(ParameterError, match="takes 2 bytes of bits, got 3"):
        EncryptionMask.from_bits(10, bits + b"\x00")
    with pytest.raises(ParameterError, match="padding"):
        EncryptionMask.from_bits(10, bytes([0, 0b00000100]))  # bit 10 is past the length
    with pytest.raises(ParameterError, match="bytes"):
        EncryptionMask.from_bits(8, "\x01")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- gather/scatter


@pytest.mark.parametrize("length", [0, 1, 50, 333])
def test_gather_scatter_round_trip(rng: np.random.Generator, length: int) -> None:
    vector = rng.standard_normal(length)
    random = EncryptionMask(length, np.flatnonzero(rng.random(length) < 0.4))
    for mask in (random, EncryptionMask.empty(length), EncryptionMask.full(length)):
        protected, plain = mask.gather(vector)
        assert protected.dtype == np.float64 and plain.dtype == np.float64
        assert protected.size == mask.count and plain.size == length - mask.count
        assert np.array_equal(protected, vector[mask.indices])
        assert np.array_equal(plain, vector[mask.plain_indices()])
        assert np.array_equal(mask.scatter(protected, plain), vector)  # bit-exact


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 333])
def test_all_ones_mask_equals_the_explicit_one(rng: np.random.Generator, length: int) -> None:
    full = EncryptionMask.full(length)
    explicit = EncryptionMask(length, np.arange(length))  # normalised to the same mask
    from_bits = EncryptionMask.from_bits(length, np.packbits(
        np.ones(length, dtype=bool), bitorder="little").tobytes())
    ones = np.ones(length, dtype=bool)
    # the digest bound into RoundStart: SHA-256 of the packed all-ones flags, as before
    reference = hashlib.sha256(b"threshold-fl/mask/v1" + length.to_bytes(8, "big")
                               + np.packbits(ones, bitorder="little").tobytes()).hexdigest()
    for mask in (full, explicit, from_bits):
        assert mask == full and hash(mask) == hash(full) and mask.everything
        assert mask.count == length and mask.digest() == reference
        assert mask.bits() == np.packbits(ones, bitorder="little").tobytes()
        assert np.array_equal(mask.flags(), ones) and mask.plain_indices().size == 0
        assert mask.indices.tolist() == list(range(length))
    assert full != EncryptionMask.empty(length) or length == 0
    if length > 1:
        assert full != _mask(length, list(range(length - 1)))
        assert not _mask(length, list(range(1, length))).everything


def test_all_ones_mask_gathers_and_scatters_without_copies(rng: np.random.Generator) -> None:
    full, vector = EncryptionMask.full(50), rng.standard_normal(50)
    protected, plain = full.gather(vector)
    assert protected is vector and plain.size == 0
    assert full.scatter(vector, plain) is vector
    assert np.array_equal(full.gather(vector.astype(np.float32))[0], vector.astype(np.float32))
    with pytest.raises(ParameterError, match="plain part has 1 values, expected 0"):
        full.scatter(vector, vector[:1])
    with pytest.raises(ValueError, match="read-only"):
        full.indices[0] = 1
    with pytest.raises(AttributeError):
        full.length = 3  # type: ignore[misc]


def test_masks_made_from_flags_are_read_only_and_canonical(rng: np.random.Generator) -> None:
    values = rng.random(100)
    for mask in (select_top_fraction(values, 0.3), EncryptionMask.from_bits(10, b"\x05\x02")):
        assert mask.indices.dtype == np.int64 and not mask.indices.flags.writeable
        assert mask == EncryptionMask(mask.length, mask.indices.copy())
    assert EncryptionMask.from_bits(10, b"\x05\x02").indices.tolist() == [0, 2, 9]
    assert select_top_fraction(values, 1.0).everything


def test_masks_survive_pickling() -> None:
    for mask in (EncryptionMask.full(20), _mask(20, [1, 5]), EncryptionMask.empty(20)):
        copy = pickle.loads(pickle.dumps(mask))
        assert copy == mask and copy.digest() == mask.digest()
        assert not copy.indices.flags.writeable


def test_plain_indices_is_the_complement() -> None:
    mask = _mask(6, [1, 4])
    assert mask.plain_indices().tolist() == [0, 2, 3, 5]
    assert mask.count == 2 and mask.fraction == pytest.approx(1 / 3)
    assert EncryptionMask.empty(0).fraction == 0.0


def test_gather_and_scatter_reject_bad_sizes() -> None:
    mask = _mask(5, [0, 2])
    with pytest.raises(ParameterError, match="expected 5"):
        mask.gather(np.zeros(4))
    with pytest.raises(ParameterError, match="1-D real float"):
        mask.gather(np.zeros((5, 1)))
    with pytest.raises(ParameterError, match="numpy array"):
        mask.gather([0.0] * 5)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="protected part has 3 values, expected 2"):
        mask.scatter(np.zeros(3), np.zeros(3))
    with pytest.raises(ParameterError, match="plain part has 2 values, expected 3"):
        mask.scatter(np.zeros(2), np.zeros(2))


# --------------------------------------------------------------------------- validation


def test_mask_indices_are_validated_and_frozen() -> None:
    for bad in ([2, 1], [1, 1], [0, 5], [-1, 2]):
        with pytest.raises(ParameterError):
            _mask(5, bad)
    with pytest.raises(ParameterError, match="integer array"):
        EncryptionMask(5, np.array([0.0, 1.0]))
    with pytest.raises(ParameterError, match="integer array"):
        EncryptionMask(5, np.array([[0, 1]]))
    with pytest.raises(ParameterError, match="length"):
        EncryptionMask(-1, np.empty(0, dtype=np.int64))
    source = np.array([1, 3], dtype=np.int32)
    mask = EncryptionMask(5, source)  # type: ignore[arg-type]  # any integer dtype is accepted
    source[0] = 4  # the mask keeps its own copy
    assert mask.indices.dtype == np.int64 and mask.indices.tolist() == [1, 3]
    with pytest.raises(ValueError, match="read-only"):
        mask.indices[0] = 0


@pytest.mark.parametrize(
    "values",
    [np.array([1.0, np.nan]), np.array([1.0, np.inf]), np.array([1.0, -1e-9]),
     np.array([1, 2]), np.ones((2, 2))],
)
def test_bad_sensitivity_is_rejected(values: npt.NDArray[np.float64]) -> None:
    with pytest.raises(ParameterError):
        select_top_fraction(values, 0.5)


@pytest.mark.parametrize("fraction", [1.5, -0.1, float("nan"), True, "0.5"])
def test_bad_fraction_is_rejected(fraction: object) -> None:
    with pytest.raises(ParameterError, match="fraction"):
        select_top_fraction(np.ones(4), fraction)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="fraction"):
        select_random_fraction(4, fraction, seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("ranges", [[(3, 2)], [(-1, 2)], [(0, 5)], [(0, 1, 2)], [(0.0, 1)], "ab"])
def test_bad_ranges_are_rejected(ranges: object) -> None:
    with pytest.raises(ParameterError, match="always_include"):
        select_top_fraction(np.ones(4), 0.5, always_include=ranges)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- layers


def test_first_and_last_layers_of_a_torch_model() -> None:
    import torch  # a dependency; imported here so the rest of the file stays numpy-only
    nn = torch.nn
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    layout = layout_of(model)
    # 0.weight 12, 0.bias 3, 2.weight 15, 2.bias 5, 4.weight 10, 4.bias 2
    assert first_and_last_layers(layout) == ((0, 15), (35, 47))
    assert layout.size == 47
    mask = select_top_fraction(np.zeros(47), 0.0, always_include=first_and_last_layers(layout))
    assert mask.count == 15 + 12


def test_first_and_last_layers_edge_cases() -> None:
    import torch  # a dependency; imported here so the rest of the file stays numpy-only
    nn = torch.nn
    assert first_and_last_layers(layout_of(nn.Linear(2, 3))) == ((0, 9),)
    two = layout_of(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))
    assert first_and_last_layers(two) == ((0, 15), (15, 23))
    assert first_and_last_layers(layout_of(nn.ReLU())) == ()


# --------------------------------------------------------------------------- random baseline


def test_random_baseline_is_deterministic_per_seed() -> None:
    first = select_random_fraction(1000, 0.25, seed=7)
    assert first == select_random_fraction(1000, 0.25, seed=7)
    assert first != select_random_fraction(1000, 0.25, seed=8)
    assert first.count == 250 and first.length == 1000
    assert np.all(np.diff(first.indices) > 0)
    assert select_random_fraction(0, 0.5, seed=0) == EncryptionMask.empty(0)
    assert select_random_fraction(9, 1.0, seed=3) == EncryptionMask.full(9)
    with pytest.raises(ParameterError, match="seed"):
        select_random_fraction(9, 0.5, seed=-1)
