"""t-of-N decryption on ring arrays: Shamir-shared keys, Lagrange weights, synchronised
masks, a one-time pad for blind fusion, and deterministic flooding noise.

**Key shares.** Party i's additive share s_i of the joint secret s = sum_i s_i (OpenFHE's
multiparty key generation) is dealt as Shamir shares f_i(1), ..., f_i(N) of a polynomial
f_i of degree t - 1 with f_i(0) = s_i, coefficient-wise modulo each prime of the key, in
evaluation form (the NTT is linear, so evaluating f_i and transforming commute).  Party j
keeps k_j = sum_i f_i(j), its share of s under F = sum_i f_i: for any set S of at least t
parties, s = sum_{j in S} lambda_j k_j with lambda_j = prod_{m in S, m != j} m / (m - j)
modulo each prime.  Nobody ever holds another party's s_i, and a dropout needs no
reconstruction: another set decrypts.

**Decryption shares.** Party j of S decrypts a ciphertext (c0, c1) as

    d_j = c1 * (lambda_j k_j) + e_j + M_j  (+ P if j is the first member of S)

- e_j is flooding noise of full width, added after the weighting, from a stream keyed by
  the party's noise seed, the set and the ciphertext (:func:`ciphertext_id`: its index
  in the aggregate and the digest of its own c1): an exact resend is the same share,
  however the aggregate is split into messages, and a changed c1 gets other noise
  (the same noise on two c1 would give s * (c1 - c1') away);
- M_j = sum_{m in S, m != j} (+-) U(k_jm; S, ciphertext), pairwise masks from keys the
  aggregator does not hold, which cancel only in the sum over all of S: the shares of a
  set that does not complete stay pseudorandom (ePrint 2026/031, section 5);
- P, the pad, from the epoch's group key, fresh per set, attempt and ciphertext index
  (clients that remove it never see c1).

Shares travel in coefficient form with their low bits, which hold only noise, dropped
(:mod:`threshold_fl.crypto.rounding`).  The aggregator adds c0 to the sum of the
shares, c0 + sum d_j = m + e + P, which it cannot read (:func:`blind_fusion`); every
client removes P (:func:`unpad`) and decodes.

Uniform values modulo q come from AES-256-CTR by rejection sampling (no modular bias);
every secret intermediate is wiped after use.  :func:`threshold_kit` checks all of this
against OpenFHE's keys and encryption once per context.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from threshold_fl.arrays import FloatArray, U64Array
from threshold_fl.crypto import ntt
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.noise import KEY_BYTES, AesCtrStream, GaussianSampler, wipe
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.shares import (
    KeyLimbs,
    KitCache,
    SecretLimbs,
    decode_sums,
    self_tested,
)
from threshold_fl.crypto.vectors import EncryptedVector, rings_of
from threshold_fl.errors import CryptoError, ParameterError
from threshold_fl.identity import length_prefixed
from threshold_fl.sealing import keyed_mac

__all__ = [
    "DecryptionSet",
    "ThresholdKey",
    "ThresholdKit",
    "blind_fusion",
    "ciphertext_id",
    "deal",
    "decryption_shares",
    "derive_key",
    "lagrange_weights",
    "mask_limbs",
    "pad_limbs",
    "ring_parts",
    "threshold_key",
    "threshold_kit",
    "uniform_limbs",
    "unpad",
]

_MAX_PARTIES = 1000


# -- keyed streams -------------------------------------------------------------------------
def derive_key(secret: bytes, label: str, *parts: bytes) -> bytes:
    """A 32-byte key for one purpose: HMAC-SHA256 of the label and the length-prefixed
    parts under *secret*, so distinct tuples never give the same key."""
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise ParameterError("a key derivation secret must be at least 16 bytes")
    return keyed_mac(secret, length_prefixed(f"threshold-fl/{label}".encode()), parts)


def uniform_limbs(key: bytes, moduli: Sequence[int], n: int) -> U64Array:
    """(len(moduli), n) values uniform modulo each modulus, from AES-256-CTR under *key*:
    words cut to the modulus's bit length, those >= q rejected (the same key gives the
    same values)."""
    stream = AesCtrStream(key)
    out = np.empty((len(moduli), n), dtype=np.uint64)
    for limb, q in enumerate(moduli):
        bits, modulus, filled = np.uint64((1 << q.bit_length()) - 1), np.uint64(q), 0
        # Words below q out of the cut: q / 2^bits, at least a half, nearly all for NTT
        # primes just under a power of two; read that many (plus a margin) at a time.
        accept = q / float(1 << q.bit_length())
        while filled < n:
            words = stream.read_uint64(int((n - filled) / accept * 1.05) + 16)
            np.bitwise_and(words, bits, out=words)
            kept = words[words < modulus][: n - filled]
            out[limb, filled : filled + kept.size] = kept
            filled += kept.size
            wipe(words)
            wipe(kept)
    return out


# -- Shamir sharing of a key, Lagrange weights -------------------------------------------------
@dataclass(eq=False)
class ThresholdKey(SecretLimbs):
    """Party ``index``'s share k_j of the joint secret, by modulus (evaluation form)."""

    index: int
    limbs: dict[int, U64Array]
    NAME: ClassVar[str] = "the threshold key"


