"""Float vectors of any length as packed CKKS ciphertexts, and their aggregation.

A vector of L reals becomes ceil(L / values_per_ciphertext) ciphertexts (two
reals per complex slot).  Values are divided by ``2 * value_bound`` before
encoding, so every aggregate stays far from wrapping the modulus.

Clients apply their FedAvg weight before encrypting and upload one-limb
ciphertexts; the aggregator only adds.  No level is spent on weights, so an
upload costs one RNS limb per value pair (16 B/value) and aggregation is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, overload

import numpy as np

from threshold_fl.arrays import FloatArray, U64Array
from threshold_fl.crypto import ntt
from threshold_fl.crypto.context import CkksContext, sha256_hex
from threshold_fl.crypto.encryption import (
    EncryptionPath,
    encryption_kit,
    encryption_path,
    ring_supported,
)
from threshold_fl.crypto.keys import JointPublicKey, PublicKey, SecretKey, ThresholdSecret
from threshold_fl.crypto.params import MAX_VECTOR_LENGTH
from threshold_fl.crypto.ring import BlobKind, BlobSummary, RingBlob, build
from threshold_fl.crypto.shares import (
    DecryptionPath,
    KeyLimbs,
    decode_sums,
    default_path,
    openfhe_shares,
    ring_kit,
    ring_shares,
    sum_shares,
)
from threshold_fl.errors import CryptoError, KeyMismatchError, ParameterError

__all__ = [
    "DecryptionPath",
    "EncryptedSum",
    "EncryptedVector",
    "PartialDecryption",
    "ciphertext_count",
    "decrypt_vector",
    "encrypt_chunks",
    "encrypt_vector",
    "fuse_partial_decryptions",
    "partial_decrypt",
    "rings_of",
    "vector_digest",
]


def ciphertext_count(context: CkksContext, length: int) -> int:
    """How many ciphertexts a vector of ``length`` reals occupies."""
    _check_length(length)
    return math.ceil(length / context.values_per_ciphertext)


@dataclass(frozen=True, eq=False)
class EncryptedVector:
    """``length`` reals encrypted under key ``key_id`` as packed ciphertexts."""

    params_fingerprint: str
    key_id: str
    length: int
    ciphertexts: Sequence[Any] = field(repr=False)  # OpenFHE ciphertexts
    aggregated: bool = False  # True for the aggregator's sum (what is decrypted)
    # OpenFHE does not re-serialise a deserialised ciphertext to the same bytes,
    # so a vector decoded from frames keeps the digest of the bytes it came in.
    wire_digest: str | None = field(default=None, repr=False)
    # The checked ring elements of each ciphertext, when decoded from frames: partial
    # decryption reads these and OpenFHE deserialises only if asked (LazyCiphertexts).
    rings: tuple[RingBlob, ...] | None = field(default=None, repr=False)

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the serialised ciphertexts: what partial decryptions refer to."""
        if self.wire_digest is not None:
            return self.wire_digest
        return vector_digest(self.params_fingerprint, self.key_id, self.length, self.blobs())

    def blobs(self) -> list[bytes]:
        """The ciphertexts' OpenFHE bytes (built from the ring blobs where there are)."""
        if self.rings is not None:
            return [build(ring) for ring in self.rings]
        return [CkksContext.serialize(ciphertext) for ciphertext in self.ciphertexts]


class LazyCiphertexts(Sequence[Any]):
    """OpenFHE ciphertexts deserialised from checked ring blobs on first access."""

    def __init__(self, context: CkksContext, rings: Sequence[RingBlob]) -> None:
        self._context = context
        self._rings = rings
        self._natives: list[Any] = [None] * len(rings)

    def __len__(self) -> int:
        return len(self._rings)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if self._natives[index] is None:
            blob = build(self._rings[index])
            self._natives[index] = self._context.deserialize_ciphertext(blob, BlobKind.CIPHERTEXT)
        return self._natives[index]


