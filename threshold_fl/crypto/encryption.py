"""Public-key encryption of uploads on ring arrays, beside OpenFHE.

A client's upload is OpenFHE's CKKS public-key encryption at scale degree 2 over
the two limbs q0 q1, then a rescale to the one limb q0 (see
``CkksContext.encrypt_upload``).  This module computes the same thing with our
kernels (:mod:`threshold_fl.crypto.ntt`), about 3x faster, and writes it into the
bytes of a real OpenFHE upload under the same key:

- randomness as OpenFHE's ``EncryptZeroCore``: v uniform ternary, e0 and e1 of
  the context's Gaussian width (3.19), all from AES-256-CTR keystreams with fresh
  ``os.urandom`` keys (e0, e1 are rounded continuous Gaussians: docs/crypto.md);
- the plaintext as OpenFHE's CKKS encoding: the inverse canonical embedding, the
  coefficients scaled by the scaling factor and rounded to integers, then
  multiplied by the scaling factor once more for scale degree 2;
- c = (b v + e0 + m, a v + e1) for the public key (b, a), then OpenFHE's rescale
  (c - [c]_{q1}) / q1 mod q0 with [.] the centred remainder, fused so that the q1
  limb is only ever needed in coefficients: six NTTs per ciphertext.

Before a context's first use, :func:`encryption_kit` checks this against OpenFHE
on a throwaway key: the fused kernel must give exactly OpenFHE's ``Rescale`` of
the two-limb ciphertext; the two-limb noise c0 + c1 s - m must have the width
OpenFHE's own encryption has (and that its parameters predict); OpenFHE must
decrypt our ciphertexts to the values.  If not, it refuses and says why;
``TFL_ENCRYPTION_PATH=openfhe`` uses OpenFHE's ``Encrypt`` and ``Rescale``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import openfhe

from threshold_fl.arrays import FloatArray, I64Array, U64Array
from threshold_fl.crypto import ntt
from threshold_fl.crypto.context import CkksContext, _openfhe_params
from threshold_fl.crypto.noise import AesCtrStream, GaussianSampler, wipe
from threshold_fl.crypto.params import ScalingTechnique
from threshold_fl.crypto.ring import BlobKind, RingBlob, build
from threshold_fl.crypto.shares import (
    KeyLimbs,
    KitCache,
    coefficients_of,
    path_from_env,
    self_tested,
    slot_indices,
    twist,
)
from threshold_fl.errors import CryptoError, ParameterError

__all__ = [
    "ENCRYPTION_PATH_ENV",
    "EncryptionKit",
    "EncryptionPath",
    "encryption_kit",
    "encryption_path",
    "ring_supported",
]

ENCRYPTION_PATH_ENV = "TFL_ENCRYPTION_PATH"
# OpenFHE scales a coefficient down to 61 bits before rounding it (MAX_BITS_IN_WORD)
# and multiplies the power of two back in modulo each limb.
_MAX_COEFFICIENT_BITS = 61
# Allowances for a measured noise width: one ciphertext's 8192 coefficients, whose width
# also depends on the throwaway key's |s| and |e| (about 0.9 % spread in all, measured),
# so 0.08 bits (5.7 %) is about six standard deviations; OpenFHE's gets more room.
_OWN_TOLERANCE_BITS = 0.08
_OPENFHE_TOLERANCE_BITS = 0.1
# The end-to-end width moves only about 0.1 bits when e0 and e1 are 15 % too wide (the
# key's own e is OpenFHE's), close to the allowance above; so the draws are also checked
# alone.  One draw's 8192 values estimate a width within 0.8 % (one standard deviation;
# rounding adds 0.4 % at sigma 3.19), so 5 % is about six standard deviations.
_DRAW_TOLERANCE = 0.05
_TERNARY_WIDTH = math.sqrt(2.0 / 3.0)  # uniform on {-1, 0, 1}
_SELF_TEST_VALUES = 64
_KEYS_CACHED = 16


class EncryptionPath(str, Enum):
    """Who encrypts uploads: our ring kernels (default) or OpenFHE."""

    RING = "ring"
    OPENFHE = "openfhe"


def encryption_path() -> EncryptionPath:
    """The path named by ``TFL_ENCRYPTION_PATH`` (``ring`` when unset)."""
    return path_from_env(ENCRYPTION_PATH_ENV, EncryptionPath, "an encryption path")


def ring_supported(context: CkksContext) -> bool:
    """Whether uploads of this context can be encrypted here: manual rescaling from two
    limbs to one, every slot of the ring used, a power-of-two scaling factor."""
    ring = context.ring
    scale = ring.scales.get((0, 1), 0.0)
    return (context.params.scaling_technique is ScalingTechnique.FIXED_MANUAL
            and ring.limbs == 2 and context.slots == ring.ring_dimension // 2
            and scale >= 1.0 and math.log2(scale).is_integer())


# -- the pieces of one encryption --------------------------------------------------------
@dataclass(frozen=True)
class _Randomness:
    """v, e0, e1 of one encryption (int64 each); wipe after use."""

    v: I64Array
    e0: I64Array
    e1: I64Array

    def wipe(self) -> None:
        for array in (self.v, self.e0, self.e1):
            wipe(array)


@dataclass(frozen=True)
class _Plaintext:
    """OpenFHE's scale-degree-2 encoding: coefficient k is m[k] * factor[q] modulo q."""

    m: I64Array  # the coefficients times the scaling factor, rounded (|m| < 2^61)
    power: int  # the rest of the scale: the scaling factor times 2^(OpenFHE's shift)

    def factor(self, q: int) -> int:
        return self.power % q


