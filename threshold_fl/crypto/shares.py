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

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from threshold_fl.arrays import FloatArray, U64Array
from threshold_fl.crypto import ntt
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.noise import GaussianSampler, reduce_mod, wipe
from threshold_fl.crypto.ring import BlobKind, RingBlob, build
from threshold_fl.errors import CryptoError, FrameError, ParameterError

__all__ = [
    "PATH_ENV",
    "DecryptionPath",
    "KeyLimbs",
    "RingKit",
    "SecretLimbs",
    "centred",
    "coefficients_of",
    "decode_sums",
    "default_path",
    "openfhe_shares",
    "path_from_env",
    "ring_kit",
    "ring_shares",
    "self_tested",
    "share_limb",
    "share_template",
    "slot_indices",
    "sum_shares",
    "twist",
]

PATH_ENV = "TFL_DECRYPTION_PATH"
# The self-test's allowance for a measured noise width: n = 8192 samples estimate a
# standard deviation to about 0.011 bits (1 sigma), 2n to 0.008.  Our own noise must be
# within 0.06 bits (7 sigma); differences involving OpenFHE's noise within 0.15.
_OWN_TOLERANCE_BITS = 0.06
_WIDTH_TOLERANCE_BITS = 0.15
_SELF_TEST_VALUES = 64


class DecryptionPath(str, Enum):
    """Who computes partial decryptions: our ring kernels (default) or OpenFHE."""

    RING = "ring"
    OPENFHE = "openfhe"


Path = TypeVar("Path", bound=Enum)


def path_from_env(variable: str, kind: type[Path], what: str) -> Path:
    """The path named by the environment ``variable`` (``ring`` when unset); any other
    value than ``ring`` or ``openfhe`` is refused with both names."""
    value = os.environ.get(variable, "ring").strip().lower()
    try:
        return kind(value)
    except ValueError:
        raise ParameterError(
            f"{variable}={value!r} is not {what}; use 'ring' (default) or 'openfhe'"
        ) from None


def default_path() -> DecryptionPath:
    """The path named by ``TFL_DECRYPTION_PATH`` (``ring`` when unset)."""
    return path_from_env(PATH_ENV, DecryptionPath, "a decryption path")


# -- key material --------------------------------------------------------------------
_Limbs = TypeVar("_Limbs", bound="SecretLimbs")


class SecretLimbs:
    """Secret ring limbs by modulus (evaluation form): wipe after use, or use as a context
    manager (zeroed on exit)."""

    limbs: dict[int, U64Array]
    NAME: ClassVar[str] = "the secret key"  # what the errors call it

    def __enter__(self: _Limbs) -> _Limbs:
        return self

    def __exit__(self, *_: object) -> None:
        self.wipe()

    def wipe(self) -> None:
        for limb in self.limbs.values():
            wipe(limb)

    def limb(self, q: int) -> U64Array:
        try:
            return self.limbs[q]
        except KeyError:
            raise CryptoError(f"{self.NAME} has no limb modulo {q}") from None


class KeyLimbs(SecretLimbs):
    """A secret key share's limbs by modulus, copied out of OpenFHE; the serialised bytes
    they came from are zeroed at once (best effort: OpenFHE's own copy is OpenFHE's)."""

    def __init__(self, context: CkksContext, secret_native: Any) -> None:
        data = context.serialize(secret_native)
        try:
            blob = context.ring.parse(data, BlobKind.SECRET_KEY)
        finally:
            wipe(data)  # a fresh object from OpenFHE's serialiser: nothing else has it
        self.limbs = {q: blob.elements[0, index] for index, q in enumerate(blob.summary.moduli)}


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
        noise = sampler.sample(n)  # one integer polynomial: CRT-consistent across limbs
        try:
            for limb, q in enumerate(moduli):
                c0, c1 = ciphertext.elements[0, limb], ciphertext.elements[1, limb]
                out[index, limb] = share_limb(c0, c1, key.limb(q), noise, q, add=lead)
        finally:
            wipe(noise)
    return out