def vector_digest(fingerprint: str, key_id: str, length: int, blobs: Sequence[bytes]) -> str:
    """Digest binding a vector's parameters, key, length and ciphertext bytes."""
    return sha256_hex(f"{fingerprint}:{key_id}:{length}".encode(), *blobs)


@dataclass(frozen=True, eq=False)
class PartialDecryption:
    """One party's decryption share of every ciphertext of one vector."""

    params_fingerprint: str
    joint_key_id: str
    vector_digest: str
    party_index: int
    lead: bool  # the lead share also carries the ciphertext's c0 term
    length: int
    # (ciphertexts, limbs, n) uint64 in OpenFHE's evaluation form, whichever path made it
    shares: U64Array = field(repr=False)

    def __post_init__(self) -> None:
        shares = self.shares
        if not (isinstance(shares, np.ndarray) and shares.dtype == np.uint64
                and shares.ndim == 3):
            raise ParameterError(
                "a partial decryption's shares must be a (ciphertexts, limbs, n) uint64 array"
            )


# -- encryption ----------------------------------------------------------------
def encrypt_chunks(
    context: CkksContext, public_key: PublicKey, values: FloatArray, *, weight: float = 1.0,
    path: EncryptionPath | None = None,
) -> Iterator[RingBlob]:
    """Encrypt ``weight * values`` one ciphertext at a time (for streaming large vectors).

    ``weight`` is the client's FedAvg weight, which the aggregator announces; the
    weights of one aggregation must sum to at most the context's ``weight_capacity``
    (1 for FedAvg weights is always within it).  The ciphertexts come as checked ring
    blobs: from our kernels (:mod:`threshold_fl.crypto.encryption`) where the context
    allows and ``path`` (default: ``TFL_ENCRYPTION_PATH``) is not ``openfhe``, else from
    OpenFHE's ``Encrypt`` and ``Rescale``.
    """
    context.check_fingerprint(public_key.params_fingerprint, "the public key")
    _check_weight(context, weight)
    normalised = _normalised(context, values) * weight
    step = context.values_per_ciphertext
    chunks = (normalised[start : start + step] for start in range(0, normalised.size, step))
    if (path or encryption_path()) is EncryptionPath.RING and ring_supported(context):
        yield from encryption_kit(context).encrypt(public_key.native, chunks)
        return
    for chunk in chunks:
        native = context.encrypt_upload(public_key.native, chunk)
        yield context.ring.parse(context.serialize(native), BlobKind.CIPHERTEXT)


def encrypt_vector(
    context: CkksContext, public_key: PublicKey, values: FloatArray, *, weight: float = 1.0,
    path: EncryptionPath | None = None,
) -> EncryptedVector:
    """Encrypt ``weight * values`` whole (held in memory; use encrypt_chunks to stream)."""
    vector = np.asarray(values)
    rings = tuple(encrypt_chunks(context, public_key, vector, weight=weight, path=path))
    return EncryptedVector(context.fingerprint, public_key.key_id, int(vector.size),
                           LazyCiphertexts(context, rings), rings=rings)


