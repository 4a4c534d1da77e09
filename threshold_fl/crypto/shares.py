"""Partial decryption and fusion on ring arrays, beside OpenFHE.

A party's decryption share of a ciphertext (c0, c1) under its key share s_i is
c1 * s_i + e_i (the lead's also carries c0), per RNS limb in OpenFHE's evaluation
form; e_i is one rounded Gaussian polynomial of width sigma = 2^decryption_noise_bits
from :class:`~threshold_fl.crypto.noise.GaussianSampler` (AES-256-CTR, never numpy's
generators).  OpenFHE spends about 77 % of ``MultipartyDecryptMain`` in its sampler;
this path does the same arithmetic with our kernels (:mod:`threshold_fl.crypto.ntt`).

Fusion adds the shares modulo q and decodes the sum: for one limb with every slot
used, here (inverse NTT, centred coefficients, the canonical embedding by FFT);
otherwise OpenFHE fuses the summed share as one blob.

Before a context's first use, :func:`ring_kit` checks this path against OpenFHE on a
throwaway key: the difference of the two shares of one ciphertext, back in
coefficients, must be Gaussian of the width both claim, and our decoding must agree
with OpenFHE's fusion.  If not, the ring path refuses to run and says why;
``TFL_DECRYPTION_PATH=openfhe`` (or ``path=DecryptionPath.OPENFHE``) uses OpenFHE's
own ``MultipartyDecryptLead/Main`` instead, for comparison or as a way out.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from threshold_fl.crypto import ntt
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.noise import GaussianSampler, wipe
from threshold_fl.crypto.ring import BlobKind, RingBlob, build
from threshold_fl.errors import CryptoError, FrameError, ParameterError

U64Array = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]

__all__ = [
    "PATH_ENV",
    "DecryptionPath",
    "KeyLimbs",
    "RingKit",
    "coefficients_of",
    "decode_sums",
    "default_path",
    "openfhe_shares",
    "ring_kit",
    "ring_shares",
    "sum_shares",
]

PATH_ENV = "TFL_DECRYPTION_PATH"
# The self-test's allowance for the measured width of (OpenFHE's share - ours):
# 8192 samples estimate a standard deviation within about 1.6 % (1 sigma).
_WIDTH_TOLERANCE_BITS = 0.15
_SELF_TEST_VALUES = 64


class DecryptionPath(str, Enum):
    """Who computes partial decryptions: our ring kernels (default) or OpenFHE."""

    RING = "ring"
    OPENFHE = "openfhe"


def default_path() -> DecryptionPath:
    """The path named by ``TFL_DECRYPTION_PATH`` (``ring`` when unset)."""
    value = os.environ.get(PATH_ENV, DecryptionPath.RING.value).strip().lower()
    try:
        return DecryptionPath(value)
    except ValueError:
        raise ParameterError(
            f"{PATH_ENV}={value!r} is not a decryption path; use 'ring' (default) or 'openfhe'"
        ) from None


# -- key material --------------------------------------------------------------------
class KeyLimbs:
    """A secret key share's limbs by modulus, copied out of OpenFHE; wipe after use.

    Use as a context manager: the limbs and the serialised bytes they came from are
    zeroed on exit (best effort: OpenFHE's own copy is OpenFHE's).
    """

    def __init__(self, context: CkksContext, secret_native: Any) -> None:
        data = context.serialize(secret_native)
        try:
            blob = context.ring.parse(data, BlobKind.SECRET_KEY)
        finally:
            _wipe_bytes(data)
        self._blob = blob
        self.limbs = {q: blob.elements[0, index] for index, q in enumerate(blob.summary.moduli)}

    def __enter__(self) -> KeyLimbs:
        return self

    def __exit__(self, *_: object) -> None:
        self.wipe()

    def wipe(self) -> None:
        self._blob.wipe()

    def limb(self, q: int) -> U64Array:
        try:
            limb: U64Array = self.limbs[q]
        except KeyError:
            raise CryptoError(f"the secret key has no limb modulo {q}") from None
        return limb


def _wipe_bytes(data: bytes) -> None:
    """Zero a bytes object's buffer in place (it held a serialised secret key).

    Python bytes are immutable, but this one is a fresh, private object from OpenFHE's
    serialiser that nothing else refers to; ctypes writes over its buffer.
    """
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    if data and address is not None:
        ctypes.memset(address, 0, len(data))


# -- shares --------------------------------------------------------------------------
def ring_shares(
    context: CkksContext,
    key: KeyLimbs,
    ciphertexts: Sequence[RingBlob],
    *,
    lead: bool,
    sampler: GaussianSampler,
) -> U64Array:
    """Shares of ``ciphertexts`` as one (count, limbs, n) uint64 array, evaluation form."""
    n = context.ring.ring_dimension
    limbs = _limbs_of(context, ciphertexts)
    out = np.empty((len(ciphertexts), limbs, n), dtype=np.uint64)
    for index, ciphertext in enumerate(ciphertexts):
        moduli = ciphertext.summary.moduli
        noise = sampler.sample_mod(n, moduli)
        try:
            for limb, q in enumerate(moduli):
                out[index, limb] = _share_limb(ciphertext.elements[:, limb], key.limb(q),
                                               noise[limb], q, lead=lead)
        finally:
            wipe(noise)
    return out


def _share_limb(c: U64Array, s: U64Array, noise: U64Array, q: int, *, lead: bool) -> U64Array:
    tables = ntt.tables_for(s.size, q)
    product = ntt.mul_mod(c[1], s, q)  # c1 * s alone would give s away: wiped below
    flood = tables.forward(noise)
    share = ntt.add_mod(product, flood, q)
    wipe(product)
    wipe(flood)
    return ntt.add_mod(share, c[0], q) if lead else share


def openfhe_shares(
    context: CkksContext, secret_native: Any, natives: Sequence[Any], *, lead: bool
) -> U64Array:
    """OpenFHE's own shares (``MultipartyDecryptLead/Main``) as the same array."""
    decrypt = context.native.MultipartyDecryptLead if lead else context.native.MultipartyDecryptMain
    n = context.ring.ring_dimension
    parsed = [context.ring.parse(context.serialize(decrypt([c], secret_native)[0]),
                                 BlobKind.DECRYPTION_SHARE) for c in natives]
    out = np.empty((len(parsed), _limbs_of(context, parsed), n), dtype=np.uint64)
    for index, blob in enumerate(parsed):
        out[index] = blob.elements[0]
    return out