def _check_sharing(parties: int, threshold: int) -> None:
    for name, value in (("parties", parties), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"{name} must be an integer, got {value!r}")
    if not 2 <= parties <= _MAX_PARTIES or not parties / 2 < threshold <= parties:
        raise ParameterError(f"a t-of-N sharing needs 2 <= N <= {_MAX_PARTIES} and "
                             f"N/2 < t <= N, got N={parties}, t={threshold}")


def deal(key: SecretLimbs, parties: int, threshold: int, *,
         seed: bytes | None = None) -> dict[int, dict[int, U64Array]]:
    """Shamir shares f(1), ..., f(N) of a key, limb by limb: holder -> modulus -> limb.

    The t - 1 random coefficients come from AES-256-CTR under *seed* (default: fresh
    from ``os.urandom``; tests pass one) and are wiped before returning."""
    _check_sharing(parties, threshold)
    seed = os.urandom(KEY_BYTES) if seed is None else seed
    shares: dict[int, dict[int, U64Array]] = {holder: {} for holder in range(1, parties + 1)}
    for q, secret in key.limbs.items():
        n = secret.size
        coefficients = [uniform_limbs(derive_key(seed, "deal", q.to_bytes(8, "big"),
                                                 power.to_bytes(4, "big")), [q], n)[0]
                        for power in range(1, threshold)]
        try:
            for holder in shares:
                shares[holder][q] = _evaluate(secret, coefficients, holder, q)
        finally:
            for coefficient in coefficients:
                wipe(coefficient)
    return shares


def _evaluate(constant: U64Array, coefficients: Sequence[U64Array], x: int, q: int) -> U64Array:
    """constant + sum_k coefficients[k] x^(k+1) modulo q, by Horner's rule."""
    point: U64Array = np.full(constant.size, x, dtype=np.uint64)
    value: U64Array = np.zeros(constant.size, dtype=np.uint64)
    for coefficient in reversed(coefficients):
        ntt.add_mod_into(value, coefficient, q)  # in place: no sum left unwiped
        product = ntt.mul_mod(value, point, q)
        wipe(value)
        value = product
    ntt.add_mod_into(value, constant, q)
    return value


def threshold_key(index: int, held: Sequence[Mapping[int, U64Array]]) -> ThresholdKey:
    """k_j = sum of the Shamir shares party *index* holds, its own included (one per
    dealer); the inputs stay the caller's to wipe."""
    if not held:
        raise ParameterError("a threshold key needs the shares of at least one dealer")
    moduli = set(held[0])
    if any(set(share) != moduli for share in held):
        raise CryptoError("the dealers' Shamir shares cover different moduli")
    limbs = {}
    for q in sorted(moduli):
        total = np.array(held[0][q], dtype=np.uint64, copy=True)
        for share in held[1:]:
            ntt.add_mod_into(total, share[q], q)
        limbs[q] = total
    return ThresholdKey(index, limbs)


