"""Selective parameter encryption: which coordinates of the flat vector are encrypted.

Every client selects the mask on its own from the jointly decrypted sensitivity map and
the parties then compare :meth:`EncryptionMask.digest`.  Selection is therefore exact
and deterministic: no approximate partitioning, ties go to the lower index, and the
fraction is read in decimal so that ``0.07`` of 100 coordinates is 7, never 8.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import FrozenInstanceError
from fractions import Fraction
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt

from threshold_fl.arrays import FloatArray, IndexArray
from threshold_fl.errors import ParameterError

if TYPE_CHECKING:  # only for the annotation: the module itself needs numpy alone
    from threshold_fl.ml.flatten import ModelLayout

__all__ = [
    "EncryptionMask", "first_and_last_layers", "select_random_fraction", "select_top_fraction",
]

Range: TypeAlias = tuple[int, int]

_DIGEST_DOMAIN = b"threshold-fl/mask/v1"
_TIE_CHUNK = 1 << 22  # values searched for ties at a time (bounds the index array)
_MAX_LENGTH = 2**63 - 1  # the digest encodes the length in 8 bytes; indices are int64


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _checked_length(length: object) -> int:
    if isinstance(length, bool) or not isinstance(length, int | np.integer):
        raise ParameterError(f"mask length must be an int, got {length!r}")
    if not 0 <= int(length) <= _MAX_LENGTH:
        raise ParameterError(f"mask length must be in [0, 2**63), got {length!r}")
    return int(length)


def _checked_fraction(fraction: object) -> float:
    real = int | float | np.integer | np.floating
    if isinstance(fraction, bool) or not isinstance(fraction, real):
        raise ParameterError(f"fraction must be a real number, got {fraction!r}")
    value = float(fraction)
    if not 0.0 <= value <= 1.0:  # False for NaN too
        raise ParameterError(f"fraction must lie in [0, 1] (0.1 = 10%), got {fraction!r}")
    return value


def _selected_count(fraction: float, length: int) -> int:
    """ceil(fraction * length), with *fraction* read as its shortest decimal form.

    Float products round (0.07 * 100 == 7.000000000000001); exact decimal arithmetic
    gives every party the count a person expects.
    """
    return math.ceil(Fraction(repr(fraction)) * length)


def _checked_vector(vector: object, size: int | None, what: str) -> FloatArray:
    if not isinstance(vector, np.ndarray):
        raise ParameterError(f"{what} must be a numpy array, got {type(vector).__name__}")
    if vector.ndim != 1 or vector.dtype.kind != "f":
        raise ParameterError(
            f"{what} must be a 1-D real float array, got shape {vector.shape} of dtype "
            f"{vector.dtype}; flatten it and convert with .astype(numpy.float64)"
        )
    if size is not None and vector.shape[0] != size:
        raise ParameterError(f"{what} has {vector.shape[0]} values, expected {size}")
    return vector.astype(np.float64, copy=False)


def _checked_indices(indices: object, length: int) -> IndexArray:
    if not isinstance(indices, np.ndarray) or indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise ParameterError(
            "mask indices must be a 1-D numpy integer array, e.g. "
            f"numpy.array([...], dtype=numpy.int64); got {indices!r:.80}"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= length):
        raise ParameterError(f"mask indices must lie in [0, {length}); some are outside")
    checked = indices.astype(np.int64, copy=True)  # a private copy: the caller keeps theirs
    if np.any(np.diff(checked) <= 0):
        raise ParameterError("mask indices must be sorted ascending without repeats; "
                             "use numpy.unique(indices)")
    checked.flags.writeable = False
    return checked


def _from_flags(flags: npt.NDArray[np.bool_]) -> EncryptionMask:
    length = int(flags.shape[0])
    if np.count_nonzero(flags) == length:
        return EncryptionMask.full(length)
    # ascending, unique and in range by construction: no checked copy (and no np.diff)
    return _rebuild(length, np.flatnonzero(flags).astype(np.int64, copy=False))


def _full_bits(length: int) -> bytes:
    """:meth:`EncryptionMask.bits` of the all-ones mask, made without a flag vector."""
    tail = bytes([(1 << (length % 8)) - 1]) if length % 8 else b""
    return b"\xff" * (length // 8) + tail


class EncryptionMask:
    """The coordinates of a flat parameter vector that are sent encrypted.

    ``indices`` is sorted, unique and read-only, so equal masks have equal bits and
    digests, and a mask cannot change after the parties agreed on its digest.  A mask
    that encrypts every coordinate keeps no index array (8 bytes a coordinate: 0.8 GiB
    at BERT size), and its :meth:`gather` and :meth:`scatter` copy nothing.
    """

    __slots__ = ("_indices", "length")
    length: int
    _indices: IndexArray | None  # None: every coordinate (the all-ones mask)

    def __init__(self, length: int, indices: IndexArray) -> None:
        length = _checked_length(length)
        checked = _checked_indices(indices, length)
        # sorted, unique and in range: length of them are exactly 0..length-1
        self._set(length, None if checked.size == length else checked)

    def _set(self, length: int, indices: IndexArray | None) -> None:
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "_indices", indices)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: a mask is immutable")

    def __reduce__(self) -> tuple[object, tuple[int, IndexArray | None]]:
        return _rebuild, (self.length, self._indices)

    @classmethod
    def full(cls, length: int) -> EncryptionMask:
        """Encrypt everything: the baseline of plain threshold-HE aggregation."""
        return _rebuild(_checked_length(length), None)

    @classmethod
    def empty(cls, length: int) -> EncryptionMask:
        """Encrypt nothing: plain federated averaging."""
        return cls(length, np.empty(0, dtype=np.int64))

    @classmethod
    def from_bits(cls, length: int, bits: bytes) -> EncryptionMask:
        """Rebuild a mask from :meth:`bits`, e.g. as received from another party."""
        length = _checked_length(length)
        if not isinstance(bits, bytes | bytearray | memoryview):
            raise ParameterError(f"mask bits must be bytes, got {type(bits).__name__}")
        expected = (length + 7) // 8
        if len(bits) != expected:
            raise ParameterError(f"a mask of length {length} takes {expected} bytes of bits, "
                                 f"got {len(bits)}: the length or the bytes are wrong")
        if bits == _full_bits(length):  # no flag vector for the all-ones mask
            return cls.full(length)
        flags = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), bitorder="little")
        if flags[length:].any():  # one mask must have exactly one encoding
            raise ParameterError("mask bits have nonzero padding bits past the length; "
                                 "the bytes are corrupt or made for a different length")
        return _from_flags(flags[:length].view(np.bool_))  # 0 and 1: a view, not a copy

    @property
    def indices(self) -> IndexArray:
        """The encrypted coordinates, ascending and read-only (made on each call for the
        all-ones mask, which keeps none)."""
        if self._indices is not None:
            return self._indices
        everything = np.arange(self.length, dtype=np.int64)
        everything.flags.writeable = False
        return everything

    @property
    def everything(self) -> bool:
        """True when every coordinate is encrypted (the all-ones mask)."""
        return self._indices is None

    @property
    def count(self) -> int:
        """How many coordinates are encrypted."""
        return self.length if self._indices is None else int(self._indices.size)

    @property
    def fraction(self) -> float:
        """Share of coordinates encrypted (0.0 for an empty vector)."""
        return self.count / self.length if self.length else 0.0

    def flags(self) -> npt.NDArray[np.bool_]:
        """A boolean vector, True where the coordinate is encrypted."""
        if self._indices is None:
            return np.ones(self.length, dtype=bool)
        flags = np.zeros(self.length, dtype=bool)
        flags[self._indices] = True
        return flags

    def plain_indices(self) -> IndexArray:
        """The complement: coordinates sent in the clear, ascending."""
        if self._indices is None:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(~self.flags()).astype(np.int64, copy=False)

    def bits(self) -> bytes:
        """Packed bitset (little-endian bit order), ceil(length / 8) bytes."""
        if self._indices is None:
            return _full_bits(self.length)
        return np.packbits(self.flags(), bitorder="little").tobytes()

    def digest(self) -> str:
        """Hex SHA-256 that parties compare to confirm they selected the same mask."""
        payload = _DIGEST_DOMAIN + self.length.to_bytes(8, "big") + self.bits()
        return hashlib.sha256(payload).hexdigest()

    def gather(self, vector: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Split *vector* into (encrypted part, plain part), each in index order.

        The all-ones mask copies nothing: its encrypted part is the (float64) vector
        itself and its plain part an empty view of it."""
        values = _checked_vector(vector, self.length, "vector")
        if self._indices is None:
            return values, values[:0]
        # boolean masks pick in index order as the index arrays would, at 1 B a value
        # where the plain part's indices took 16 (1.6 GB at BERT size, 10 % encrypted)
        flags = self.flags()
        protected = values[flags]
        return protected, values[np.logical_not(flags, out=flags)]

    def scatter(self, protected: FloatArray, plain: FloatArray) -> FloatArray:
        """Reassemble a full vector from the two parts :meth:`gather` made.

        The all-ones mask copies nothing: it returns the (float64) *protected* itself."""
        protected = _checked_vector(protected, self.count, "protected part")
        plain = _checked_vector(plain, self.length - self.count, "plain part")
        if self._indices is None:
            return protected
        vector = np.empty(self.length, dtype=np.float64)
        flags = self.flags()
        vector[flags] = protected
        vector[np.logical_not(flags, out=flags)] = plain
        return vector

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncryptionMask):
            return NotImplemented
        if self.length != other.length or self.count != other.count:
            return False
        # both all-ones (equal counts and lengths), or both with arrays to compare
        return self._indices is None or np.array_equal(self._indices, other.indices)

    def __hash__(self) -> int:
        if self._indices is None:
            return hash((self.length, None))
        return hash((self.length, self._indices.tobytes()))

    def __repr__(self) -> str:
        return (f"EncryptionMask(length={self.length}, count={self.count}, "
                f"digest={self.digest()[:16]}...)")