def encode(context: CkksContext, values: FloatArray) -> _Plaintext:
    """Up to ``values_per_ciphertext`` normalised reals as OpenFHE encodes them at scale
    degree 2 (two reals per complex slot, the rest zero)."""
    n = context.ring.ring_dimension
    if values.size > context.values_per_ciphertext:
        raise ParameterError(f"at most {context.values_per_ciphertext} values per ciphertext")
    pairs = np.zeros(n, dtype=np.float64)
    pairs[: values.size] = values
    slots = pairs.view(np.complex128)  # (x0 + i x1, x2 + i x3, ...)
    spectrum = np.empty(n, dtype=np.complex128)
    indices = slot_indices(n)
    spectrum[indices] = slots
    spectrum[n - 1 - indices] = np.conj(slots)  # the conjugate roots: a real polynomial
    scale = context.ring.scales[(0, 1)]
    coefficients = (np.fft.fft(spectrum) * _untwist(n, scale)).real
    largest = float(np.abs(coefficients).max())
    shift = max(0, math.ceil(math.log2(largest)) - _MAX_COEFFICIENT_BITS) if largest else 0
    if shift:
        coefficients /= 2.0**shift
    m = np.rint(coefficients).astype(np.int64)
    return _Plaintext(m, round(scale) << shift)


@lru_cache(maxsize=8)
def _untwist(n: int, scale: float) -> npt.NDArray[np.complex128]:
    """scale / (n twist): undoes decoding's twist and FFT length, and scales."""
    return scale / (n * twist(n))


def _draw(ternary: AesCtrStream, gaussian: GaussianSampler, n: int) -> _Randomness:
    return _Randomness(_ternary(ternary, n), gaussian.sample(n), gaussian.sample(n))