def _limbs_of(context: CkksContext, blobs: Sequence[RingBlob]) -> int:
    limbs = {len(blob.summary.moduli) for blob in blobs}
    if len(limbs) > 1:
        raise FrameError(f"the ciphertexts of one vector have different limb counts {limbs}")
    return limbs.pop() if limbs else context.ring.limbs - context.upload_level


# -- fusion --------------------------------------------------------------------------
def sum_shares(context: CkksContext, shares: Sequence[U64Array]) -> U64Array:
    """The element-wise sum of every party's share array, modulo each limb's modulus."""
    total = np.array(shares[0], dtype=np.uint64, copy=True)
    for limb, q in enumerate(context.ring.moduli[: total.shape[1]]):
        modulus = np.uint64(q)
        view = total[:, limb]
        for share in shares[1:]:
            view += share[:, limb]  # both below q < 2^62: no overflow
            view -= np.where(view >= modulus, modulus, np.uint64(0))
    return total


def decode_sums(
    context: CkksContext, sums: U64Array, length: int, *, kit: RingKit | None = None
) -> FloatArray:
    """The values of fused shares (count, limbs, n): ``length`` reals, unnormalised."""
    out = np.empty(length)
    step = context.values_per_ciphertext
    own = sums.shape[1] == 1 and context.slots == context.ring.ring_dimension // 2
    for index in range(sums.shape[0]):
        start = index * step
        count = min(step, length - start)
        values = (_decode_own(context, sums[index], count) if own
                  else _decode_openfhe(context, kit or ring_kit(context), sums[index], count))
        out[start : start + count] = values
    return out * context.params.encoding_divisor


