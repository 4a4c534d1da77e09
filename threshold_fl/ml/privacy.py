"""Local differential privacy for the plaintext part of selective parameter encryption.

Selective encryption (FedML-HE) encrypts only a share of each client's flat model
vector; the rest is uploaded in the clear.  As an option, a client adds Laplace noise
to those plaintext coordinates before upload.  Encrypted coordinates get no noise.

Mechanism (:meth:`LaplaceNoise.apply`), per round and client, on the plaintext
coordinates i only::

    released_i = global_i + clip(local_i - global_i, -C, C) + Laplace(0, b)

Accounting (:func:`privacy_budget`).  This is the standard Laplace mechanism.  Changing
one training record moves each clipped update coordinate within [-C, C], so the per-
coordinate L1 sensitivity is Delta_i = 2C (worst case, replace-one-record), unless the
caller passes a tighter per-coordinate bound.  The released plaintext vector has L1
sensitivity sum_i Delta_i, so one round is epsilon-DP with::

    epsilon_per_round = sum over plaintext coordinates of Delta_i / b

Encrypted coordinates add 0.  Basic sequential composition over R rounds gives
R * epsilon_per_round.  Each coordinate on its own is (Delta_i / b)-DP.

Limits, stated plainly:

- The guarantee holds only if the clipping bound holds: :meth:`LaplaceNoise.apply` clips
  against the *global_model* it is given, so that must be the model the round started
  from.  A caller-supplied sensitivity is trusted as is (only capped at 2C).
- Only pure epsilon-DP of the Laplace mechanism per round and basic composition; no
  advanced composition, no Renyi accounting, no amplification by subsampling.
- Encrypting everything gives epsilon 0 for the plaintext part.  Encrypted coordinates
  are protected computationally (CKKS threshold encryption), not by DP: the aggregate
  of encrypted coordinates is decrypted without noise and is not covered here.
- Noise comes from :func:`laplace_samples`: 64-bit words from ``os.urandom`` (never a
  numpy generator), a sign bit and a 53-bit uniform fed through the inverse CDF in
  float64.  That is still a floating-point Laplace sampler, not one hardened against
  floating-point attacks on DP (Mironov, CCS 2012: the set of reachable outputs can
  reveal the input); a hardened release would need snapping or discrete noise.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml.mask import EncryptionMask

__all__ = ["LaplaceNoise", "PrivacyBudget", "Randomness", "SeededRandomness", "laplace_samples",
           "privacy_budget"]

Randomness = Callable[[int], bytes]
"""A source of random bytes, called with a byte count: ``os.urandom`` in use."""

_WORD = 8  # bytes per draw: 53 bits of uniform, 1 bit of sign

def _real(value: object, what: str, requirement: str) -> float:
    """*value* as a float, or ParameterError naming *requirement* (NaN is returned as is)."""
    if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating):
        raise ParameterError(f"{what} must be a {requirement}, got {value!r}")
    return float(value)


def _positive_finite(value: object, what: str) -> float:
    number = _real(value, what, "finite real number > 0")
    if not (math.isfinite(number) and number > 0):
        raise ParameterError(f"{what} must be a finite real number > 0, got {value!r}")
    return number


def _non_negative(value: object, what: str) -> float:
    number = _real(value, what, "real number >= 0")
    if not number >= 0:  # False for NaN too
        raise ParameterError(f"{what} must be a real number >= 0, got {value!r}")
    return number


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ParameterError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _finite_vector(value: object, length: int, what: str, kinds: str = "f") -> FloatArray:
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in kinds:
        raise ParameterError(
            f"{what} must be a 1-D numpy float array; got {type(value).__name__} "
            f"{getattr(value, 'shape', '')} {getattr(value, 'dtype', '')}: flatten it and "
            "convert with .astype(numpy.float64)")
    if value.shape[0] != length:
        raise ParameterError(f"{what} has {value.shape[0]} values but the mask covers "
                             f"{length}: use the mask made for this model")
    checked = value.astype(np.float64, copy=False)
    if not np.isfinite(checked).all():
        raise ParameterError(f"{what} holds NaN or infinity; every value must be finite")
    return checked


def laplace_samples(count: int, scale: float, randomness: Randomness = os.urandom
                    ) -> FloatArray:
    """*count* draws of Laplace(0, *scale*) from the bytes of *randomness*.

    Each draw takes one little-endian 64-bit word: its top 53 bits k give the uniform
    ``v = (k + 1) / 2**53`` in (0, 1] (exact in float64, never 0, so no log(0)), its
    lowest bit the sign; ``sign * scale * -log(v)`` is Laplace by the inverse CDF of
    the exponential.  The word buffers are zeroed after use.
    """
    count = _count(count, "count", 0)
    scale = _positive_finite(scale, "noise scale b")
    if not callable(randomness):
        raise ParameterError("randomness must be a function of a byte count returning "
                             f"bytes, e.g. os.urandom; got {type(randomness).__name__}")
    raw = randomness(_WORD * count)
    if not isinstance(raw, bytes | bytearray) or len(raw) != _WORD * count:
        raise ParameterError(f"randomness returned {type(raw).__name__} of length "
                             f"{len(raw) if hasattr(raw, '__len__') else '?'}; it must return "
                             f"exactly {_WORD * count} bytes")
    buffer = bytearray(raw)  # writable, so it can be zeroed; *raw* itself is immutable
    words = np.frombuffer(buffer, dtype="<u8")
    top = words >> np.uint64(11)
    sign = 1.0 - 2.0 * (words & np.uint64(1)).astype(np.float64)
    magnitude = (top.astype(np.float64) + 1.0) * (1.0 / 2.0 ** 53)
    samples: FloatArray = sign * (-scale * np.log(magnitude))
    for secret in (top, sign, magnitude):
        secret.fill(0)
    buffer[:] = bytes(len(buffer))  # also zeroes *words*, a view of it
    return samples


@dataclass(eq=False)
class SeededRandomness:
    """A reproducible byte source for experiments and tests: SHAKE-256 of the seed and a
    call counter.  Never use it for real uploads (anyone with the seed can remove the
    noise); :class:`LaplaceNoise` uses ``os.urandom`` unless told otherwise."""

    seed: int
    _calls: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        _count(self.seed, "seed", 0)

    def __call__(self, count: int) -> bytes:
        self._calls += 1
        stream = hashlib.shake_256(f"threshold-fl laplace {self.seed} {self._calls}".encode())
        return stream.digest(count)


def _checked_mask(mask: object) -> EncryptionMask:
    if not isinstance(mask, EncryptionMask):
        raise ParameterError(f"mask must be an EncryptionMask, got {type(mask).__name__}")
    return mask


@dataclass(frozen=True)
class LaplaceNoise:
    """Clip-then-noise for the plaintext coordinates: Laplace(0, *scale*), clip bound *clip*.

    *scale* is b > 0; *clip* is C > 0, the bound on each plaintext coordinate of the
    update ``local - global``.  Both must be finite.
    """

    scale: float
    clip: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _positive_finite(self.scale, "noise scale b"))
        object.__setattr__(self, "clip", _positive_finite(self.clip, "clip bound C"))

    def apply(self, update: FloatArray, global_model: FloatArray, mask: EncryptionMask,
              randomness: Randomness = os.urandom) -> FloatArray:
        """The vector to upload: *update* with its plaintext coordinates clipped and noised.

        Plaintext coordinate i becomes ``global_i + clip(update_i - global_i) + noise``;
        encrypted coordinates are copied from *update* bit for bit.  The inputs are left
        unchanged; the noise comes from :func:`laplace_samples` fed by *randomness*
        (``os.urandom``; a :class:`SeededRandomness` only for experiments) and is zeroed
        once added.
        """
        mask = _checked_mask(mask)
        local = _finite_vector(update, mask.length, "update")
        base = _finite_vector(global_model, mask.length, "global_model")
        plain = mask.plain_indices()
        step = np.clip(local[plain] - base[plain], -self.clip, self.clip)
        noise = laplace_samples(int(plain.size), self.scale, randomness)
        released = np.array(local, dtype=np.float64, copy=True)
        released[plain] = base[plain] + step + noise
        noise.fill(0)
        return released


@dataclass(frozen=True)
class PrivacyBudget:
    """Laplace-mechanism epsilon of the plaintext coordinates (see the module docstring).

    ``per_coordinate_epsilon`` is the largest Delta_i / b over plaintext coordinates
    (0 when none is plaintext).
    """

    epsilon_per_round: float
    epsilon_total: float
    rounds: int
    plain_coordinates: int
    per_coordinate_epsilon: float

    def __post_init__(self) -> None:
        for name in ("epsilon_per_round", "epsilon_total", "per_coordinate_epsilon"):
            object.__setattr__(self, name, _non_negative(getattr(self, name), name))
        object.__setattr__(self, "rounds", _count(self.rounds, "rounds", 1))
        object.__setattr__(self, "plain_coordinates",
                           _count(self.plain_coordinates, "plain_coordinates", 0))

    def __str__(self) -> str:
        return (f"epsilon = {self.epsilon_per_round:.6g} per round, "
                f"{self.epsilon_total:.6g} over {self.rounds} round(s) (Laplace, basic "
                f"composition); {self.plain_coordinates} plaintext coordinate(s), "
                f"at most {self.per_coordinate_epsilon:.6g} each")


def _plain_sensitivity(noise: LaplaceNoise, mask: EncryptionMask,
                       sensitivity: FloatArray | None) -> FloatArray:
    """Delta_i of each plaintext coordinate, capped at 2C (clipping guarantees that)."""
    worst = 2.0 * noise.clip
    plain = mask.plain_indices()
    if sensitivity is None:
        return np.full(plain.size, worst, dtype=np.float64)
    values = _finite_vector(sensitivity, mask.length, "sensitivity", kinds="fiu")
    if (values < 0).any():
        raise ParameterError("sensitivity holds negative values; it must be a per-coordinate "
                             "L1 bound >= 0 (the default is 2 * clip)")
    return np.minimum(values[plain], worst)


def privacy_budget(noise: LaplaceNoise, mask: EncryptionMask, *, rounds: int = 1,
                   sensitivity: FloatArray | None = None) -> PrivacyBudget:
    """Epsilon of :meth:`LaplaceNoise.apply` with *mask* over *rounds* rounds.

    *sensitivity*, when given, holds one L1 bound per model coordinate (length
    ``mask.length``; values at encrypted coordinates are ignored).  Bounds above 2C are
    capped at 2C, which clipping guarantees.  Without it every plaintext coordinate
    has Delta = 2C.
    """
    if not isinstance(noise, LaplaceNoise):
        raise ParameterError(f"noise must be a LaplaceNoise, got {type(noise).__name__}")
    mask = _checked_mask(mask)
    rounds = _count(rounds, "rounds", 1)
    per_coordinate = _plain_sensitivity(noise, mask, sensitivity) / noise.scale
    per_round = float(per_coordinate.sum())
    return PrivacyBudget(
        epsilon_per_round=per_round,
        epsilon_total=rounds * per_round,
        rounds=rounds,
        plain_coordinates=int(per_coordinate.size),
        per_coordinate_epsilon=float(per_coordinate.max()) if per_coordinate.size else 0.0,
    )
