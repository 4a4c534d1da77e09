"""Typed encoders and decoders between crypto objects and wire frames.

Vectors and partial decryptions are split over as many frames as needed
(``max_frame_bytes`` each) so that a 10^8-value model never has to be one
message; the transport layer may chunk frames further.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np

from threshold_fl.arrays import U64Array
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    Frame,
    FrameKind,
    checked_hash,
    decode_frame,
    encode_frame,
    field_of,
    hex_field,
    int_field,
    iter_chunked,
    max_part_bytes,
)
from threshold_fl.crypto.keys import JointPublicKey, PublicKey, SecretKey, joint_key_id
from threshold_fl.crypto.noise import wipe
from threshold_fl.crypto.params import MAX_VECTOR_LENGTH
from threshold_fl.crypto.ring import BlobKind, RingBlob, build
from threshold_fl.crypto.ring_layout import check_coefficients
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.shares import share_template
from threshold_fl.crypto.vectors import (
    EncryptedVector,
    LazyCiphertexts,
    PartialDecryption,
    ciphertext_count,
    vector_digest,
)
from threshold_fl.errors import FrameError

__all__ = [
    "PolynomialRole",
    "decode_joint_public_key",
    "decode_key_share",
    "decode_polynomials",
    "decode_partial_decryption",
    "decode_public_key",
    "decode_secret_key",
    "decode_vector",
    "encode_joint_public_key",
    "encode_key_share",
    "encode_polynomials",
    "encode_partial_decryption",
    "encode_public_key",
    "encode_secret_key",
    "encode_vector",
    "encode_vector_part",
    "stream_vector",
]

_MAX_PARTIES = 10_000


def _decode(context: CkksContext, data: bytes, kind: FrameKind) -> Frame:
    return decode_frame(data, kind, context.fingerprint, max_part_bytes=max_part_bytes(context))


def _single_part(frame: Frame) -> bytes:
    if len(frame.parts) != 1:
        raise FrameError(f"{frame.kind.name} frame must carry exactly one object")
    return frame.parts[0]


# -- public keys ----------------------------------------------------------------------
def encode_public_key(context: CkksContext, key: PublicKey, *, party_index: int = 0) -> bytes:
    """A single-key public key (party_index 0) or party ``party_index``'s public share."""
    blob = context.serialize(key.native)
    meta = {"key_id": key.key_id, "party_index": party_index}
    return encode_frame(FrameKind.PUBLIC_KEY, context.fingerprint, meta, [blob])


def decode_public_key(context: CkksContext, data: bytes) -> tuple[int, PublicKey]:
    """(party index, key); the key's bytes are checked against its id first."""
    frame = _decode(context, data, FrameKind.PUBLIC_KEY)
    if "share_ids" in frame.metadata:
        raise FrameError("this PUBLIC_KEY frame holds a joint key; decode it as one")
    return int_field(frame, "party_index", 0, _MAX_PARTIES), _public_key_of(context, frame)


def _public_key_of(context: CkksContext, frame: Frame) -> PublicKey:
    key_id = hex_field(frame, "key_id")
    blob = _single_part(frame)
    checked_hash(blob, key_id, "public key")
    return PublicKey(context.fingerprint, key_id, context.deserialize_public_key(blob))


def encode_joint_public_key(context: CkksContext, joint: JointPublicKey) -> bytes:
    meta = {
        "key_id": joint.key_id,
        "lead_index": joint.lead_index,
        "share_ids": {str(index): key_id for index, key_id in sorted(joint.share_ids.items())},
    }
    blob = context.serialize(joint.key.native)
    return encode_frame(FrameKind.PUBLIC_KEY, context.fingerprint, meta, [blob])


