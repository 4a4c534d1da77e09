"""The OpenFHE boundary: building a CKKS context and moving objects in and out.

Everything that touches ``openfhe`` directly lives here, so the rest of the
crypto layer works with named, typed objects and OpenFHE's exceptions never
leak out untranslated.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import openfhe

from threshold_fl.arrays import FloatArray
from threshold_fl.crypto.params import (
    CkksParams,
    DecryptionNoise,
    ScalingTechnique,
    SecurityLevel,
)
from threshold_fl.crypto.ring import (
    BlobKind,
    BlobSummary,
    Kinds,
    RingTemplate,
    TemplateSamples,
    learn_template,
)
from threshold_fl.errors import (
    CryptoError,
    FrameError,
    KeyMismatchError,
    ParameterError,
    ThresholdFLError,
)

__all__ = ["CkksContext", "context_for", "sha256_hex"]

_ANY_CIPHERTEXT = (BlobKind.CIPHERTEXT, BlobKind.DECRYPTION_SHARE)

_SCALING = {
    ScalingTechnique.FIXED_MANUAL: openfhe.FIXEDMANUAL,
    ScalingTechnique.FIXED_AUTO: openfhe.FIXEDAUTO,
    ScalingTechnique.FLEXIBLE_AUTO: openfhe.FLEXIBLEAUTO,
}
_SECURITY = {
    SecurityLevel.CLASSIC_128: openfhe.HEStd_128_classic,
    SecurityLevel.CLASSIC_192: openfhe.HEStd_192_classic,
    SecurityLevel.CLASSIC_256: openfhe.HEStd_256_classic,
    SecurityLevel.NOT_SET: openfhe.HEStd_NotSet,
}


def sha256_hex(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _openfhe_params(params: CkksParams, *, estimating: bool = False) -> Any:
    raw = openfhe.CCParamsCKKSRNS()
    raw.SetMultiplicativeDepth(1)  # one level: the client's rescale before upload
    raw.SetScalingModSize(params.scaling_mod_size)
    raw.SetFirstModSize(params.first_mod_size)
    raw.SetScalingTechnique(_SCALING[params.scaling_technique])
    raw.SetSecurityLevel(_SECURITY[params.security_level])
    raw.SetRingDim(params.resolved_ring_dimension)
    raw.SetBatchSize(params.slots)
    # BV needs no auxiliary modulus and we never key-switch (no relinearisation,
    # no rotations), so this keeps N=8192 secure where HYBRID would need 16384.
    raw.SetKeySwitchTechnique(openfhe.BV)
    if estimating:
        # OpenFHE's noise estimation only supports real packing.
        raw.SetCKKSDataType(openfhe.REAL)
        raw.SetDecryptionNoiseMode(openfhe.NOISE_FLOODING_DECRYPT)
        raw.SetExecutionMode(openfhe.EXEC_NOISE_ESTIMATION)
        return raw
    # Complex packing: two real values per slot, halving ciphertext bytes.
    raw.SetCKKSDataType(openfhe.COMPLEX)
    if params.decryption_noise is DecryptionNoise.FLOODING:
        raw.SetDecryptionNoiseMode(openfhe.NOISE_FLOODING_DECRYPT)
        raw.SetExecutionMode(openfhe.EXEC_EVALUATION)
        raw.SetNoiseEstimate(params.flooding_estimate_bits)
    return raw


def _generate(raw: Any) -> Any:
    try:
        context = openfhe.GenCryptoContext(raw)
    except RuntimeError as exc:
        raise ParameterError(f"OpenFHE rejected the CKKS parameters: {exc}") from None
    for feature in (openfhe.PKE, openfhe.KEYSWITCH, openfhe.LEVELEDSHE, openfhe.MULTIPARTY):
        context.Enable(feature)
    return context


class CkksContext:
    """An OpenFHE CKKS context for one :class:`CkksParams`, with (de)serialisers.

    Obtain one with :func:`context_for`, which caches by fingerprint.
    """

    def __init__(self, params: CkksParams) -> None:
        self.params = params
        self.fingerprint = params.fingerprint()
        self.native = _generate(_openfhe_params(params))
        # Flooding makes OpenFHE choose its own scale; use what it really chose.
        self.scale_bits = math.log2(self.native.GetScalingFactorReal(0))
        self.weight_capacity = params.weight_capacity(scale_bits=self.scale_bits)
        self.slots = params.slots
        self.values_per_ciphertext = params.values_per_ciphertext
        self._ring: RingTemplate | None = None

    def check_fingerprint(self, fingerprint: str, what: str) -> None:
        """Raise KeyMismatchError unless ``what`` was made under this context's parameters."""
        if fingerprint != self.fingerprint:
            raise KeyMismatchError(
                f"{what} was made under other CKKS parameters ({fingerprint[:16]}) than this "
                f"context ({self.fingerprint[:16]}); all parties must use the same parameters"
            )

    def error_bound(self, parties: int) -> float:
        """Per-value bound on decryption error for a sum over ``parties`` (see CkksParams)."""
        return self.params.error_bound(parties, scale_bits=self.scale_bits)

    # -- encoding -----------------------------------------------------------
    def encode(self, values: FloatArray, *, scale_degree: int = 1) -> Any:
        """Pack up to ``values_per_ciphertext`` normalised reals, two per complex slot."""
        if values.size % 2:
            values = np.append(values, 0.0)
        pairs = values.reshape(-1, 2)
        # A complex128 ndarray, not a list: the binding converts it about 2x faster.
        packed = np.ascontiguousarray(pairs[:, 0] + 1j * pairs[:, 1])
        return self.native.MakeCKKSPackedPlaintext(packed, scale_degree, 0)

    @property
    def upload_level(self) -> int:
        """The level (limbs dropped) of the ciphertexts clients upload.

        With manual rescaling a client encrypts at scale degree 2 and rescales, so it
        uploads one limb (half the bytes, and less noise to flood than a fresh one-limb
        encryption); the automatic techniques upload at level 0.
        """
        return 1 if self.params.scaling_technique is ScalingTechnique.FIXED_MANUAL else 0

    @property
    def aggregate_moduli(self) -> tuple[int, ...]:
        """The moduli of an upload's (and so an aggregate's) limbs: those ``upload_level``
        leaves."""
        return tuple(self.ring.moduli[: self.ring.limbs - self.upload_level])

    def encrypt_upload(self, public_key: Any, values: FloatArray) -> Any:
        """Encrypt up to ``values_per_ciphertext`` normalised reals at ``upload_level``."""
        if self.upload_level == 0:
            return self.native.Encrypt(public_key, self.encode(values))
        plaintext = self.encode(values, scale_degree=2)
        return self.native.Rescale(self.native.Encrypt(public_key, plaintext))

    def check_upload_summary(self, summary: BlobSummary,
                             error: type[ThresholdFLError] = FrameError) -> None:
        """Refuse a checked blob (a ciphertext or a decryption share) not at the level and
        scale clients upload at.

        Adding ciphertexts of different levels would fail deep in OpenFHE (or, for a
        scale mismatch, decrypt to garbage), so the aggregator checks every input.
        """
        self._check_level(summary.level, summary.noise_degree, f"a {summary.kind.value}", error)

    def _check_level(self, level: int | None, degree: int | None, what: str,
                     error: type[ThresholdFLError]) -> None:
        if level != self.upload_level or degree != 1:
            raise error(
                f"{what} is at level {level} with scale degree {degree}; uploads and "
                f"aggregates are at level {self.upload_level}, degree 1 (another version or "
                "tampered bytes); discard it"
            )

    def decode(self, plaintext: Any, count: int) -> FloatArray:
        """Unpack ``count`` reals from a decrypted plaintext."""
        slots_used = (count + 1) // 2
        plaintext.SetLength(slots_used)
        # The ndarray accessor: about 5x faster than building a Python list of complexes.
        packed = np.asarray(plaintext.GetCKKSPackedValueArray(), dtype=np.complex128)
        values = np.empty(2 * slots_used)
        values[0::2] = packed.real
        values[1::2] = packed.imag
        return values[:count]

    # -- (de)serialisation --------------------------------------------------
    @staticmethod
    def serialize(native_object: Any) -> bytes:
        data = openfhe.Serialize(native_object, openfhe.BINARY)
        return bytes(data)

    def deserialize_ciphertext(self, data: bytes, kind: Kinds = _ANY_CIPHERTEXT) -> Any:
        """An OpenFHE ciphertext-class blob, checked as ``kind`` first.

        By default a two-element ciphertext or a one-element decryption share; the
        wire decoders name the exact kind each frame carries.
        """
        return self._deserialize(openfhe.DeserializeCiphertextString, data, kind)

    def deserialize_share(self, data: bytes) -> Any:
        """A partial decryption (an OpenFHE ciphertext of one element)."""
        return self.deserialize_ciphertext(data, BlobKind.DECRYPTION_SHARE)

    def deserialize_public_key(self, data: bytes) -> Any:
        return self._deserialize(openfhe.DeserializePublicKeyString, data, BlobKind.PUBLIC_KEY)

    def deserialize_private_key(self, data: bytes) -> Any:
        return self._deserialize(openfhe.DeserializePrivateKeyString, data, BlobKind.SECRET_KEY)

    @property
    def ring(self) -> RingTemplate:
        """The layouts of this context's OpenFHE blobs (learnt on first use, ~20 ms)."""
        if self._ring is None:
            self._ring = learn_template(self._ring_samples())
        return self._ring

    def _ring_samples(self) -> TemplateSamples:
        keys = self.native.KeyGen()
        fresh = self.native.Encrypt(keys.publicKey, self.native.MakeCKKSPackedPlaintext([0j]))
        blobs = [self.serialize(obj) for obj in (keys.secretKey, keys.publicKey, fresh)]
        loaders = (
            (BlobKind.SECRET_KEY, openfhe.DeserializePrivateKeyString),
            (BlobKind.PUBLIC_KEY, openfhe.DeserializePublicKeyString),
            (BlobKind.CIPHERTEXT, openfhe.DeserializeCiphertextString),
        )
        # Our own bytes, so safe to deserialise unchecked: deserialised objects
        # re-serialise differently (parameters written in full), and both must pass.
        resaved = {
            kind: self.serialize(loader(blob, openfhe.BINARY))
            for (kind, loader), blob in zip(loaders, blobs, strict=True)
        }
        return TemplateSamples(
            ring_dimension=int(self.native.GetRingDimension()),
            slots=self.slots,
            modulus=float(self.native.GetModulus()),
            scale=lambda level: float(self.native.GetScalingFactorReal(level)),
            key_tag=keys.secretKey.GetKeyTag(),
            secret_key=blobs[0],
            public_key=blobs[1],
            ciphertext=blobs[2],
            resaved=resaved,
        )

    def _deserialize(self, loader: Callable[..., Any], data: bytes, kind: Kinds) -> Any:
        what = " or ".join(k.value for k in kind) if isinstance(kind, tuple) else kind.value
        # Callers pass only bytes from a frame whose digest and sizes were checked, but
        # an authenticated sender's malformed bytes can still crash OpenFHE (SIGFPE):
        # walk the blob's structure first; this raises FrameError naming what is wrong.
        self.ring.check(data, kind)
        try:
            obj = loader(data, openfhe.BINARY)
        except (RuntimeError, ValueError, MemoryError, TypeError) as exc:
            raise FrameError(
                f"the {what} bytes could not be deserialised by OpenFHE ({exc}); "
                "the sender uses incompatible software or the frame is corrupt"
            ) from None
        context = obj.GetCryptoContext()
        if not _same_native_context(context, self.native):
            raise FrameError(
                f"the {what} was made under other CKKS parameters than this context's "
                f"({self.fingerprint[:16]}); all parties must use the same parameters"
            )
        return obj