def _ternary(stream: AesCtrStream, n: int) -> I64Array:
    """n values uniform in {-1, 0, 1}: keystream bytes below 255, modulo 3."""
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        words = stream.read_uint64((n - filled) // 8 + 8)
        octets = words.view(np.uint8)
        kept = octets[octets < 255][: n - filled]
        out[filled : filled + kept.size] = kept.astype(np.int64) % 3 - 1
        filled += kept.size
        wipe(words)
    return out


# -- the public key ------------------------------------------------------------------------
@dataclass(frozen=True)
class _KeyRings:
    """A public key's limbs (b, a) and an OpenFHE upload under it (our output's layout)."""

    elements: U64Array  # (2, limbs, n), evaluation form
    shoup: U64Array  # their Shoup words, floor(x 2^64 / q), for the kernel's products
    upload: RingBlob


_KEYS: dict[tuple[str, str], _KeyRings] = {}  # (context fingerprint, key digest)


def _key_rings(context: CkksContext, native_key: Any) -> _KeyRings:
    data = context.serialize(native_key)
    cache_key = (context.fingerprint, _digest(data))
    cached = _KEYS.get(cache_key)
    if cached is not None:
        return cached
    public = context.ring.parse(data, BlobKind.PUBLIC_KEY)
    upload = context.ring.parse(
        context.serialize(context.encrypt_upload(native_key, np.zeros(2))), BlobKind.CIPHERTEXT
    )
    if len(_KEYS) >= _KEYS_CACHED:
        _KEYS.pop(next(iter(_KEYS)))
    shoup = np.empty_like(public.elements)
    for limb, q in enumerate(public.summary.moduli):
        for element in range(2):
            shoup[element, limb] = ntt.shoup_precompute(public.elements[element, limb], q)
    rings = _KEYS[cache_key] = _KeyRings(public.elements, shoup, upload)
    return rings


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the arithmetic ----------------------------------------------------------------------
def _two_limbs(context: CkksContext, key: U64Array, plain: _Plaintext,
               rand: _Randomness) -> U64Array:
    """(b v + e0 + m, a v + e1) over both limbs, evaluation form: OpenFHE's Encrypt."""
    n = context.ring.ring_dimension
    out = np.empty((2, 2, n), dtype=np.uint64)
    for limb, q in enumerate(context.ring.moduli):
        tables = ntt.tables_for(n, q)
        v = tables.forward(_mod(rand.v, q))
        message = ntt.mul_mod(_mod(plain.m, q), np.full(n, plain.factor(q), np.uint64), q)
        for element, noise in enumerate((rand.e0, rand.e1)):
            term = _mod(noise, q)
            if element == 0:
                ntt.add_mod_into(term, message, q)  # in place: the noise is not left behind
            product, spread = ntt.mul_mod(key[element, limb], v, q), tables.forward(term)
            out[element, limb] = ntt.add_mod(product, spread, q)
            for temporary in (term, product, spread):
                wipe(temporary)
        wipe(v)
        wipe(message)
    return out


def _rescale(context: CkksContext, two: U64Array) -> U64Array:
    """OpenFHE's rescale from q0 q1 to q0: (c - [c]_{q1}) q1^-1 mod q0, [.] centred."""
    q0, q1 = context.ring.moduli
    out = np.empty((2, 1, two.shape[2]), dtype=np.uint64)
    inverse = np.full(two.shape[2], pow(q1, -1, q0), np.uint64)
    for element in range(2):
        remainder = _mod(coefficients_of(two[element, 1], q1), q0)
        lifted = ntt.tables_for(two.shape[2], q0).forward(remainder)
        out[element, 0] = ntt.mul_mod(ntt.sub_mod(two[element, 0], lifted, q0), inverse, q0)
    return out


def _mod(values: I64Array, q: int) -> U64Array:
    return np.mod(values, np.int64(q)).view(np.uint64)


def _fused(context: CkksContext, key: _KeyRings, plain: _Plaintext,
           rand: _Randomness) -> U64Array:
    """_rescale(_two_limbs(...)) compiled, one pass per element: six NTTs in all."""
    q0, q1 = context.ring.moduli
    n = context.ring.ring_dimension
    t0, t1 = ntt.tables_for(n, q0), ntt.tables_for(n, q1)
    out = np.empty((2, 1, n), dtype=np.uint64)
    _nb_encrypt(key.elements, key.shoup, plain.m, rand.v, rand.e0, rand.e1, out,
                _constants(q0, plain.factor(q0), t0, pow(q1, -1, q0)),
                _constants(q1, plain.factor(q1), t1, 1),
                t0.psi_rev, t0.psi_rev_shoup, t1.psi_rev, t1.psi_rev_shoup,
                t1.psi_inv_rev, t1.psi_inv_rev_shoup)
    return out


def _constants(q: int, factor: int, tables: ntt.NttTables, last: int) -> U64Array:
    """What the kernel needs of one modulus: q; the plaintext factor, 1/n and ``last``
    (the rescale's 1/q1 for q0), each with its Shoup word floor(x 2^64 / q)."""
    words = [q]
    for value in (factor, pow(tables.n, -1, q), last):
        words += [value, (value << 64) // q]
    return np.array(words, dtype=np.uint64)


@ntt._jit
def _nb_small(x: np.int64, q: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    # x mod q for |x| < q, without a division.
    return np.uint64(x) + q if x < 0 else np.uint64(x)


@ntt._jit
def _nb_scaled(m: np.int64, factor: np.uint64, factor_shoup: np.uint64,
               q: np.uint64) -> Any:  # pragma: no cover - compiled
    # m * factor mod q for any int64 m: the product of |m|, negated.
    product = ntt._nb_mul_shoup(np.uint64(-m) if m < 0 else np.uint64(m), factor, factor_shoup, q)
    return ntt._nb_reduce(q - product, q) if m < 0 else product


@ntt._jit
def _nb_encrypt(key: U64Array, key_shoup: U64Array, m: Any, v: Any, e0: Any, e1: Any,
                out: U64Array, low_q: U64Array, top_q: U64Array, psi0: U64Array,
                psi0s: U64Array, psi1: U64Array, psi1s: U64Array, inv1: U64Array,
                inv1s: U64Array) -> None:  # pragma: no cover - compiled
    n = m.size
    q0, f0, f0s, qi, qis = low_q[0], low_q[1], low_q[2], low_q[5], low_q[6]
    q1, f1, f1s = top_q[0], top_q[1], top_q[2]
    half = q1 >> np.uint64(1)
    v0 = np.empty(n, dtype=np.uint64)
    v1 = np.empty(n, dtype=np.uint64)
    for i in range(n):
        v0[i] = _nb_small(v[i], q0)
        v1[i] = _nb_small(v[i], q1)
    ntt._nb_forward(v0, psi0, psi0s, q0)
    ntt._nb_forward(v1, psi1, psi1s, q1)
    top = np.empty(n, dtype=np.uint64)
    low = np.empty(n, dtype=np.uint64)
    for element in range(2):
        noise = e0 if element == 0 else e1
        for i in range(n):
            top[i] = ntt._nb_mul_shoup(v1[i], key[element, 1, i], key_shoup[element, 1, i], q1)
        ntt._nb_inverse(top, inv1, inv1s, q1, top_q[3], top_q[4])
        for i in range(n):
            x = ntt._nb_reduce(top[i] + _nb_small(noise[i], q1), q1)
            y = _nb_small(noise[i], q0)
            if element == 0:
                x = ntt._nb_reduce(x + _nb_scaled(m[i], f1, f1s, q1), q1)
                y = ntt._nb_reduce(y + _nb_scaled(m[i], f0, f0s, q0), q0)
            # y - [x]_{q1} modulo q0, with [x]_{q1} the centred remainder.
            centred = np.int64(x) - np.int64(q1) if x > half else np.int64(x)
            low[i] = ntt._nb_reduce(y + _nb_small(-centred, q0), q0)
        ntt._nb_forward(low, psi0, psi0s, q0)
        for i in range(n):
            total = ntt._nb_reduce(
                ntt._nb_mul_shoup(v0[i], key[element, 0, i], key_shoup[element, 0, i], q0)
                + low[i], q0)
            out[element, 0, i] = ntt._nb_mul_shoup(total, qi, qis, q0)
    for i in range(n):  # v in evaluation form and c before the rescale give v away
        v0[i] = 0
        v1[i] = 0
        top[i] = 0
        low[i] = 0


# -- encrypting, and the self-test per context ---------------------------------------------
@dataclass(frozen=True)
class EncryptionKit:
    """A context whose ring encryption passed the self-test, and OpenFHE's noise width."""

    context: CkksContext
    sigma: float  # e0 and e1 (OpenFHE's StandardDeviation)

    def encrypt(self, public_native: Any, chunks: Iterator[FloatArray]) -> Iterator[RingBlob]:
        """One upload ciphertext per chunk of normalised reals, under ``public_native``;
        fresh keystreams for the whole call."""
        context = self.context
        key = _key_rings(context, public_native)
        n = context.ring.ring_dimension
        ternary, gaussian = AesCtrStream(), GaussianSampler(self.sigma)
        compiled = ntt.backend() == "numba"
        for values in chunks:
            plain = encode(context, values)
            rand = _draw(ternary, gaussian, n)
            try:
                elements = (_fused(context, key, plain, rand) if compiled
                            else _rescale(context, _two_limbs(context, key.elements, plain, rand)))
            finally:
                rand.wipe()
                wipe(plain.m)
            yield RingBlob(key.upload.summary, elements, key.upload.skeleton)


_KITS: KitCache = {}


def encryption_kit(context: CkksContext) -> EncryptionKit:
    """The context's kit, self-tested on first use (about 0.2 s).  Raises CryptoError if
    the context is not one this module encrypts for (see :func:`ring_supported`) or the
    self-test failed; a failure is kept and raised again, naming the way out."""
    return self_tested(_KITS, context, _self_tested_kit)


def _self_tested_kit(context: CkksContext) -> EncryptionKit:
    if not ring_supported(context):
        raise CryptoError(
            "ring encryption needs manual rescaling from two limbs to one with every slot "
            f"used; these parameters encrypt with OpenFHE ({ENCRYPTION_PATH_ENV}=openfhe)"
        )
    raw = _openfhe_params(context.params)
    if raw.GetSecretKeyDist() != openfhe.SecretKeyDist.UNIFORM_TERNARY:
        _fail(f"OpenFHE's secret distribution is {raw.GetSecretKeyDist()}, not ternary")
    kit = EncryptionKit(context, float(raw.GetStandardDeviation()))
    keys = context.native.KeyGen()  # throwaway: only the self-test sees it
    key = _key_rings(context, keys.publicKey)
    n = context.ring.ring_dimension
    values: FloatArray = np.linspace(-0.5, 0.5, _SELF_TEST_VALUES, dtype=np.float64)
    plain = encode(context, values)
    rand = _draw(AesCtrStream(), GaussianSampler(kit.sigma), n)
    try:
        two = _two_limbs(context, key.elements, plain, rand)
        ours = _rescale(context, two)
        _check_rescale(context, two, ours, keys.publicKey)
        if ntt.backend() == "numba" and not np.array_equal(
                _fused(context, key, plain, rand), ours):
            _fail("the compiled kernel and the numpy arithmetic give different ciphertexts")
    finally:
        rand.wipe()
    _check_noise(kit, keys, key)
    _check_decryption(context, keys, next(kit.encrypt(keys.publicKey, iter([values]))), values)
    return kit


def _check_rescale(context: CkksContext, two: U64Array, ours: U64Array, public: Any) -> None:
    """OpenFHE's Rescale of our two-limb ciphertext must be exactly our rescale."""
    template = context.ring.parse(
        context.serialize(context.native.Encrypt(public, context.encode(np.zeros(2),
                                                                        scale_degree=2))),
        BlobKind.CIPHERTEXT)
    native = context.deserialize_ciphertext(build(template, two))
    theirs = context.ring.parse(context.serialize(context.native.Rescale(native)),
                                BlobKind.CIPHERTEXT)
    if not np.array_equal(theirs.elements, ours):
        _fail("OpenFHE's Rescale of our two-limb ciphertext differs from ours")


def _check_noise(kit: EncryptionKit, keys: Any, key: _KeyRings) -> None:
    """c0 + c1 s of encryptions of zero (two limbs, before the rescale), ours and
    OpenFHE's, must have the width OpenFHE's parameters give: sigma^2 (1 + 4n/3) for
    v, s ternary and e, e0, e1 of width sigma."""
    context = kit.context
    n = context.ring.ring_dimension
    q1 = context.ring.moduli[1]
    expected = math.log2(kit.sigma * math.sqrt(1.0 + 4.0 * n / 3.0))
    zero = _Plaintext(np.zeros(n, dtype=np.int64), 1)
    rand = _draw(AesCtrStream(), GaussianSampler(kit.sigma), n)
    try:
        _check_draws(kit.sigma, rand)
        ours = _two_limbs(context, key.elements, zero, rand)[:, 1]
    finally:
        rand.wipe()
    theirs = context.ring.parse(
        context.serialize(context.native.Encrypt(keys.publicKey, context.encode(
            np.zeros(2), scale_degree=2))), BlobKind.CIPHERTEXT).elements[:, 1]
    with KeyLimbs(context, keys.secretKey) as secret:
        s = secret.limb(q1)
        for what, pair, tolerance in (("our encryption", ours, _OWN_TOLERANCE_BITS),
                                      ("OpenFHE's encryption", theirs, _OPENFHE_TOLERANCE_BITS)):
            noise = coefficients_of(ntt.add_mod(pair[0], ntt.mul_mod(pair[1], s, q1), q1), q1)
            measured = math.log2(float(np.std(noise.astype(np.float64))))
            if abs(measured - expected) > tolerance:
                _fail(f"{what} has noise of width 2^{measured:.2f}; OpenFHE's parameters give "
                      f"2^{expected:.2f}")


def _check_draws(sigma: float, rand: _Randomness) -> None:
    """v, e0 and e1 of one encryption, each of the width it should have: ternary, and
    OpenFHE's StandardDeviation."""
    for what, values, width in (("v", rand.v, _TERNARY_WIDTH), ("e0", rand.e0, sigma),
                                ("e1", rand.e1, sigma)):
        measured = float(np.sqrt(np.mean(np.square(values, dtype=np.float64))))
        if abs(measured / width - 1.0) > _DRAW_TOLERANCE:
            _fail(f"our encryption's {what} has width {measured:.3f}; OpenFHE's parameters "
                  f"give {width:.3f}")


def _check_decryption(context: CkksContext, keys: Any, blob: RingBlob,
                      values: FloatArray) -> None:
    native = context.deserialize_ciphertext(build(blob))
    got = context.decode(context.native.Decrypt(keys.secretKey, native), values.size)
    error = float(np.abs(got - values).max())
    bound = context.error_bound(1) / context.params.encoding_divisor
    if not error < bound:
        _fail(f"OpenFHE decrypts our ciphertext with error {error:.3g} (bound {bound:.3g})")


def _fail(what: str) -> NoReturn:
    raise CryptoError(
        f"ring encryption failed its self-test: {what} (another OpenFHE version or a broken "
        f"kernel); set {ENCRYPTION_PATH_ENV}=openfhe to encrypt with OpenFHE"
    )
