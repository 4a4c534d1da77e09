"""The chunked-transfer wire format: frames built and parsed, sans I/O.

A payload travels as one *transfer* to one recipient: a signed **manifest** frame, then
``count`` **chunk** frames of at most ``chunk_size`` bytes (1 to 4 MiB).  Every payload,
even an empty one, takes this path (a small one is a one-chunk transfer), so there is
one code path to get right.  The receiver answers each frame with an **ack** frame.

This module does no I/O, reads no clock and draws no randomness: the caller passes the
transfer id (16 random bytes) and the signing callable.  That keeps every rejection
testable without a broker.

Frame layout (big-endian), common prefix ``magic(4) version(1) kind(1) transfer_id(16)``:

- chunk:    ``seq(u32) count(u32) total(u64) sha256(chunk)(32)`` then the chunk bytes;
- manifest: ``count(u32) total(u64) chunk_size(u32) sha256(payload)(32)``, the sender,
  recipient and channel (session) ids each as ``len(u8) + ASCII``, ``count`` chunk
  digests, then ``sig_len(u16) + signature``.  The signature covers a domain tag and
  everything before ``sig_len``, so it binds sender, recipient, channel and transfer id:
  a manifest cannot be replayed to another party, session or transfer;
- ack:      ``seq(u32)``; :data:`MANIFEST_SEQ` acknowledges the manifest;
- busy:     as an ack: the receiver has the frame but cannot take it yet (a full inbox):
  it stays unacked, and the sender resends it only to check the receiver is there.

A transfer is only as authentic as its manifest: a chunk is accepted only after the
manifest's signature verified, and only if its SHA-256 equals the digest the manifest
lists for its position.  Hence a tampered chunk, or a chunk spliced in from another
transfer, is rejected, and the payload is released only once its whole digest matches.

The receiving side, which checks and reassembles these frames, is
:mod:`transports.chunks`.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from threshold_fl.errors import FrameError, ParameterError

__all__ = [
    "MAGIC", "VERSION", "KIND_MANIFEST", "KIND_CHUNK", "KIND_ACK", "KIND_BUSY",
    "MIN_CHUNK_SIZE", "MAX_CHUNK_SIZE", "DEFAULT_CHUNK_SIZE",
    "TRANSFER_ID_SIZE", "MANIFEST_SEQ", "CHUNK_HEADER_SIZE",
    "Signer", "Verifier", "validate_id",
    "ChunkPlan", "Transfer", "split",
    "TransferManifest", "Chunk", "frame_kind", "decode_transfer_manifest", "decode_chunk",
    "encode_ack", "decode_ack", "expect_frame", "refusal", "short_tid", "rejection_reason",
]

MAGIC = b"TFLT"
VERSION = 1
KIND_MANIFEST = 1
KIND_CHUNK = 2
KIND_ACK = 3
KIND_BUSY = 4
MIN_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 4 << 20
DEFAULT_CHUNK_SIZE = MIN_CHUNK_SIZE
TRANSFER_ID_SIZE = 16
MANIFEST_SEQ = 0xFFFFFFFF
MAX_SIGNATURE_SIZE = 1024  # Ed25519 needs 64; the cap only bounds what we parse
_DIGEST = 32
_SIGN_DOMAIN = b"threshold-fl/transfer-manifest/v1\x00"

_PREFIX = struct.Struct(">4sBB16s")
_CHUNK = struct.Struct(">IIQ32s")
_MANIFEST = struct.Struct(">IQI32s")
_ACK = struct.Struct(">I")
CHUNK_HEADER_SIZE = _PREFIX.size + _CHUNK.size
_KIND_NAMES = {KIND_MANIFEST: "manifest", KIND_CHUNK: "chunk", KIND_ACK: "ack", KIND_BUSY: "busy"}

#: Signs the manifest bytes for the sending party (Ed25519 in practice).
Signer = Callable[[bytes], bytes]
#: ``verify(sender_id, data, signature)``: True only if ``sender_id`` signed ``data``.
Verifier = Callable[[str, bytes, bytes], bool]

# Ids end up in MQTT topics: no '/', '+', '#', NUL, spaces; same alphabet as party ids.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def validate_id(kind: str, value: object) -> str:
    """``value`` if it is a valid party or session id, else ParameterError saying why."""
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise ParameterError(
            f"invalid {kind} {value!r}: use 1-64 ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (ids become MQTT topic levels, so '/', '+', "
            "'#', NUL and spaces are not allowed)"
        )
    return value


def short_tid(transfer_id: bytes) -> str:
    """Short printable form of a transfer id for messages."""
    return transfer_id.hex()[:12]


def refusal(reason: str, detail: str) -> FrameError:
    """The error for a rejected frame; *reason* is the tag :func:`rejection_reason` reads."""
    return FrameError(f"rejected frame ({reason}): {detail}")


_REASON_RE = re.compile(r"rejected frame \(([a-z ]{1,40})\)")


def rejection_reason(error: Exception) -> str:
    """The short class of a rejection ("bad signature", "unknown transfer", ...): the
    tag that :class:`Reassembler` errors carry, else the exception's type name."""
    found = _REASON_RE.search(str(error))
    return found.group(1) if found else type(error).__name__