def _decode_own(context: CkksContext, fused: U64Array, count: int) -> FloatArray:
    """Inverse NTT, centred coefficients, then the canonical embedding (slot j at
    xi^(5^j), xi = exp(i pi / n)) divided by the scale."""
    n, q = fused.shape[1], context.ring.moduli[0]
    evaluations = np.fft.ifft(coefficients_of(fused[0], q) * _twist(n)) * n
    level = context.ring.limbs - 1
    slots = evaluations[_slot_indices(n)[: (count + 1) // 2]] / context.ring.scales[(level, 1)]
    values = np.empty(2 * slots.size)
    values[0::2], values[1::2] = slots.real, slots.imag
    return values[:count]


def _decode_openfhe(context: CkksContext, kit: RingKit, fused: U64Array, count: int) -> FloatArray:
    template = kit.share_template(fused.shape[0])
    share = context.deserialize_share(build(template, fused[None]))
    return context.decode(context.native.MultipartyDecryptFusion([share]), count)


def coefficients_of(evaluations: U64Array, q: int) -> npt.NDArray[np.int64]:
    """One limb in evaluation form -> its coefficients as signed integers in (-q/2, q/2]."""
    coefficients = ntt.tables_for(evaluations.size, q).inverse(evaluations).view(np.int64)
    return np.where(coefficients > q // 2, coefficients - np.int64(q), coefficients)


_TWISTS: dict[int, npt.NDArray[np.complex128]] = {}
_SLOTS: dict[int, npt.NDArray[np.intp]] = {}


def _twist(n: int) -> npt.NDArray[np.complex128]:
    if n not in _TWISTS:
        _TWISTS[n] = np.exp(1j * np.pi * np.arange(n) / n)
    return _TWISTS[n]


def _slot_indices(n: int) -> npt.NDArray[np.intp]:
    if n not in _SLOTS:
        powers = np.empty(n // 2, dtype=np.int64)
        power = 1
        for j in range(n // 2):
            powers[j] = power
            power = power * 5 % (2 * n)
        _SLOTS[n] = ((powers - 1) // 2).astype(np.intp)
    return _SLOTS[n]


# -- the per-context kit and its self-test ----------------------------------------------
@dataclass
class RingKit:
    """What the ring path needs per context: share layouts, the noise width, a verdict."""

    context: CkksContext
    sigma: float
    templates: dict[int, RingBlob] = field(default_factory=dict)  # by limb count

    def share_template(self, limbs: int) -> RingBlob:
        try:
            return self.templates[limbs]
        except KeyError:
            raise FrameError(
                f"a decryption share of {limbs} limbs; this context's aggregates have "
                f"{sorted(self.templates)}"
            ) from None

    def sampler(self) -> GaussianSampler:
        """A fresh sampler of this context's width, keyed from os.urandom."""
        return GaussianSampler(self.sigma)


_KITS: dict[str, RingKit] = {}


def ring_kit(context: CkksContext) -> RingKit:
    """The context's kit, made and self-tested on first use (about 0.1 s)."""
    kit = _KITS.get(context.fingerprint)
    if kit is None or kit.context is not context:
        kit = _self_tested_kit(context)
        _KITS[context.fingerprint] = kit
    return kit


def _self_tested_kit(context: CkksContext) -> RingKit:
    # Local import: keys imports vectors' neighbours; the kit needs a real joint key.
    from threshold_fl.crypto.keys import combine_public_shares, lead_keygen

    kit = RingKit(context, 2.0 ** context.params.decryption_noise_bits())
    party = lead_keygen(context, 1)
    joint = combine_public_shares(context, {1: party.public_share}, 1)
    values: FloatArray = np.linspace(-0.5, 0.5, _SELF_TEST_VALUES, dtype=np.float64)
    ciphertext = context.encrypt_upload(joint.key.native, values)
    parsed = context.ring.parse(context.serialize(ciphertext), BlobKind.CIPHERTEXT)
    (theirs,) = context.native.MultipartyDecryptLead([ciphertext], party.secret.native)
    template = context.ring.parse(context.serialize(theirs), BlobKind.DECRYPTION_SHARE)
    kit.templates[template.elements.shape[1]] = template
    with KeyLimbs(context, party.secret.native) as key:
        ours = ring_shares(context, key, [parsed], lead=True, sampler=kit.sampler())
    _check_width(context, kit.sigma, ours[0], template.elements[0])
    _check_decoding(context, kit, ours, template.elements, values)
    return kit


def _check_width(context: CkksContext, sigma: float, ours: U64Array, theirs: U64Array) -> None:
    """(OpenFHE's share - ours) must be two noises of width sigma: sqrt(2) sigma."""
    for limb, q in enumerate(context.ring.moduli[: ours.shape[0]]):
        centred = coefficients_of(ntt.sub_mod(theirs[limb], ours[limb], q), q)
        measured = math.log2(float(np.std(centred.astype(np.float64))) + 1.0)
        expected = math.log2(sigma * math.sqrt(2.0))
        if abs(measured - expected) > _WIDTH_TOLERANCE_BITS:
            raise CryptoError(
                f"the ring decryption path failed its self-test: OpenFHE's share and ours "
                f"differ by noise of width 2^{measured:.2f} on limb {limb}, expected "
                f"2^{expected:.2f} (another OpenFHE version or a broken kernel); set "
                f"{PATH_ENV}=openfhe to use OpenFHE's own partial decryption"
            )


def _check_decoding(
    context: CkksContext, kit: RingKit, ours: U64Array, theirs: U64Array, values: FloatArray
) -> None:
    """Our share must decode to the values both here and in OpenFHE's fusion."""
    bound = context.error_bound(2) / context.params.encoding_divisor
    decoded = decode_sums(context, ours, values.size, kit=kit) / context.params.encoding_divisor
    fused = _decode_openfhe(context, kit, ours[0], values.size)
    theirs_decoded = _decode_openfhe(context, kit, theirs[0], values.size)
    for name, got in (("our decoding of our share", decoded),
                      ("OpenFHE's fusion of our share", fused),
                      ("OpenFHE's fusion of its own share", theirs_decoded)):
        error = float(np.abs(got - values).max())
        if not error < bound:
            raise CryptoError(
                f"the ring decryption path failed its self-test: {name} is off by {error:.3g} "
                f"(bound {bound:.3g}); set {PATH_ENV}=openfhe to use OpenFHE's own path"
            )