def decode_joint_public_key(context: CkksContext, data: bytes) -> JointPublicKey:
    frame = _decode(context, data, FrameKind.PUBLIC_KEY)
    lead_index = int_field(frame, "lead_index", 1, _MAX_PARTIES)
    raw_ids = field_of(frame, "share_ids", dict)
    share_ids: dict[int, str] = {}
    for index, key_id in raw_ids.items():
        if not (isinstance(index, str) and index.isdigit() and isinstance(key_id, str)):
            raise FrameError("joint key frame has a malformed share_ids map")
        share_ids[int(index)] = key_id
    if lead_index not in share_ids:
        raise FrameError("joint key frame names a lead that contributed no share")
    key_id = joint_key_id(lead_index, share_ids)
    if hex_field(frame, "key_id") != key_id:
        raise FrameError("the joint key frame's id does not match its shares; discard it")
    native = context.deserialize_public_key(_single_part(frame))
    return JointPublicKey(PublicKey(context.fingerprint, key_id, native), lead_index, share_ids)


# -- secret material (only ever sent inside pairwise encryption) ---------------------
def encode_secret_key(context: CkksContext, secret: SecretKey) -> bytes:
    meta = {"public_key_id": secret.public_key_id}
    blob = context.serialize(secret.native)
    try:
        return encode_frame(FrameKind.SECRET_KEY, context.fingerprint, meta, [blob])
    finally:
        wipe(blob)  # fresh from OpenFHE's serialiser: nothing else has it


def decode_secret_key(context: CkksContext, data: bytes) -> SecretKey:
    frame = _decode(context, data, FrameKind.SECRET_KEY)
    public_key_id = hex_field(frame, "public_key_id")
    try:
        native = context.deserialize_private_key(_single_part(frame))
    finally:
        for part in frame.parts:  # the frame's own copies, cut from the caller's bytes
            wipe(part)
    return SecretKey(context.fingerprint, public_key_id, native)