def _count_for(total: int, chunk_size: int) -> int:
    return max(1, math.ceil(total / chunk_size))


# ----------------------------------------------------------------------- sending side


@dataclass(frozen=True, eq=False)
class ChunkPlan:
    """A payload cut into chunks, with its digests computed once.

    Build it with :meth:`of`; one plan serves every recipient of a broadcast, so the
    payload is hashed once however many transfers are made from it.
    """

    payload: memoryview
    chunk_size: int
    digests: tuple[bytes, ...]
    payload_digest: bytes

    @classmethod
    def of(cls, payload: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ChunkPlan:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ParameterError(f"chunk_size must lie in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}] "
                                 f"bytes, got {chunk_size!r}")
        view = memoryview(payload).cast("B")
        count = _count_for(len(view), chunk_size)
        digests = tuple(hashlib.sha256(view[i * chunk_size : (i + 1) * chunk_size]).digest()
                        for i in range(count))
        return cls(view, chunk_size, digests, hashlib.sha256(view).digest())

    @property
    def count(self) -> int:
        return len(self.digests)

    @property
    def total(self) -> int:
        return len(self.payload)

    def transfer(self, *, sender: str, recipient: str, channel: str, transfer_id: bytes,
                 sign: Signer) -> Transfer:
        """A signed transfer of this payload from ``sender`` to ``recipient``."""
        if not isinstance(transfer_id, bytes) or len(transfer_id) != TRANSFER_ID_SIZE:
            raise ParameterError(f"transfer_id must be {TRANSFER_ID_SIZE} random bytes")
        ids = b"".join(_short(validate_id(kind, value)) for kind, value in
                       (("sender", sender), ("recipient", recipient), ("channel", channel)))
        body = b"".join((
            _PREFIX.pack(MAGIC, VERSION, KIND_MANIFEST, transfer_id),
            _MANIFEST.pack(self.count, self.total, self.chunk_size, self.payload_digest),
            ids,
            *self.digests,
        ))
        signature = sign(_SIGN_DOMAIN + body)
        if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_SIZE:
            raise ParameterError(f"sign() must return 1-{MAX_SIGNATURE_SIZE} bytes")
        manifest = body + struct.pack(">H", len(signature)) + signature
        return Transfer(self, transfer_id, manifest, sender, recipient)


def _short(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes([len(raw)]) + raw


@dataclass(frozen=True, eq=False)
class Transfer:
    """One payload on its way to one recipient: a manifest and ``count`` chunk frames."""

    plan: ChunkPlan
    transfer_id: bytes
    manifest: bytes
    sender: str
    recipient: str

    @property
    def count(self) -> int:
        return self.plan.count

    def chunk(self, seq: int) -> bytes:
        """Chunk frame ``seq``, built on demand so the payload is not held twice."""
        plan = self.plan
        if not 0 <= seq < plan.count:
            raise ParameterError(f"chunk seq {seq} out of range [0, {plan.count})")
        start = seq * plan.chunk_size
        header = (_PREFIX.pack(MAGIC, VERSION, KIND_CHUNK, self.transfer_id)
                  + _CHUNK.pack(seq, plan.count, plan.total, plan.digests[seq]))
        return header + plan.payload[start : start + plan.chunk_size]

    def frame(self, seq: int) -> bytes:
        """The manifest for :data:`MANIFEST_SEQ`, else chunk ``seq``."""
        return self.manifest if seq == MANIFEST_SEQ else self.chunk(seq)


def split(payload: bytes, *, sender: str, recipient: str, channel: str, transfer_id: bytes,
          sign: Signer, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Transfer:
    """Shorthand for ``ChunkPlan.of(payload, chunk_size).transfer(...)``."""
    return ChunkPlan.of(payload, chunk_size).transfer(
        sender=sender, recipient=recipient, channel=channel, transfer_id=transfer_id, sign=sign)


def encode_ack(transfer_id: bytes, seq: int, *, busy: bool = False) -> bytes:
    """The ack (or busy) frame for frame ``seq`` (or :data:`MANIFEST_SEQ`) of a transfer."""
    kind = KIND_BUSY if busy else KIND_ACK
    return _PREFIX.pack(MAGIC, VERSION, kind, transfer_id) + _ACK.pack(seq)


# ----------------------------------------------------------------------- decoding


def frame_kind(frame: bytes) -> int:
    """The kind of ``frame`` after checking its prefix; FrameError if it is not ours."""
    if len(frame) < _PREFIX.size:
        raise refusal("truncated header",
                      f"{len(frame)} bytes, a frame header needs {_PREFIX.size}")
    magic, version, kind, _ = _PREFIX.unpack_from(frame)
    if magic != MAGIC:
        raise refusal("bad magic", f"expected {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise refusal("bad version", f"version {version}, this build speaks {VERSION}")
    if kind not in _KIND_NAMES:
        raise refusal("unknown kind", f"frame kind {kind}")
    return int(kind)


def expect_frame(frame: bytes, kind: int, size: int) -> bytes:
    """Check prefix and kind and a minimum length; return the transfer id."""
    got = frame_kind(frame)
    if got != kind:
        raise refusal("wrong kind", f"expected a {_KIND_NAMES[kind]}, got a {_KIND_NAMES[got]}")
    if len(frame) < size:
        raise refusal("truncated header",
                      f"{len(frame)} bytes, a {_KIND_NAMES[kind]} header needs {size}")
    return bytes(frame[6 : _PREFIX.size])


def decode_ack(frame: bytes) -> tuple[bytes, int, bool]:
    """``(transfer_id, seq, busy)`` of an ack or busy frame."""
    busy = frame_kind(frame) == KIND_BUSY
    transfer_id = expect_frame(frame, KIND_BUSY if busy else KIND_ACK, _PREFIX.size + _ACK.size)
    if len(frame) != _PREFIX.size + _ACK.size:
        raise refusal("bad length", f"an ack has {_PREFIX.size + _ACK.size} bytes")
    (seq,) = _ACK.unpack_from(frame, _PREFIX.size)
    return transfer_id, int(seq), busy


@dataclass(frozen=True)
class Chunk:
    """A decoded chunk frame (its digest is checked by :class:`Reassembler`)."""

    transfer_id: bytes
    seq: int
    count: int
    total: int
    digest: bytes
    data: bytes


def decode_chunk(frame: bytes) -> Chunk:
    transfer_id = expect_frame(frame, KIND_CHUNK, CHUNK_HEADER_SIZE)
    seq, count, total, digest = _CHUNK.unpack_from(frame, _PREFIX.size)
    return Chunk(transfer_id, seq, count, total, digest, bytes(frame[CHUNK_HEADER_SIZE:]))


@dataclass(frozen=True)
class TransferManifest:
    """A decoded manifest; ``signed`` is what the signature must cover."""

    transfer_id: bytes
    count: int
    total: int
    chunk_size: int
    payload_digest: bytes
    sender: str
    recipient: str
    channel: str
    digests: tuple[bytes, ...]
    signed: bytes
    signature: bytes


class _Reader:
    """Bounds-checked cursor over a manifest, so truncation is reported, never an IndexError."""

    def __init__(self, frame: bytes, offset: int) -> None:
        self.frame, self.offset = frame, offset

    def take(self, n: int, what: str) -> bytes:
        end = self.offset + n
        if end > len(self.frame):
            raise refusal("truncated manifest", f"ends inside the {what}")
        out = bytes(self.frame[self.offset : end])
        self.offset = end
        return out

    def short_id(self, what: str) -> str:
        raw = self.take(self.take(1, what)[0], what)
        try:
            return validate_id(what, raw.decode("ascii"))
        except (UnicodeDecodeError, ParameterError):
            raise refusal("bad manifest", f"invalid {what} {raw!r}") from None


def decode_transfer_manifest(frame: bytes) -> TransferManifest:
    """Parse and sanity-check a manifest; the signature is NOT verified here."""
    fixed = _PREFIX.size + _MANIFEST.size
    transfer_id = expect_frame(frame, KIND_MANIFEST, fixed)
    count, total, chunk_size, payload_digest = _MANIFEST.unpack_from(frame, _PREFIX.size)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise refusal("bad manifest", f"chunk size {chunk_size} outside 1-4 MiB")
    if count != _count_for(total, chunk_size):
        raise refusal("bad manifest", f"{count} chunks cannot carry {total} bytes")
    reader = _Reader(frame, fixed)
    sender, recipient, channel = (reader.short_id(w) for w in ("sender", "recipient", "channel"))
    if len(frame) - reader.offset < count * _DIGEST:
        raise refusal("truncated manifest", f"ends inside the {count} chunk digests")
    raw = reader.take(count * _DIGEST, "chunk digests")
    digests = tuple(raw[i : i + _DIGEST] for i in range(0, len(raw), _DIGEST))
    signed = _SIGN_DOMAIN + bytes(frame[: reader.offset])
    (sig_len,) = struct.unpack(">H", reader.take(2, "signature length"))
    if not 0 < sig_len <= MAX_SIGNATURE_SIZE:
        raise refusal("bad manifest", f"signature length {sig_len}")
    signature = reader.take(sig_len, "signature")
    if reader.offset != len(frame):
        raise refusal("bad manifest", f"{len(frame) - reader.offset} trailing bytes")
    return TransferManifest(transfer_id, count, total, chunk_size, payload_digest, sender,
                    recipient, channel, digests, signed, signature)