def lagrange_weights(members: Sequence[int], q: int) -> dict[int, int]:
    """lambda_j = prod_{m != j} m / (m - j) modulo q for each j of *members*: the weights
    that give f(0) from f(j), j in members, for any f of degree below len(members)."""
    weights = {}
    for j in members:
        numerator, denominator = 1, 1
        for m in members:
            if m != j:
                numerator = numerator * m % q
                denominator = denominator * (m - j) % q
        weights[j] = numerator * pow(denominator, -1, q) % q
    return weights


# -- the set a share is made for ---------------------------------------------------------------
@dataclass(frozen=True)
class DecryptionSet:
    """The parties whose shares are summed, and what the shares are bound to.

    ``binding`` is the caller's (session, key epoch, round, stage, the aggregate's
    digest...); masks and noise depend on it and on the members, the pad also on
    the attempt."""

    members: tuple[int, ...]
    threshold: int
    binding: bytes

    def __post_init__(self) -> None:
        members = self.members
        if not isinstance(members, tuple) or not all(
                isinstance(m, int) and not isinstance(m, bool) for m in members):
            raise ParameterError(f"set members must be a tuple of party indices, got {members!r}")
        if list(members) != sorted(set(members)) or not members or members[0] < 1 or (
                members[-1] > _MAX_PARTIES):
            raise ParameterError(f"set members must be distinct indices 1..{_MAX_PARTIES} in "
                                 f"increasing order, got {members}")
        if len(members) < self.threshold:
            raise ParameterError(f"a decryption set needs at least t={self.threshold} "
                                 f"members, got {len(members)}")
        if not isinstance(self.binding, bytes) or not self.binding:
            raise ParameterError("a decryption set needs a non-empty binding")

    @property
    def pad_holder(self) -> int:
        """The one member who adds the pad: the first."""
        return self.members[0]

    def tag(self) -> bytes:
        return length_prefixed(self.binding) + b"".join(
            m.to_bytes(4, "big") for m in self.members)


def mask_limbs(dset: DecryptionSet, index: int, pair_keys: Mapping[int, bytes],
               ciphertext: bytes, moduli: Sequence[int], n: int) -> U64Array:
    """M_j for the ciphertext *ciphertext* (:func:`ciphertext_id`): the sum over the
    other members m of U(k_jm), added if j < m, subtracted if j > m, so that the masks
    of all of the set cancel and no smaller sum does."""
    if index not in dset.members:
        raise ParameterError(f"party {index} is not in the decryption set {dset.members}")
    total = np.zeros((len(moduli), n), dtype=np.uint64)
    for other in dset.members:
        if other == index:
            continue
        if other not in pair_keys:
            raise ParameterError(f"no pairwise key with party {other} of the decryption set")
        stream = uniform_limbs(derive_key(pair_keys[other], "mask",
                                          dset.tag(), ciphertext), moduli, n)
        for limb, q in enumerate(moduli):
            if index < other:
                ntt.add_mod_into(total[limb], stream[limb], q)
            else:
                ntt.sub_mod_into(total[limb], stream[limb], q)
        wipe(stream)
    return total


def ciphertext_id(c1: U64Array, index: int) -> bytes:
    """What a share's masks and noise are keyed to besides the set: the ciphertext's
    index in the aggregate and the SHA-256 of its c1 (limbs, n; little-endian)."""
    digest = hashlib.sha256(np.ascontiguousarray(c1, dtype="<u8").data).digest()
    return index.to_bytes(8, "big") + digest


def pad_limbs(group_key: bytes, dset: DecryptionSet, attempt: int, ciphertext: int,
              moduli: Sequence[int], n: int) -> U64Array:
    """P for one ciphertext of one attempt of one set: uniform, known to every holder of
    the group key, unknown to the aggregator."""
    key = derive_key(group_key, "pad", dset.tag(), ciphertext.to_bytes(8, "big"),
                     attempt.to_bytes(8, "big"))
    return uniform_limbs(key, moduli, n)