def _same_native_context(first: Any, second: Any) -> bool:
    # OpenFHE de-duplicates contexts with equal parameters, so a deserialised
    # object made under our parameters is attached to our context; compare the
    # parameters that matter rather than Python wrapper identity.
    try:
        return bool(
            first.GetRingDimension() == second.GetRingDimension()
            and first.GetModulus() == second.GetModulus()
            and first.GetScalingTechnique() == second.GetScalingTechnique()
            and first.GetBatchSize() == second.GetBatchSize()
            and first.GetCKKSDataType() == second.GetCKKSDataType()
        )
    except RuntimeError as exc:
        raise CryptoError(f"could not compare CKKS contexts: {exc}") from None


_CONTEXTS: dict[CkksParams, CkksContext] = {}
# OpenFHE's registry of contexts (CryptoContextFactory::AllContexts) is a global vector
# without a lock: two threads building the same parameters at once could register two
# contexts, and a blob deserialised later lands in the first while the second's owner
# operates on it ("not generated with the same crypto context").
_CONTEXTS_LOCK = threading.Lock()


def context_for(params: CkksParams) -> CkksContext:
    """The (cached) context for ``params``; building one takes a few milliseconds.

    Thread-safe, and never evicted: OpenFHE keeps every context it made for the life of
    the process and deserialises a blob into the first context with equal parameters,
    so a second context for the same parameters must never exist."""
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(params)
        if context is None:
            context = _CONTEXTS[params] = CkksContext(params)
        return context