def _rebuild(length: int, indices: IndexArray | None) -> EncryptionMask:
    """A mask from checked parts (None: every coordinate); also unpickles."""
    if indices is not None:
        indices.flags.writeable = False  # an unpickled array comes back writeable
    mask = EncryptionMask.__new__(EncryptionMask)
    mask._set(length, indices)
    return mask


def _checked_ranges(ranges: object, length: int) -> list[Range]:
    if not isinstance(ranges, Sequence) or isinstance(ranges, str | bytes):
        raise ParameterError(f"always_include must be a sequence of (start, stop) pairs, "
                             f"got {type(ranges).__name__}")
    checked: list[Range] = []
    for item in ranges:
        pair = tuple(item) if isinstance(item, tuple | list) else ()
        if len(pair) != 2 or not all(_is_int(v) for v in pair):
            raise ParameterError(f"always_include items must be (start, stop) int pairs, "
                                 f"got {item!r}")
        start, stop = int(pair[0]), int(pair[1])
        if not 0 <= start <= stop <= length:
            raise ParameterError(f"always_include range {item!r} must satisfy "
                                 f"0 <= start <= stop <= {length} (half-open [start, stop))")
        checked.append((start, stop))
    return checked


def _checked_sensitivity(sensitivity: object) -> FloatArray:
    values = _checked_vector(sensitivity, None, "sensitivity")
    if not np.isfinite(values).all():
        raise ParameterError("sensitivity holds NaN or infinity; check the local maps and "
                             "their aggregation before selecting a mask")
    if (values < 0).any():
        raise ParameterError("sensitivity holds negative values; it must be a map of "
                             "magnitudes (e.g. squared or absolute gradients)")
    return values