def _check_weight(context: CkksContext, weight: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ParameterError(f"the weight must be a number, got {weight!r}")
    capacity = context.weight_capacity
    if not (math.isfinite(weight) and 0 < weight <= capacity * (1 + 1e-12)):
        raise ParameterError(
            f"the weight must be in (0, {capacity:g}], got {weight!r}; FedAvg weights are "
            "sample counts divided by their sum"
        )


def _normalised(context: CkksContext, values: FloatArray) -> FloatArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ParameterError(f"encrypt a 1-D vector; got shape {array.shape} (flatten it first)")
    _check_length(array.size)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise ParameterError(f"vectors must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    bound = context.params.value_bound
    bad = ~np.isfinite(array) | (np.abs(array) > bound)
    if bad.any():
        index = int(np.argmax(bad))
        raise ParameterError(
            f"value {array[index]!r} at index {index} is not finite or exceeds value_bound "
            f"{bound}; clip the update or raise value_bound in the CKKS parameters"
        )
    return array / context.params.encoding_divisor


# -- aggregation -----------------------------------------------------------------
class EncryptedSum:
    """Streamed sum of the clients' pre-weighted encrypted vectors.

    It holds one running aggregate, never N inputs, and only adds: the inputs carry
    their weights already (see :func:`encrypt_chunks`).  The aggregator that assigned
    the weights is the one that keeps their sum within ``weight_capacity``.
    """

    def __init__(self, context: CkksContext, key_id: str, length: int) -> None:
        self._context = context
        self._key_id = key_id
        self._length = length
        self._count = ciphertext_count(context, length)
        # (ciphertexts, 2, limbs, n), allocated at the first input (zeroed pages cost no
        # memory until written), and per ciphertext the layout the sum is written in: the
        # first input's summary and skeleton around a view of the running total.  The
        # summary (OpenFHE's key tag, level, scale) is what every other input must match;
        # joint keys all have the empty tag, so the tag only backs up the key_id checks.
        self._total: U64Array | None = None
        self._layout: list[RingBlob | None] = []
        self._reference: BlobSummary | None = None
        self._taken = False
        self.inputs = 0
        #: Most ciphertexts staged at once (one input, or one part of one): what the sum
        #: holds beyond its running total.
        self.peak_staged = 0

    def add(self, vector: EncryptedVector) -> None:
        """Add one encrypted vector (checked against key, parameters and length)."""
        self._context.check_fingerprint(vector.params_fingerprint, "an input vector")
        if vector.key_id != self._key_id:
            raise KeyMismatchError(
                f"an input vector is encrypted under key {vector.key_id[:16]}, not the "
                f"aggregation key {self._key_id[:16]}; it cannot be combined"
            )
        if vector.aggregated:
            raise ParameterError("an already aggregated vector cannot be aggregated again")
        if vector.length != self._length:
            raise ParameterError(f"input has {vector.length} values, the aggregate {self._length}")
        self.add_chunks(vector.rings if vector.rings is not None else vector.ciphertexts)

    def add_chunks(self, ciphertexts: Iterable[RingBlob | Any]) -> None:
        """Add one input given as its ciphertexts in order (e.g. straight off the wire):
        ring blobs, or OpenFHE ciphertexts.

        All or nothing: the input is staged first (one client's worth of memory) and
        joins the sum only once complete and checked, so an upload that breaks off or
        fails a check leaves the sum exactly as it was.
        """
        self.add_part(0, self._count, ciphertexts)
        self.inputs += 1

    def add_part(self, start: int, stop: int, ciphertexts: Iterable[RingBlob | Any]) -> None:
        """Add ciphertexts ``start`` to ``stop - 1`` of one input (a part of an upload
        streamed in several messages), all or nothing for the part: only the part is
        staged.  Which inputs' parts make up whole inputs is the caller's bookkeeping."""
        if self._taken:
            raise ParameterError("the sum was already taken with result(); start a new one")
        if not 0 <= start <= stop <= self._count:
            raise ParameterError(f"ciphertexts {start} to {stop} are outside the sum's "
                                 f"{self._count}")
        staged = self._staged(ciphertexts, stop - start)
        self.peak_staged = max(self.peak_staged, len(staged))
        if not staged:
            return
        if self._total is None:
            self._total = np.zeros((self._count, *staged[0].elements.shape), dtype=np.uint64)
            self._layout = [None] * self._count
        self._reference = staged[0].summary
        for index, blob in enumerate(staged, start):
            total = self._total[index]
            if self._layout[index] is None:
                total[...] = blob.elements
                self._layout[index] = RingBlob(blob.summary, total, blob.skeleton)
                continue
            for limb, q in enumerate(blob.summary.moduli):
                ntt.add_mod_into(total[:, limb], blob.elements[:, limb], q)

    def _staged(self, ciphertexts: Iterable[RingBlob | Any], count: int) -> list[RingBlob]:
        staged: list[RingBlob] = []
        for ciphertext in ciphertexts:
            if len(staged) == count:
                raise ParameterError(f"input has more than {count} ciphertexts")
            blob = self._ring_of(ciphertext)
            self._context.check_upload_summary(blob.summary, ParameterError)
            expected = self._reference or (staged[0].summary if staged else blob.summary)
            if blob.summary.key_tag != expected.key_tag:
                raise KeyMismatchError(
                    "an input ciphertext was encrypted under another key than the others; "
                    "it cannot be combined"
                )
            elif blob.summary != expected:
                raise ParameterError(
                    f"an input ciphertext has moduli {blob.summary.moduli} and scale "
                    f"{blob.summary.scaling_factor}; the first has {expected.moduli} and "
                    f"{expected.scaling_factor}: it cannot be combined"
                )
            staged.append(blob)
        if len(staged) != count:
            raise ParameterError(f"input has {len(staged)} ciphertexts, expected {count}")
        return staged

    def _ring_of(self, ciphertext: RingBlob | Any) -> RingBlob:
        if isinstance(ciphertext, RingBlob):
            if ciphertext.kind is not BlobKind.CIPHERTEXT:
                raise ParameterError(
                    f"an input must be a ciphertext, got a {ciphertext.kind.value}")
            return ciphertext
        return self._context.ring.parse(CkksContext.serialize(ciphertext), BlobKind.CIPHERTEXT)

    def ring_parts(self) -> tuple[U64Array, U64Array]:
        """The aggregate's c0 and c1 parts, each (count, limbs, n), as
        :func:`threshold_fl.crypto.threshold.ring_parts` gives them but as views of the
        running total, not copies (at 10^8 values a copy would be 1.6 GB more, when the
        aggregator holds the most); the sum is taken, as by :meth:`result`."""
        self.result()  # its checks, and the sum is taken
        if self._total is None:  # no ciphertexts
            shape = (0, len(self._context.aggregate_moduli), self._context.ring.ring_dimension)
            return np.empty(shape, dtype=np.uint64), np.empty(shape, dtype=np.uint64)
        return self._total[:, 0], self._total[:, 1]

    def result(self) -> EncryptedVector:
        """The aggregate (what is jointly decrypted)."""
        if self._count and (self._total is None or any(r is None for r in self._layout)):
            raise ParameterError("nothing was added to some of the sum's ciphertexts")
        self._taken = True  # the returned vector shares the running sum's arrays
        rings = tuple(ring for ring in self._layout if ring is not None)
        return EncryptedVector(
            self._context.fingerprint, self._key_id, self._length,
            LazyCiphertexts(self._context, rings), aggregated=True, rings=rings,
        )


def decrypt_vector(context: CkksContext, secret: SecretKey, vector: EncryptedVector) -> FloatArray:
    """Single-key decryption back to exactly ``vector.length`` reals."""
    _check_vector(context, vector)
    if secret.public_key_id != vector.key_id:
        raise KeyMismatchError(
            f"the vector is encrypted under key {vector.key_id[:16]}, this secret key belongs "
            f"to {secret.public_key_id[:16]}"
        )
    plaintexts = [context.native.Decrypt(secret.native, c) for c in vector.ciphertexts]
    return _decode_all(context, plaintexts, vector.length)


def partial_decrypt(
    context: CkksContext,
    secret: ThresholdSecret,
    vector: EncryptedVector,
    *,
    lead: bool,
    path: DecryptionPath | None = None,
) -> PartialDecryption:
    """This party's share of the joint decryption of ``vector``.

    ``path`` defaults to ``TFL_DECRYPTION_PATH`` (``ring``, our kernels; ``openfhe``
    for OpenFHE's MultipartyDecryptLead/Main).  Both flood with the same width.
    """
    _check_vector(context, vector)
    if secret.joint_key_id != vector.key_id:
        raise KeyMismatchError(
            f"the vector is encrypted under key {vector.key_id[:16]}, party {secret.index}'s "
            f"share belongs to joint key {secret.joint_key_id[:16]}"
        )
    if (path or default_path()) is DecryptionPath.OPENFHE:
        shares = openfhe_shares(context, secret.secret.native, vector.ciphertexts, lead=lead)
    else:
        kit = ring_kit(context)
        with KeyLimbs(context, secret.secret.native) as key:
            shares = ring_shares(context, key, rings_of(context, vector), lead=lead,
                                 sampler=kit.sampler())
    return PartialDecryption(
        context.fingerprint, vector.key_id, vector.digest, secret.index, lead, vector.length, shares
    )


def rings_of(context: CkksContext, vector: EncryptedVector) -> Sequence[RingBlob]:
    """The vector's ciphertexts as ring blobs: those it was decoded into, else parsed."""
    if vector.rings is not None:
        return vector.rings
    return [context.ring.parse(CkksContext.serialize(c), BlobKind.CIPHERTEXT)
            for c in vector.ciphertexts]


def fuse_partial_decryptions(
    context: CkksContext,
    joint: JointPublicKey,
    partials: Sequence[PartialDecryption],
    *,
    vector_digest: str | None = None,
) -> FloatArray:
    """Combine one partial decryption from every party into the plaintext vector.

    The shares are added as arrays and each ciphertext's sum decoded once.
    """
    _check_partials(context, joint, partials, vector_digest)
    total = sum_shares(context, [partial.shares for partial in partials])
    return decode_sums(context, total, partials[0].length)


def _check_partials(
    context: CkksContext,
    joint: JointPublicKey,
    partials: Sequence[PartialDecryption],
    vector_digest: str | None,
) -> None:
    indices = [partial.party_index for partial in partials]
    if len(set(indices)) != len(indices):
        raise KeyMismatchError(f"more than one partial decryption from a party: {sorted(indices)}")
    missing = set(joint.party_indices) - set(indices)
    extra = set(indices) - set(joint.party_indices)
    if missing or extra:
        raise CryptoError(
            f"fusion needs exactly one share from each of parties {list(joint.party_indices)}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)} (recover dropped parties' "
            "keys first)"
        )
    digest = vector_digest or partials[0].vector_digest
    for partial in partials:
        context.check_fingerprint(
            partial.params_fingerprint, f"party {partial.party_index}'s share"
        )
        if partial.joint_key_id != joint.key_id or partial.vector_digest != digest:
            raise KeyMismatchError(
                f"party {partial.party_index}'s partial decryption is for another key or "
                "ciphertext; discard it and ask for a fresh one"
            )
        if partial.length != partials[0].length or partial.shares.shape != partials[0].shares.shape:
            raise KeyMismatchError(f"party {partial.party_index}'s share has the wrong size")
    count = ciphertext_count(context, partials[0].length)
    if partials[0].shares.shape[0] != count:
        raise KeyMismatchError(
            f"the shares cover {partials[0].shares.shape[0]} ciphertexts; {partials[0].length} "
            f"values need {count}"
        )
    leads = sum(partial.lead for partial in partials)
    if leads != 1:
        raise CryptoError(f"fusion needs exactly one lead partial decryption, got {leads}")


def _decode_all(context: CkksContext, plaintexts: list[Any], length: int) -> FloatArray:
    out = np.empty(length)
    step = context.values_per_ciphertext
    for index, plaintext in enumerate(plaintexts):
        start = index * step
        count = min(step, length - start)
        out[start : start + count] = context.decode(plaintext, count)
    return out * context.params.encoding_divisor


# -- checks ------------------------------------------------------------------------
def _check_length(length: int) -> None:
    if not 0 <= length <= MAX_VECTOR_LENGTH:
        raise ParameterError(f"vector length must be in [0, {MAX_VECTOR_LENGTH}], got {length}")


def _check_vector(context: CkksContext, vector: EncryptedVector) -> None:
    context.check_fingerprint(vector.params_fingerprint, "the vector")
    if len(vector.ciphertexts) != ciphertext_count(context, vector.length):
        raise ParameterError(
            f"a vector of {vector.length} values needs {ciphertext_count(context, vector.length)} "
            f"ciphertexts, got {len(vector.ciphertexts)}"
        )