# -- shares, fusion ----------------------------------------------------------------------------
def decryption_shares(
    c1: U64Array, rounding: ShareRounding, key: ThresholdKey, dset: DecryptionSet, *,
    sigma: float, noise_seed: bytes, pair_keys: Mapping[int, bytes],
    group_key: bytes | None = None, attempt: int = 0, first: int = 0,
) -> U64Array:
    """Party ``key.index``'s shares d_j of ciphertexts given by their c1 (count, limbs, n,
    evaluation form), ciphertexts ``first`` onwards of the aggregate, rounded in
    coefficient form for the wire (:mod:`.rounding`).  The first member of the set must
    pass the *group_key* (the pad)."""
    moduli = rounding.moduli
    if c1.ndim != 3 or c1.shape[1] != len(moduli):
        raise ParameterError(f"c1 must be (count, {len(moduli)}, n), got {c1.shape}")
    if (key.index == dset.pad_holder) != (group_key is not None):
        raise ParameterError("the set's first member pads its shares, and only it")
    count, n = c1.shape[0], c1.shape[2]
    weights = [lagrange_weights(dset.members, q)[key.index] for q in moduli]
    weighted = [ntt.mul_mod(key.limb(q), np.full(n, w, dtype=np.uint64), q)
                for q, w in zip(moduli, weights, strict=True)]
    out = np.empty((count, len(moduli), n), dtype=np.uint64)
    try:
        for index in range(count):
            where = ciphertext_id(c1[index], first + index)
            addend = mask_limbs(dset, key.index, pair_keys, where, moduli, n)
            if group_key is not None:
                pad = pad_limbs(group_key, dset, attempt, first + index, moduli, n)
                for limb, q in enumerate(moduli):
                    ntt.add_mod_into(addend[limb], pad[limb], q)
                wipe(pad)
            seed = derive_key(noise_seed, "noise", dset.tag(), where)
            noise = GaussianSampler(sigma, key=seed).sample(n)  # after the weighting
            for limb, q in enumerate(moduli):
                out[index, limb] = rounding.share(addend[limb], c1[index, limb],
                                                  weighted[limb], noise, q)
            for secret in (noise, addend):
                wipe(secret)
    finally:
        for limb_array in weighted:
            wipe(limb_array)
    return out


def ring_parts(context: CkksContext, vector: EncryptedVector
               ) -> tuple[U64Array, U64Array, tuple[int, ...]]:
    """An aggregate's c0 and c1 parts, each (count, limbs, n), and their moduli: c1 is
    what the members of a decryption set get, c0 what the aggregator keeps."""
    rings = rings_of(context, vector)
    if not rings:
        moduli = context.aggregate_moduli
        empty = np.empty((0, len(moduli), context.ring.ring_dimension), dtype=np.uint64)
        return empty, empty.copy(), moduli
    c0 = np.stack([ring.elements[0] for ring in rings])
    c1 = np.stack([ring.elements[1] for ring in rings])
    return c0, c1, tuple(rings[0].summary.moduli)


def blind_fusion(c0: U64Array, shares: Sequence[U64Array], rounding: ShareRounding
                 ) -> U64Array:
    """The aggregator's c0 + sum of the set's rounded shares (count, limbs, n), rounded
    again: m + e + P, in coefficient form."""
    return rounding.fuse(c0, shares)


def unpad(fused: U64Array, group_key: bytes, dset: DecryptionSet, attempt: int,
          rounding: ShareRounding, first: int = 0) -> U64Array:
    """m + e in coefficient form from the broadcast fused polynomials (ciphertexts
    ``first`` onwards): the pad removed, ready to decode
    (``decode_sums(..., coefficients=True)``)."""
    out = rounding.lifted(fused)
    for index in range(fused.shape[0]):
        pad = pad_limbs(group_key, dset, attempt, first + index, rounding.moduli,
                        fused.shape[2])
        for limb, q in enumerate(rounding.moduli):
            ntt.sub_mod_into(out[index, limb], pad[limb], q)  # no temporary of the pad left
        wipe(pad)
    return out


# -- the self-test against OpenFHE -------------------------------------------------------------
@dataclass(frozen=True)
class ThresholdKit:
    """A context whose threshold path passed the self-test, and its flooding width."""

    context: CkksContext
    sigma: float


_KITS: KitCache = {}
_PROBE_VALUES = 64


def threshold_kit(context: CkksContext) -> ThresholdKit:
    """The context's kit, self-tested on first use against OpenFHE (a three-party key
    from OpenFHE's multiparty key generation, t = 2); a failure is kept and raised."""
    return self_tested(_KITS, context, _self_tested_kit)