def _top_flags(values: FloatArray, count: int) -> npt.NDArray[np.bool_]:
    """Flags of the *count* largest values, ties to the lower index: what a stable sort
    on the negated values selects, in linear time and one copy of *values* (a sort
    takes four: 3.5 GB more at BERT size).  -0.0 == 0.0 here, so signed zeros tie."""
    length = values.shape[0]
    flags = np.zeros(length, dtype=bool)
    if count == 0:
        return flags
    threshold = np.partition(values, length - count)[length - count]  # count-th largest
    np.greater(values, threshold, out=flags)
    missing = count - int(np.count_nonzero(flags))  # taken from the ties, lowest first
    for start in range(0, length, _TIE_CHUNK):
        if missing == 0:
            break
        ties = np.flatnonzero(values[start:start + _TIE_CHUNK] == threshold)[:missing]
        flags[start + ties] = True
        missing -= ties.size
    return flags


def select_top_fraction(
    sensitivity: FloatArray, fraction: float, *, always_include: Sequence[Range] = (),
) -> EncryptionMask:
    """Encrypt the ceil(fraction * length) most sensitive coordinates, plus *always_include*.

    Ties go to the lower index (a stable sort on the negated values), so every party
    picks the same set.  The half-open ranges in *always_include* (e.g. from
    :func:`first_and_last_layers`) are added on top of the top fraction, as in the recipe
    "top p plus the first and last layers": they do not count towards *fraction*, and
    the mask holds between ceil(fraction * length) and that plus the ranges' size.
    """
    values = _checked_sensitivity(sensitivity)
    count = _selected_count(_checked_fraction(fraction), values.shape[0])
    ranges = _checked_ranges(always_include, values.shape[0])
    flags = _top_flags(values, count)
    for start, stop in ranges:
        flags[start:stop] = True
    return _from_flags(flags)


def first_and_last_layers(layout: ModelLayout) -> tuple[Range, ...]:
    """Flat half-open ranges of the first and the last layer's tensors (weight, bias...).

    Selective-encryption recipes always protect these layers: the first is closest to
    the input data, the last to the labels.  A one-layer model gives one range.
    """
    names = layout.layer_names()
    if not names:
        return ()
    chosen = dict.fromkeys((names[0], names[-1]))  # one entry when first is last
    slices = [layout.slice_of(name) for name in chosen]
    return tuple((int(s.start), int(s.stop)) for s in slices)


def select_random_fraction(length: int, fraction: float, *, seed: int) -> EncryptionMask:
    """A uniformly random mask of ceil(fraction * length) coordinates: the baseline.

    The same seed gives the same mask under the same numpy version (numpy does not
    promise Generator streams across versions, so share the mask's bits, not the seed).
    """
    length = _checked_length(length)
    count = _selected_count(_checked_fraction(fraction), length)
    if not _is_int(seed) or int(seed) < 0:
        raise ParameterError(f"seed must be an int >= 0, got {seed!r}")
    chosen = np.random.default_rng(int(seed)).choice(length, size=count, replace=False)
    return EncryptionMask(length, np.sort(chosen).astype(np.int64))