def share_limb(addend: U64Array, c1: U64Array, s: U64Array, noise: npt.NDArray[np.int64],
               q: int, *, add: bool) -> U64Array:
    """c1 * s + noise (+ addend if *add*) modulo q, evaluation form; *noise* is a signed
    coefficient-form polynomial.  The compiled pass never leaves c1 * s alone in memory."""
    if ntt.backend() != "numba":
        return _share_limb(addend, c1, s, noise, q, add=add)
    tables = ntt.tables_for(s.size, q)
    ratio = (1 << 128) // q
    out = np.empty(s.size, dtype=np.uint64)
    _nb_share(addend, c1, s, noise, out, tables.psi_rev, tables.psi_rev_shoup, np.uint64(q),
              np.uint64(ratio & ((1 << 64) - 1)), np.uint64(ratio >> 64), add)
    return out


@ntt._jit
def _nb_share(c0: U64Array, c1: U64Array, s: U64Array, noise: Any, out: U64Array,
              psi: U64Array, psi_shoup: U64Array, q: np.uint64, r0: np.uint64, r1: np.uint64,
              lead: bool) -> None:  # pragma: no cover - compiled
    modulus = np.int64(q)
    for i in range(out.size):
        out[i] = np.uint64(noise[i] % modulus)  # Python's %: non-negative
    ntt._nb_forward(out, psi, psi_shoup, q)
    for i in range(out.size):
        value = ntt._nb_reduce(ntt._nb_mul_barrett(c1[i], s[i], q, r0, r1) + out[i], q)
        out[i] = ntt._nb_reduce(value + c0[i], q) if lead else value


def _share_limb(addend: U64Array, c1: U64Array, s: U64Array, signed: npt.NDArray[np.int64],
                q: int, *, add: bool) -> U64Array:
    noise = reduce_mod(signed, [q])[0]
    tables = ntt.tables_for(s.size, q)
    share = ntt.mul_mod(c1, s, q)  # c1 * s alone would give s away: flooded in place
    flood = tables.forward(noise)
    ntt.add_mod_into(share, flood, q)
    for temporary in (flood, noise):
        wipe(temporary)
    if add:
        ntt.add_mod_into(share, addend, q)
    return share


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
    return limbs.pop() if limbs else len(context.aggregate_moduli)


# -- fusion --------------------------------------------------------------------------
def sum_shares(context: CkksContext, shares: Sequence[U64Array]) -> U64Array:
    """The element-wise sum of every party's share array, modulo each limb's modulus."""
    total = np.array(shares[0], dtype=np.uint64, copy=True)
    moduli = context.ring.moduli[: total.shape[1]]
    for index, row in enumerate(total):  # a ciphertext at a time: small temporaries
        for limb, q in enumerate(moduli):
            for share in shares[1:]:
                ntt.add_mod_into(row[limb], share[index, limb], q)
    return total


def decode_sums(context: CkksContext, sums: U64Array, length: int, *,
                coefficients: bool = False) -> FloatArray:
    """The values of fused shares (count, limbs, n), in evaluation form or, with
    *coefficients*, in coefficient form: ``length`` reals, unnormalised."""
    out = np.empty(length)
    step = context.values_per_ciphertext
    own = sums.shape[1] == 1 and context.slots == context.ring.ring_dimension // 2
    for index in range(sums.shape[0]):
        start = index * step
        count = min(step, length - start)
        if own:
            values = _decode_own(context, sums[index], count, coefficients=coefficients)
        else:
            values = _decode_openfhe(context, _evaluations(context, sums[index], coefficients),
                                     count)
        out[start : start + count] = values
    return out * context.params.encoding_divisor


def _evaluations(context: CkksContext, fused: U64Array, coefficients: bool) -> U64Array:
    if not coefficients:
        return fused
    n = fused.shape[1]
    return np.stack([ntt.tables_for(n, q).forward(fused[limb])
                     for limb, q in enumerate(context.ring.moduli[: fused.shape[0]])])