def _self_tested_kit(context: CkksContext) -> ThresholdKit:
    from threshold_fl.crypto.keys import combine_public_shares, lead_keygen, member_keygen

    kit = ThresholdKit(context, 2.0 ** context.params.decryption_noise_bits())
    lead = lead_keygen(context, 1)
    parties = [lead, *(member_keygen(context, i, lead.public_share) for i in (2, 3))]
    joint = combine_public_shares(context, {p.index: p.public_share for p in parties}, 1)
    secrets = [KeyLimbs(context, party.secret.native) for party in parties]
    dealt = [deal(secret, 3, 2) for secret in secrets]
    keys = [threshold_key(j, [shares[j] for shares in dealt]) for j in (1, 2, 3)]
    try:
        _check_interpolation(secrets, keys)
        _check_decryption(context, kit, joint.key.native, keys)
    finally:
        for secret in secrets:
            secret.wipe()
        for key in keys:
            key.wipe()
        for shares in dealt:
            for limbs in shares.values():
                for limb in limbs.values():
                    wipe(limb)
    return kit


def _fail(what: str) -> CryptoError:
    return CryptoError(f"the threshold decryption path failed its self-test: {what} (another "
                       "OpenFHE version or a broken kernel); threshold mode cannot run here")


def _check_interpolation(secrets: Sequence[KeyLimbs], keys: Sequence[ThresholdKey]) -> None:
    """Every set of at least t = 2 parties interpolates the joint secret sum_i s_i exactly."""
    for q in secrets[0].limbs:
        joint = secrets[0].limb(q).copy()
        for secret in secrets[1:]:
            ntt.add_mod_into(joint, secret.limb(q), q)
        for size in (2, 3):
            for members in itertools.combinations((1, 2, 3), size):
                weights = lagrange_weights(members, q)
                total = np.zeros_like(joint)
                for j in members:
                    ntt.add_mod_into(total, ntt.mul_mod(
                        keys[j - 1].limb(q), np.full(total.size, weights[j], np.uint64), q), q)
                if not np.array_equal(total, joint):
                    raise _fail(f"the Lagrange sum of set {members} is not the joint secret")
                wipe(total)
        wipe(joint)


def _check_decryption(context: CkksContext, kit: ThresholdKit, joint_key: object,
                      keys: Sequence[ThresholdKey]) -> None:
    """Two of three parties decrypt an OpenFHE encryption under the joint key through
    masks, pad and blind fusion; without the pad it decodes to nothing."""
    from threshold_fl.crypto.ring import BlobKind

    values: FloatArray = np.linspace(-0.5, 0.5, _PROBE_VALUES, dtype=np.float64)
    native = context.encrypt_upload(joint_key, values)
    blob = context.ring.parse(context.serialize(native), BlobKind.CIPHERTEXT)
    rounding = ShareRounding.of(context)
    if tuple(blob.summary.moduli) != rounding.moduli:
        raise _fail(f"an upload has moduli {blob.summary.moduli}, not {rounding.moduli}")
    c0, c1 = blob.elements[0][None], blob.elements[1][None]
    dset = DecryptionSet((1, 3), 2, b"self-test")
    pair = os.urandom(KEY_BYTES)
    group = os.urandom(KEY_BYTES)
    shares = [decryption_shares(c1, rounding, keys[j - 1], dset, sigma=kit.sigma,
                                noise_seed=os.urandom(KEY_BYTES), pair_keys={4 - j: pair},
                                group_key=group if j == 1 else None)
              for j in (1, 3)]
    fused = blind_fusion(c0, shares, rounding)
    bound = context.error_bound(2) / context.params.encoding_divisor
    decoded = decode_sums(context, unpad(fused, group, dset, 0, rounding), values.size,
                          coefficients=True)
    error = float(np.abs(decoded / context.params.encoding_divisor - values).max())
    if not error < bound:
        raise _fail(f"two of three threshold shares decode off by {error:.3g} (bound {bound:.3g})")
    padded = decode_sums(context, rounding.lifted(fused), values.size, coefficients=True) / (
        context.params.encoding_divisor)
    if float(np.abs(padded - values).max()) < 1.0:
        raise _fail("the fused polynomial decodes without removing the pad")