# -- multi-frame objects: vectors and partial decryptions -----------------------------
def encode_vector(
    context: CkksContext, vector: EncryptedVector, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Iterator[bytes]:
    blobs = vector.blobs()
    yield from encode_vector_part(context, vector.key_id, vector.length, blobs, first=0,
                                  aggregated=vector.aggregated, max_frame_bytes=max_frame_bytes)


def encode_vector_part(
    context: CkksContext, key_id: str, length: int, blobs: Sequence[bytes], *, first: int,
    aggregated: bool = False, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Iterator[bytes]:
    """Frames of ciphertexts ``first`` to ``first + len(blobs) - 1`` of a vector of
    ``length`` values (all of it from 0: :func:`encode_vector`)."""
    common = {"key_id": key_id, "length": length, "aggregated": aggregated}
    yield from _encode_run(context, FrameKind.CIPHERTEXTS, common, blobs, max_frame_bytes,
                           first)


def decode_vector(context: CkksContext, frames: Sequence[bytes]) -> EncryptedVector:
    """A vector from its frames: every ciphertext checked and parsed into ring arrays.

    OpenFHE deserialises a ciphertext only when something asks for it (single-key
    decryption); partial decryption works on the arrays.
    """
    common, blobs = _decode_run(context, frames, FrameKind.CIPHERTEXTS)
    rings = tuple(context.ring.parse(blob, BlobKind.CIPHERTEXT) for blob in blobs)
    for ring in rings:
        context.check_upload_summary(ring.summary)
    digest = vector_digest(context.fingerprint, common["key_id"], common["length"], blobs)
    return EncryptedVector(
        context.fingerprint,
        common["key_id"],
        common["length"],
        LazyCiphertexts(context, rings),
        aggregated=common["aggregated"],
        wire_digest=digest,
        rings=rings,
    )


def encode_partial_decryption(
    context: CkksContext,
    partial: PartialDecryption,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Iterator[bytes]:
    common = {
        "key_id": partial.joint_key_id,
        "length": partial.length,
        "vector_digest": partial.vector_digest,
        "party_index": partial.party_index,
        "lead": partial.lead,
    }
    limbs = partial.shares.shape[1]
    template = share_template(context, limbs)
    blobs = [build(template, share[None]) for share in partial.shares]
    yield from _encode_run(context, FrameKind.PARTIAL_DECRYPTION, common, blobs, max_frame_bytes)


def decode_partial_decryption(context: CkksContext, frames: Sequence[bytes]) -> PartialDecryption:
    """A peer's shares, each checked as a decryption share at the aggregates' level."""
    common, blobs = _decode_run(context, frames, FrameKind.PARTIAL_DECRYPTION)
    shares = np.empty((len(blobs), *_polynomial_shape(context)), dtype=np.uint64)
    for index, blob in enumerate(blobs):
        parsed = context.ring.parse(blob, BlobKind.DECRYPTION_SHARE)
        context.check_upload_summary(parsed.summary)
        shares[index] = parsed.elements[0]
    return PartialDecryption(
        context.fingerprint,
        common["key_id"],
        common["vector_digest"],
        common["party_index"],
        common["lead"],
        common["length"],
        shares,
    )


def _encode_run(
    context: CkksContext,
    kind: FrameKind,
    common: dict[str, Any],
    blobs: Sequence[bytes],
    max_frame_bytes: int,
    offset: int = 0,
) -> Iterator[bytes]:
    """Frames of the run's blobs ``offset`` onwards (a vector's or polynomials': of all
    its ciphertexts)."""
    whole = kind in (FrameKind.CIPHERTEXTS, FrameKind.POLYNOMIALS)
    count = ciphertext_count(context, common["length"]) if whole else len(blobs)
    for first, run in iter_chunked(blobs, max_frame_bytes):
        meta = dict(common, first=offset + first, count=count)
        yield encode_frame(kind, context.fingerprint, meta, run)


def _decode_run(
    context: CkksContext, frames: Sequence[bytes], kind: FrameKind,
    span: tuple[int, int | None] = (0, None),
) -> tuple[dict[str, Any], list[bytes]]:
    """Check every frame of a run (or of its *span*, as :func:`_iter_run`) and that
    together they cover it exactly once, in order."""
    common: dict[str, Any] = {}
    blobs: list[bytes] = []
    for run_common, blob in _iter_run(context, frames, kind, span):
        common = run_common
        if blob is not None:
            blobs.append(blob)
    return common, blobs


def _iter_run(
    context: CkksContext, frames: Iterable[bytes], kind: FrameKind,
    span: tuple[int, int | None] = (0, None),
) -> Iterator[tuple[dict[str, Any], bytes | None]]:
    """Yield (common metadata, blob) frame by frame; raise as soon as the run is broken.

    ``span`` = (start, stop): the frames must cover exactly ciphertexts start to
    stop - 1 of the run (stop None: to its end), one part of a run sent in several.
    An empty vector yields its metadata once, with no blob (None).
    """
    common: dict[str, Any] | None = None
    start, stop = span
    expected_count, seen = 0, start
    for data in frames:
        frame = _decode(context, data, kind)
        if common is None:
            common = _run_common(frame, kind)
            expected_count = ciphertext_count(context, common["length"])
            stop = expected_count if stop is None else stop
        elif _run_common(frame, kind) != common:
            raise FrameError(f"{kind.name} frames of one run disagree on what they carry")
        if int_field(frame, "count", 0, MAX_VECTOR_LENGTH) != expected_count:
            raise FrameError(
                f"{kind.name} run declares {frame.metadata['count']} ciphertexts, its length "
                f"needs {expected_count}"
            )
        if int_field(frame, "first", 0, expected_count) != seen:
            raise FrameError(
                f"{kind.name} frames are missing, duplicated or out of order "
                f"(expected one starting at {seen})"
            )
        assert stop is not None
        if seen + len(frame.parts) > stop:
            raise FrameError(
                f"{kind.name} frame carries more ciphertexts than its run (or part) declares "
                f"({stop - start})"
            )
        for blob in frame.parts:
            seen += 1
            yield common, blob
    if common is None or stop is None:
        raise FrameError(f"no {kind.name} frames were given")
    if seen != stop:
        raise FrameError(
            f"{kind.name} run holds ciphertexts {start} to {seen - 1}, expected {start} to "
            f"{stop - 1}: frames are missing"
        )
    if expected_count == 0:
        yield common, None


class PolynomialRole(str, Enum):
    """What a run of POLYNOMIALS frames carries, one ring element per ciphertext."""

    C1 = "c1"  # the aggregate's c1 parts (evaluation form), for the decryption set
    SHARE = "share"  # one member's decryption shares, rounded (coefficient form)
    FUSED = "fused"  # the aggregator's blind fusion: c0 plus the set's shares, padded

    @property
    def rounded(self) -> bool:
        """Whether the values travel rounded (:mod:`threshold_fl.crypto.rounding`)."""
        return self is not PolynomialRole.C1


def encode_polynomials(
    context: CkksContext, role: PolynomialRole, key_id: str, length: int, arrays: U64Array, *,
    first: int = 0, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Iterator[bytes]:
    """(count, limbs, n) ring elements of the aggregates' level as frames: c1 as raw
    little-endian limbs, shares and fused polynomials in their rounded width; checked
    on decoding to lie below their moduli (or rounding levels).  With *first*, the
    arrays are ciphertexts ``first`` onwards of the run, one part of it."""
    count = ciphertext_count(context, length)
    if arrays.shape[1:] != _polynomial_shape(context) or not (
            first >= 0 and first + arrays.shape[0] <= count):
        raise FrameError(f"{role.value} arrays of shape {arrays.shape} from ciphertext "
                         f"{first}, expected (up to {count}, {_polynomial_shape(context)})")
    common = {"key_id": key_id, "length": length, "role": role.value}
    if role.rounded:
        rounding = ShareRounding.of(context)
        parts = [rounding.to_bytes(array) for array in arrays]
    else:
        parts = [np.ascontiguousarray(array, dtype="<u8").tobytes() for array in arrays]
    yield from _encode_run(context, FrameKind.POLYNOMIALS, common, parts, max_frame_bytes,
                           first)


def decode_polynomials(context: CkksContext, frames: Sequence[bytes], role: PolynomialRole, *,
                       key_id: str, length: int, span: tuple[int, int | None] = (0, None)
                       ) -> U64Array:
    """The (count, limbs, n) arrays of a POLYNOMIALS run, which must carry *role* for
    *key_id* and *length*; every value below its limb's modulus (or rounding levels).
    With *span* (start, stop): exactly ciphertexts start to stop - 1, one part of it."""
    common, parts = _decode_run(context, frames, FrameKind.POLYNOMIALS, span)
    if (common["role"], common["key_id"], common["length"]) != (role.value, key_id, length):
        raise FrameError(
            f"the frames carry {common['role']} for key {common['key_id'][:16]} and "
            f"{common['length']} values; expected {role.value} for {key_id[:16]} and {length}")
    limbs, n = _polynomial_shape(context)
    out = np.empty((len(parts), limbs, n), dtype=np.uint64)
    if role.rounded:
        rounding = ShareRounding.of(context)
        for index, part in enumerate(parts):
            out[index] = rounding.from_bytes(part, limbs, n, role.value)
        return out
    for index, part in enumerate(parts):
        if len(part) != 8 * limbs * n:
            raise FrameError(f"a {role.value} polynomial of {len(part)} bytes, expected "
                             f"{8 * limbs * n}")
        out[index] = np.frombuffer(part, dtype="<u8").reshape(limbs, n)
    for index, polynomial in enumerate(out):
        _check_below_moduli(polynomial, context.aggregate_moduli,
                            f"{role.value} polynomial {index}")
    return out


def _polynomial_shape(context: CkksContext) -> tuple[int, int]:
    return len(context.aggregate_moduli), context.ring.ring_dimension


def _check_below_moduli(limbs: U64Array, moduli: Sequence[int], what: str) -> None:
    """(limbs, n) values, each limb below its modulus (errors count bytes from the first
    value of the first limb)."""
    n = limbs.shape[1]
    check_coefficients(((limbs[limb], q, 8 * n * limb) for limb, q in enumerate(moduli)), what)


def encode_key_share(context: CkksContext, *, dealer_index: int, holder_index: int,
                     parties: int, threshold: int, dealer_public_id: str,
                     limbs: Mapping[int, U64Array]) -> bytes:
    """Holder ``holder_index``'s t-of-N Shamir share of dealer ``dealer_index``'s key
    share, one limb per modulus of the key (only ever sent sealed for the holder)."""
    if list(limbs) != list(context.ring.moduli):
        raise FrameError("a key share must cover every modulus of the key, in order")
    meta = {"dealer_index": dealer_index, "holder_index": holder_index, "parties": parties,
            "threshold": threshold, "dealer_public_id": dealer_public_id}
    # bytearrays, not bytes, so that the copies of the secret can be zeroed
    parts = [bytearray(np.ascontiguousarray(limb, dtype="<u8").data) for limb in limbs.values()]
    try:
        return encode_frame(FrameKind.KEY_SHARE, context.fingerprint, meta, parts)
    finally:
        for part in parts:
            wipe(part)


def decode_key_share(context: CkksContext, data: bytes) -> tuple[dict[str, Any],
                                                                 dict[int, U64Array]]:
    """(metadata, limbs by modulus) of a KEY_SHARE frame, every value below its prime."""
    frame = _decode(context, data, FrameKind.KEY_SHARE)
    parties = int_field(frame, "parties", 2, _MAX_PARTIES)
    meta = {"parties": parties, "threshold": int_field(frame, "threshold", 1, parties),
            "dealer_index": int_field(frame, "dealer_index", 1, parties),
            "holder_index": int_field(frame, "holder_index", 1, parties),
            "dealer_public_id": hex_field(frame, "dealer_public_id")}
    if meta["dealer_index"] == meta["holder_index"]:
        raise FrameError("a key share frame names the dealer as its own holder")
    moduli, n = context.ring.moduli, context.ring.ring_dimension
    if len(frame.parts) != len(moduli) or any(len(part) != 8 * n for part in frame.parts):
        raise FrameError(f"a key share must be {len(moduli)} limbs of {8 * n} bytes")
    try:
        arrays = np.stack([np.frombuffer(part, dtype="<u8") for part in frame.parts])
    finally:
        for part in frame.parts:  # the frame's own copies, cut from the caller's bytes
            wipe(part)
    try:
        _check_below_moduli(arrays, moduli, "key share")
    except FrameError:
        wipe(arrays)
        raise
    return meta, {q: arrays[limb] for limb, q in enumerate(moduli)}


def stream_vector(
    context: CkksContext, frames: Iterable[bytes], *, key_id: str, length: int,
    span: tuple[int, int | None] = (0, None),
) -> Iterator[RingBlob]:
    """Ciphertexts of one vector as checked ring blobs, decoded frame by frame as the
    frames arrive (OpenFHE deserialises nothing).

    Feed it to :meth:`EncryptedSum.add_chunks` to aggregate an upload without
    ever holding it whole.  The frames must carry ``key_id`` and ``length``; with
    ``span`` (start, stop) they are ciphertexts start to stop - 1 only, one part of an
    upload (feed those to :meth:`EncryptedSum.add_part`).
    """
    for common, blob in _iter_run(context, frames, FrameKind.CIPHERTEXTS, span):
        if common["key_id"] != key_id or common["length"] != length or common["aggregated"]:
            raise FrameError(
                f"the upload is for key {common['key_id'][:16]} and {common['length']} values; "
                f"expected a fresh vector under {key_id[:16]} with {length} values"
            )
        if blob is not None:
            ring = context.ring.parse(blob, BlobKind.CIPHERTEXT)
            context.check_upload_summary(ring.summary)
            yield ring


def _run_common(frame: Frame, kind: FrameKind) -> dict[str, Any]:
    common: dict[str, Any] = {
        "key_id": hex_field(frame, "key_id"),
        "length": int_field(frame, "length", 0, MAX_VECTOR_LENGTH),
    }
    if kind is FrameKind.CIPHERTEXTS:
        common["aggregated"] = bool(field_of(frame, "aggregated", bool))
    elif kind is FrameKind.POLYNOMIALS:
        role = field_of(frame, "role", str)
        if role not in {r.value for r in PolynomialRole}:
            raise FrameError(f"unknown polynomial role {role!r}")
        common["role"] = role
    else:
        common["vector_digest"] = hex_field(frame, "vector_digest")
        common["party_index"] = int_field(frame, "party_index", 1, _MAX_PARTIES)
        common["lead"] = bool(field_of(frame, "lead", bool))
    return common