def _decode_own(context: CkksContext, fused: U64Array, count: int, *,
                coefficients: bool) -> FloatArray:
    """(Inverse NTT,) centred coefficients, then the canonical embedding (slot j at
    xi^(5^j), xi = exp(i pi / n)) divided by the scale."""
    n, q = fused.shape[1], context.ring.moduli[0]
    signed = centred(fused[0], q) if coefficients else coefficients_of(fused[0], q)
    evaluations = np.fft.ifft(signed * twist(n)) * n
    level = context.ring.limbs - 1
    slots = evaluations[slot_indices(n)[: (count + 1) // 2]] / context.ring.scales[(level, 1)]
    values = np.empty(2 * slots.size)
    values[0::2], values[1::2] = slots.real, slots.imag
    return values[:count]


def _decode_openfhe(context: CkksContext, fused: U64Array, count: int) -> FloatArray:
    template = share_template(context, fused.shape[0])
    share = context.deserialize_share(build(template, fused[None]))
    return context.decode(context.native.MultipartyDecryptFusion([share]), count)


def coefficients_of(evaluations: U64Array, q: int) -> npt.NDArray[np.int64]:
    """One limb in evaluation form -> its coefficients as signed integers in (-q/2, q/2]."""
    return centred(ntt.tables_for(evaluations.size, q).inverse(evaluations), q)


def centred(coefficients: U64Array, q: int) -> npt.NDArray[np.int64]:
    """Coefficients below q as signed integers in (-q/2, q/2]."""
    signed = coefficients.view(np.int64)
    return np.where(signed > q // 2, signed - np.int64(q), signed)


_TWISTS: dict[int, npt.NDArray[np.complex128]] = {}
_SLOTS: dict[int, npt.NDArray[np.intp]] = {}


def twist(n: int) -> npt.NDArray[np.complex128]:
    """exp(i pi k / n): turns the negacyclic evaluation at the odd powers of
    exp(i pi / n) into a plain FFT."""
    if n not in _TWISTS:
        _TWISTS[n] = np.exp(1j * np.pi * np.arange(n) / n)
    return _TWISTS[n]


def slot_indices(n: int) -> npt.NDArray[np.intp]:
    """Where slot j sits among the FFT's outputs: the root exp(i pi 5^j / n)."""
    if n not in _SLOTS:
        powers = np.empty(n // 2, dtype=np.int64)
        power = 1
        for j in range(n // 2):
            powers[j] = power
            power = power * 5 % (2 * n)
        _SLOTS[n] = ((powers - 1) // 2).astype(np.intp)
    return _SLOTS[n]


# -- share layouts and the self-test, per context ---------------------------------------
@dataclass(frozen=True)
class _Probe:
    """A throwaway two-party joint key, one ciphertext under it and OpenFHE's shares."""

    values: FloatArray
    ciphertext: RingBlob
    secrets: tuple[Any, Any]  # lead's and member's OpenFHE secret keys
    openfhe_lead: RingBlob  # OpenFHE's lead share: also the layout our shares are written in


#: By fingerprint: one context per fingerprint, never evicted (context_for).
_PROBES: dict[str, _Probe] = {}


def _probe(context: CkksContext) -> _Probe:
    cached = _PROBES.get(context.fingerprint)
    if cached is not None:
        return cached
    # Local import: keys imports this module's neighbours.
    from threshold_fl.crypto.keys import combine_public_shares, lead_keygen, member_keygen

    lead = lead_keygen(context, 1)
    member = member_keygen(context, 2, lead.public_share)
    # Two parties: a real joint key has the empty key tag, and so do its shares.
    joint = combine_public_shares(context, {1: lead.public_share, 2: member.public_share}, 1)
    values: FloatArray = np.linspace(-0.5, 0.5, _SELF_TEST_VALUES, dtype=np.float64)
    native = context.encrypt_upload(joint.key.native, values)
    (share,) = context.native.MultipartyDecryptLead([native], lead.secret.native)
    probe = _Probe(values, context.ring.parse(context.serialize(native), BlobKind.CIPHERTEXT),
                   (lead.secret.native, member.secret.native),
                   context.ring.parse(context.serialize(share), BlobKind.DECRYPTION_SHARE))
    _PROBES[context.fingerprint] = probe
    return probe


def share_template(context: CkksContext, limbs: int) -> RingBlob:
    """A real OpenFHE share of this context's aggregates, whose layout shares are written in."""
    template = _probe(context).openfhe_lead
    if template.elements.shape[1] != limbs:
        raise FrameError(
            f"a decryption share of {limbs} limbs; this context's aggregates have "
            f"{template.elements.shape[1]}"
        )
    return template


@dataclass(frozen=True)
class RingKit:
    """A context whose ring path passed the self-test, and its noise width."""

    context: CkksContext
    sigma: float

    def sampler(self) -> GaussianSampler:
        """A fresh sampler of this context's width, keyed from os.urandom."""
        return GaussianSampler(self.sigma)


Kit = TypeVar("Kit")
_SELF_TEST_LOCK = threading.RLock()  # a kit's self-test may use another kit
#: fingerprint -> kit or failure; one context per fingerprint, never evicted (context_for)
KitCache = dict[str, Any]


def self_tested(cache: KitCache, context: CkksContext,
                build: Callable[[CkksContext], Kit]) -> Kit:
    """The context's kit from ``cache``, built (self-tested) on first use.  A failure is
    kept and raised again, so a broken path is not re-tested on every call."""
    with _SELF_TEST_LOCK:  # OpenFHE's global state is not thread-safe: one at a time
        cached = cache.get(context.fingerprint)
        if cached is None:
            try:
                cached = build(context)
            except CryptoError as failure:
                cached = failure
            cache[context.fingerprint] = cached
    if isinstance(cached, CryptoError):
        raise CryptoError(str(cached))
    kit: Kit = cached
    return kit


_KITS: KitCache = {}


def ring_kit(context: CkksContext) -> RingKit:
    """The context's kit, self-tested on first use (about 0.1 s); a failure is kept and
    raised again, naming the way out."""
    return self_tested(_KITS, context, _self_tested_kit)


def _self_tested_kit(context: CkksContext) -> RingKit:
    kit = RingKit(context, 2.0 ** context.params.decryption_noise_bits())
    probe = _probe(context)
    with KeyLimbs(context, probe.secrets[0]) as lead, KeyLimbs(context, probe.secrets[1]) as member:
        twice = [ring_shares(context, lead, [probe.ciphertext], lead=True,
                             sampler=kit.sampler())[0] for _ in range(2)]
        exact = _exact_lead(context, lead, probe.ciphertext)
        member_share = ring_shares(context, member, [probe.ciphertext], lead=False,
                                   sampler=kit.sampler())
    try:
        for limb, q in enumerate(context.ring.moduli[: exact.shape[0]]):
            ours = [coefficients_of(ntt.sub_mod(share[limb], exact[limb], q), q)
                    for share in twice]
            _check_width("our noise", np.concatenate(ours), kit.sigma, _OWN_TOLERANCE_BITS)
            _check_width("two of our shares of one ciphertext", ours[0] - ours[1],
                         math.sqrt(2.0) * kit.sigma, _WIDTH_TOLERANCE_BITS)
            theirs = coefficients_of(ntt.sub_mod(probe.openfhe_lead.elements[0, limb],
                                                 twice[0][limb], q), q)
            _check_width("OpenFHE's share and ours", theirs, math.sqrt(2.0) * kit.sigma,
                         _WIDTH_TOLERANCE_BITS)
    finally:
        wipe(exact)
    total = sum_shares(context, [twice[0][None], member_share])
    _check_decoding(context, total, probe.values)
    return kit


def _exact_lead(context: CkksContext, key: KeyLimbs, ciphertext: RingBlob) -> U64Array:
    """c0 + c1 * s per limb, without noise (the probe's throwaway key only)."""
    out = np.empty(ciphertext.elements.shape[1:], dtype=np.uint64)
    for limb, q in enumerate(ciphertext.summary.moduli):
        c0, c1 = ciphertext.elements[0, limb], ciphertext.elements[1, limb]
        out[limb] = ntt.add_mod(ntt.mul_mod(c1, key.limb(q), q), c0, q)
    return out


def _check_width(what: str, noise: npt.NDArray[np.int64], sigma: float, tolerance: float) -> None:
    measured = math.log2(float(np.std(noise.astype(np.float64))) + 1.0)
    expected = math.log2(sigma)
    if abs(measured - expected) > tolerance:
        raise CryptoError(
            f"the ring decryption path failed its self-test: {what} differ by noise of width "
            f"2^{measured:.2f}, expected 2^{expected:.2f} (another OpenFHE version or a broken "
            f"kernel); set {PATH_ENV}=openfhe to use OpenFHE's own partial decryption"
        )


def _check_decoding(context: CkksContext, total: U64Array, values: FloatArray) -> None:
    """Both parties' shares must decode to the values, here and in OpenFHE's fusion."""
    bound = context.error_bound(2) / context.params.encoding_divisor
    decoded = decode_sums(context, total, values.size) / context.params.encoding_divisor
    fused = _decode_openfhe(context, total[0], values.size)
    for name, got in (("our decoding of our shares", decoded),
                      ("OpenFHE's fusion of our shares", fused)):
        error = float(np.abs(got - values).max())
        if not error < bound:
            raise CryptoError(
                f"the ring decryption path failed its self-test: {name} is off by {error:.3g} "
                f"(bound {bound:.3g}); set {PATH_ENV}=openfhe to use OpenFHE's own path"
            )
