"""CKKS parameters: one frozen, validated record that every party must agree on.

Validation happens here, before OpenFHE sees anything, because OpenFHE either
throws deep inside parameter generation or silently picks something else.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any

from threshold_fl.errors import ParameterError

__all__ = [
    "DEFAULT_DECRYPTION_QUERIES",
    "CkksParams",
    "DecryptionNoise",
    "ScalingTechnique",
    "SecurityLevel",
    "MAX_VECTOR_LENGTH",
]

#: Largest vector the library promises to handle (streamed, never all in memory).
MAX_VECTOR_LENGTH = 250_000_000  # BERT-large-size and beyond; 4 GB per upload


class ScalingTechnique(str, Enum):
    """How rescaling is done.  FIXED_MANUAL is the default: the aggregator
    rescales explicitly, so partial decryptions (and flooding noise) act on the
    one-limb ciphertext that is actually decrypted."""

    FIXED_MANUAL = "fixed-manual"
    FIXED_AUTO = "fixed-auto"
    FLEXIBLE_AUTO = "flexible-auto"


class SecurityLevel(str, Enum):
    """Homomorphic Encryption Standard level.  NOT_SET is for tests only."""

    CLASSIC_128 = "128-classic"
    CLASSIC_192 = "192-classic"
    CLASSIC_256 = "256-classic"
    NOT_SET = "not-set"


class DecryptionNoise(str, Enum):
    """Noise added to threshold partial decryptions.

    FIXED: OpenFHE's fixed 20-bit Gaussian (not provably secure against
    key-recovery from decrypted results, Li-Micciancio).  FLOODING: noise
    flooding sized from a noise estimate of the aggregation circuit (provable,
    costs precision; see docs/crypto.md).
    """

    FIXED = "fixed"
    FLOODING = "flooding"


# Largest log2(Q) per ring dimension for a ternary secret (HE Standard, 2018).
_MAX_LOG_Q: dict[SecurityLevel, dict[int, int]] = {
    SecurityLevel.CLASSIC_128: {
        1024: 27,
        2048: 54,
        4096: 109,
        8192: 218,
        16384: 438,
        32768: 881,
        65536: 1761,
        131072: 3524,
    },
    SecurityLevel.CLASSIC_192: {
        1024: 19,
        2048: 37,
        4096: 75,
        8192: 152,
        16384: 305,
        32768: 611,
        65536: 1225,
        131072: 2450,
    },
    SecurityLevel.CLASSIC_256: {
        1024: 14,
        2048: 29,
        4096: 58,
        8192: 118,
        16384: 237,
        32768: 476,
        65536: 956,
        131072: 1912,
    },
}
_RING_DIMENSIONS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
# Per-share Gaussian width OpenFHE uses in FIXED mode (NoiseFlooding::MP_SD).
_FIXED_DECRYPTION_NOISE_BITS = 20.0
# OpenFHE sizes flooding as sigma = sqrt(12 Q) 2^(s/2) B (CKKS_NOISE_FLOODING.md) with
# its own s = 30 and Q = 1; we pass it an estimate raised by the rest of our s and Q.
_OPENFHE_STATISTICAL_BITS = 30
_OPENFHE_FLOODING_EXTRA_BITS = _OPENFHE_STATISTICAL_BITS / 2 + 0.5 * math.log2(12.0)
#: Shares one key may give by default: 321 rounds of the 1.66M-value CNN fully
#: encrypted (204 ciphertexts each), or about 3,000 at 10 % selective encryption.
DEFAULT_DECRYPTION_QUERIES = 1 << 16
_MAX_DECRYPTION_QUERIES = 1 << 40
# Flooding may cost at most this fraction of value_bound per value (one party's share).
_MIN_FLOODED_PRECISION = 2.0**-10
# Standard deviations allowed before an error bound is called violated.
_BOUND_SIGMAS = 8.0


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters shared by a federation.

    ``value_bound`` is the largest absolute value a client may encrypt.  Values
    are divided by ``2 * value_bound`` before encoding, so every ciphertext holds
    values in [-1/2, 1/2]; the sum of the weights clients apply before encrypting
    is then limited by :meth:`weight_capacity` so that sums never wrap the modulus.
    """

    ring_dimension: int = 0  # 0: smallest secure one for the modulus chosen
    batch_size: int = 0  # complex slots per ciphertext; 0: ring_dimension / 2
    scaling_mod_size: int = 55
    first_mod_size: int = 60
    scaling_technique: ScalingTechnique = ScalingTechnique.FIXED_MANUAL
    security_level: SecurityLevel = SecurityLevel.CLASSIC_128
    decryption_noise: DecryptionNoise = DecryptionNoise.FIXED
    noise_estimate_bits: float | None = None  # required for FLOODING
    value_bound: float = 16.0
    # Flooding: statistical security bits s and decryption shares Q one key may give.
    statistical_security: int = 30
    decryption_queries: int = DEFAULT_DECRYPTION_QUERIES

    def __post_init__(self) -> None:
        self._check_enums()
        self._check_moduli()
        self._check_ring_and_batch()
        self._check_noise()
        if not (math.isfinite(self.value_bound) and self.value_bound > 0):
            raise ParameterError(
                f"value_bound must be a positive finite number, got {self.value_bound!r}"
            )

    # -- validation -------------------------------------------------------
    def _check_enums(self) -> None:
        for name, kind in (
            ("scaling_technique", ScalingTechnique),
            ("security_level", SecurityLevel),
            ("decryption_noise", DecryptionNoise),
        ):
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    allowed = ", ".join(member.value for member in kind)
                    raise ParameterError(
                        f"{name} must be one of {allowed}; got {value!r}"
                    ) from None

    def _check_moduli(self) -> None:
        for name in ("ring_dimension", "batch_size", "scaling_mod_size", "first_mod_size"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ParameterError(f"{name} must be an int, got {getattr(self, name)!r}")
        if not 20 <= self.scaling_mod_size <= 59:
            raise ParameterError(
                f"scaling_mod_size must be in [20, 59] bits (64-bit OpenFHE build), "
                f"got {self.scaling_mod_size}"
            )
        if not self.scaling_mod_size < self.first_mod_size <= 60:
            raise ParameterError(
                f"first_mod_size must exceed scaling_mod_size ({self.scaling_mod_size}) and be "
                f"at most 60 bits, got {self.first_mod_size}; the gap is the headroom for "
                "weighted sums"
            )

    def _check_ring_and_batch(self) -> None:
        if self.ring_dimension != 0 and self.ring_dimension not in _RING_DIMENSIONS:
            raise ParameterError(
                f"ring_dimension must be 0 (automatic) or a power of two in "
                f"{_RING_DIMENSIONS}, got {self.ring_dimension}"
            )
        if self.security_level is SecurityLevel.NOT_SET and self.ring_dimension == 0:
            raise ParameterError(
                "security_level 'not-set' needs an explicit ring_dimension (tests only)"
            )
        ring = self.resolved_ring_dimension  # raises if the modulus is too large
        if self.batch_size != 0 and (
            self.batch_size & (self.batch_size - 1) or not 1 <= self.batch_size <= ring // 2
        ):
            raise ParameterError(
                f"batch_size must be 0 or a power of two up to ring_dimension/2 ({ring // 2}), "
                f"got {self.batch_size}"
            )

    def _check_noise(self) -> None:
        estimate = self.noise_estimate_bits
        if self.decryption_noise is DecryptionNoise.FLOODING:
            if estimate is None or not (math.isfinite(estimate) and 0 < estimate < 50):
                raise ParameterError(
                    "decryption_noise 'flooding' needs noise_estimate_bits from a noise-estimation "
                    "run: call threshold_fl.crypto.with_noise_flooding(params, parties) first"
                )
            if self.scaling_technique is not ScalingTechnique.FIXED_MANUAL:
                raise ParameterError(
                    "noise flooding needs scaling_technique 'fixed-manual', so that the flooded "
                    "partial decryption is taken on the rescaled ciphertext actually decrypted"
                )
        elif estimate is not None:
            raise ParameterError(
                "noise_estimate_bits is only meaningful with decryption_noise 'flooding'"
            )
        for name, low, high in (("statistical_security", 30, 128),
                                ("decryption_queries", 1, _MAX_DECRYPTION_QUERIES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ParameterError(f"{name} must be an int in [{low}, {high}], got {value!r}")
        if self.decryption_noise is DecryptionNoise.FLOODING:
            # OpenFHE floods at a scale of 2^(first_mod_size - 1); keep 10 bits of values.
            error = self.error_bound(1, scale_bits=self.first_mod_size - 1)
            if error > self.value_bound * _MIN_FLOODED_PRECISION:
                raise ParameterError(
                    f"flooding for {self.decryption_queries} shares at {self.statistical_security}"
                    f"-bit statistical security needs noise of 2^{self.decryption_noise_bits():.1f}"
                    f", which would leave a per-value error of {error:.2g} against values up to "
                    f"{self.value_bound:g}; lower decryption_queries (rotate keys sooner) or "
                    "statistical_security"
                )

    # -- derived values ---------------------------------------------------
    @property
    def log_modulus(self) -> int:
        """log2 of the ciphertext modulus: one limb to hold values, and one that clients
        rescale away before uploading (it takes the fresh encryption noise with it)."""
        return self.first_mod_size + self.scaling_mod_size

    @property
    def resolved_ring_dimension(self) -> int:
        if self.security_level is SecurityLevel.NOT_SET:
            return self.ring_dimension
        limits = _MAX_LOG_Q[self.security_level]
        secure = [n for n in _RING_DIMENSIONS if limits[n] >= self.log_modulus]
        if self.ring_dimension == 0:
            return max(secure[0], 2048)
        if self.ring_dimension not in secure:
            raise ParameterError(
                f"ring_dimension {self.ring_dimension} is not {self.security_level.value}-bit "
                f"secure for a {self.log_modulus}-bit modulus; use at least {secure[0]} or 0 "
                "(automatic)"
            )
        return self.ring_dimension

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext."""
        return self.batch_size or self.resolved_ring_dimension // 2

    @property
    def values_per_ciphertext(self) -> int:
        """Real values per ciphertext: two per complex slot."""
        return 2 * self.slots

    def fingerprint(self) -> str:
        """Stable hex SHA-256 of the canonical encoding; equal iff parameters agree."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"threshold-fl/ckks-params/v1\0" + canonical.encode()).hexdigest()

    def fingerprint_bytes(self) -> bytes:
        return bytes.fromhex(self.fingerprint())

    @property
    def flooding_estimate_bits(self) -> float:
        """The noise estimate handed to OpenFHE so that its sigma is ours.

        OpenFHE floods with sqrt(12) 2^15 2^estimate (its s = 30, Q = 1); raising the
        estimate by (s - 30)/2 + log2(Q)/2 makes that sqrt(12 Q) 2^(s/2) B.
        """
        if self.noise_estimate_bits is None:
            raise ParameterError("only flooding parameters have a flooding estimate")
        extra = (self.statistical_security - _OPENFHE_STATISTICAL_BITS) / 2
        return self.noise_estimate_bits + extra + 0.5 * math.log2(self.decryption_queries)

    def decryption_noise_bits(self) -> float:
        """log2 of the per-share decryption noise width sigma (coefficient domain).

        Flooding: sigma = sqrt(12 Q) 2^(s/2) B, with B = 2^noise_estimate_bits, s =
        statistical_security and Q = decryption_queries (see docs/crypto.md).
        """
        if self.decryption_noise is DecryptionNoise.FLOODING:
            return self.flooding_estimate_bits + _OPENFHE_FLOODING_EXTRA_BITS
        return _FIXED_DECRYPTION_NOISE_BITS

    def share_rounding_bits(self) -> int:
        """Low bits dropped from each coefficient of a one-limb decryption share and of
        the fused result before they travel: they hold only flooding noise.

        The rounding error, uniform in [-2^(bits-1), 2^(bits-1)], has a standard
        deviation 2^bits / sqrt(12) of at most 1/8 of the share's noise width, so it
        adds at most 1.6 % to the noise variance; the rest of the ``first_mod_size``
        bits travel in whole bytes (60-bit moduli, 2^30.5 to 2^35 noise: 28 bits
        dropped, 4 bytes a value instead of 8).  0 unless clients upload one limb.
        """
        if self.scaling_technique is not ScalingTechnique.FIXED_MANUAL:
            return 0
        coarsest = max(0, math.floor(self.decryption_noise_bits() - 3 + math.log2(12) / 2))
        width = math.ceil((self.first_mod_size - coarsest) / 8)
        return max(0, self.first_mod_size - 8 * width)

    def error_bound(self, parties: int, *, scale_bits: float | None = None) -> float:
        """Bound on |decrypted - exact| per value for a weighted sum of ``parties`` inputs.

        Each of the ``parties`` partial decryptions adds Gaussian noise of width
        2^decryption_noise_bits per coefficient, and rounding each share and the fused
        sum (``share_rounding_bits``) adds parties + 1 uniform terms; in a slot that
        becomes a sum of ring_dimension such terms, divided by the scale 2^scale_bits,
        and then multiplied by value_bound (values are normalised before encoding).
        """
        if parties < 1:
            raise ParameterError(f"parties must be >= 1, got {parties}")
        scale = self.scaling_mod_size if scale_bits is None else scale_bits
        variance = parties * 4.0 ** self.decryption_noise_bits() + (
            (parties + 1) * 4.0 ** self.share_rounding_bits() / 12)
        slot_sigma = math.sqrt(variance * self.resolved_ring_dimension)
        return float(self.encoding_divisor * _BOUND_SIGMAS * slot_sigma / 2.0**scale)

    @property
    def encoding_divisor(self) -> float:
        """Values are divided by this before encoding (one bit of headroom)."""
        return 2.0 * self.value_bound

    def weight_capacity(self, *, scale_bits: float | None = None) -> float:
        """Largest sum of |weights| one aggregation may apply.

        Encoded values lie in [-1/2, 1/2]; a sum must stay within a quarter of
        the first modulus over the scale, far from wrapping around.
        """
        scale = self.scaling_mod_size if scale_bits is None else scale_bits
        return 2.0 ** (self.first_mod_size - scale - 1)

    # -- plain-data form --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Enum):
                data[key] = value.value
        return data

    @classmethod
    def from_dict(cls, data: object) -> CkksParams:
        if not isinstance(data, dict):
            raise ParameterError(f"CKKS parameters must be a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ParameterError(
                f"unknown CKKS parameter(s): {', '.join(sorted(map(str, unknown)))}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ParameterError(f"malformed CKKS parameters: {exc}") from None

    def with_changes(self, **changes: Any) -> CkksParams:
        return replace(self, **changes)