def estimate_noise_bits(params: CkksParams, parties: int) -> float:
    """Run OpenFHE's noise estimation on exactly our aggregation circuit.

    The circuit is the one every aggregate goes through: ``parties`` clients each
    encrypt values in [-1/2, 1/2] pre-weighted by 1/parties (as upload ciphertexts:
    scale degree 2, rescaled to one limb), and the aggregator adds them; OpenFHE
    reports log2 of the resulting error.
    """
    if parties < 1:
        raise ParameterError(f"parties must be >= 1, got {parties}")
    native = _generate(_openfhe_params(params, estimating=True))
    keys = native.KeyGen()
    weighted = (np.linspace(-0.5, 0.5, params.slots) / parties).tolist()
    manual = params.scaling_technique is ScalingTechnique.FIXED_MANUAL
    total = None
    for _ in range(parties):
        plaintext = native.MakeCKKSPackedPlaintext(weighted, 2 if manual else 1, 0)
        ciphertext = native.Encrypt(keys.publicKey, plaintext)
        if manual:
            ciphertext = native.Rescale(ciphertext)
        total = ciphertext if total is None else native.EvalAdd(total, ciphertext)
    plaintext = native.Decrypt(keys.secretKey, total)
    return float(plaintext.GetLogError())


def with_noise_flooding(
    params: CkksParams, parties: int, *, margin_bits: float = 1.0
) -> CkksParams:
    """Parameters for flooded threshold decryption of an aggregate over ``parties``.

    The estimate is OpenFHE's for a single key; a joint key of ``parties`` ternary
    secrets makes the rescale's rounding noise about sqrt(parties) times larger, so
    half a bit per doubling is added, and ``margin_bits`` since the estimate is a random
    sample (tests/test_flooding_noise.py measures the real joint noise against it).
    It becomes part of the parameters, and so of the fingerprint every party checks.
    """
    base = params.with_changes(
        decryption_noise=DecryptionNoise.FIXED,
        noise_estimate_bits=None,
        scaling_technique=ScalingTechnique.FIXED_MANUAL,
    )
    estimate = estimate_noise_bits(base, parties) + margin_bits + 0.5 * math.log2(parties)
    return base.with_changes(
        decryption_noise=DecryptionNoise.FLOODING, noise_estimate_bits=round(estimate, 3)
    )


def threshold_params(parties: int, *, flooding: bool = True, **overrides: Any) -> CkksParams:
    """The recommended parameters for a threshold federation of ``parties`` clients.

    Noise flooding is on by default: partial decryptions are seen by the other
    clients, and OpenFHE's fixed 20-bit noise is not provably enough to keep a
    share's secret from them (Li-Micciancio).  It costs a noise-estimation run
    here (milliseconds) and some precision (see docs/crypto.md).
    """
    params = CkksParams(**overrides)
    return with_noise_flooding(params, parties) if flooding else params
