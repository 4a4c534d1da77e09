"""Sans-I/O chunking: large payloads as signed transfers of verifiable chunks.

A payload travels as one *transfer* to one recipient: a signed **manifest** frame, then
``count`` **chunk** frames of at most ``chunk_size`` bytes (1 to 4 MiB).  Every payload,
even an empty one, takes this path (a small one is a one-chunk transfer), so there is
one code path to get right.  The receiver answers each frame with an **ack** frame.

This module does no I/O, reads no clock and draws no randomness: the caller passes the
transfer id (16 random bytes), the signing and verifying callables and ``now``.  That
keeps every rejection below testable without a broker.

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

Replays: the receiver remembers, per sender and for its whole life, the ids of the
transfers that finished or were dropped (:class:`ReassemblyLimits` bounds how many), so
a replayed or retransmitted finished transfer is acked again but never delivered twice,
and a dropped one does not come back.  A sender has a few slots for open transfers; when
they are full, its next verified manifest evicts its least recently progressed one, so
replayed manifests nobody completes cannot lock a sender out.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from threshold_fl.errors import AuthenticationError, FrameError, ParameterError

__all__ = [
    "MAGIC", "VERSION", "KIND_MANIFEST", "KIND_CHUNK", "KIND_ACK", "KIND_BUSY",
    "MIN_CHUNK_SIZE", "MAX_CHUNK_SIZE", "DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_PAYLOAD",
    "TRANSFER_ID_SIZE", "MANIFEST_SEQ", "CHUNK_HEADER_SIZE",
    "Signer", "Verifier", "validate_id",
    "ChunkPlan", "Transfer", "split",
    "TransferManifest", "Chunk", "frame_kind", "decode_transfer_manifest", "decode_chunk",
    "encode_ack", "decode_ack",
    "ReassemblyLimits", "Accepted", "Dropped", "Reassembler", "rejection_reason",
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
DEFAULT_MAX_PAYLOAD = 1 << 30
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


def _tid(transfer_id: bytes) -> str:
    """Short printable form of a transfer id for messages."""
    return transfer_id.hex()[:12]


def _reject(reason: str, detail: str) -> FrameError:
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
        raise _reject("truncated header",
                      f"{len(frame)} bytes, a frame header needs {_PREFIX.size}")
    magic, version, kind, _ = _PREFIX.unpack_from(frame)
    if magic != MAGIC:
        raise _reject("bad magic", f"expected {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise _reject("bad version", f"version {version}, this build speaks {VERSION}")
    if kind not in _KIND_NAMES:
        raise _reject("unknown kind", f"frame kind {kind}")
    return int(kind)


def _expect(frame: bytes, kind: int, size: int) -> bytes:
    """Check prefix and kind and a minimum length; return the transfer id."""
    got = frame_kind(frame)
    if got != kind:
        raise _reject("wrong kind", f"expected a {_KIND_NAMES[kind]}, got a {_KIND_NAMES[got]}")
    if len(frame) < size:
        raise _reject("truncated header",
                      f"{len(frame)} bytes, a {_KIND_NAMES[kind]} header needs {size}")
    return bytes(frame[6 : _PREFIX.size])


def decode_ack(frame: bytes) -> tuple[bytes, int, bool]:
    """``(transfer_id, seq, busy)`` of an ack or busy frame."""
    busy = frame_kind(frame) == KIND_BUSY
    transfer_id = _expect(frame, KIND_BUSY if busy else KIND_ACK, _PREFIX.size + _ACK.size)
    if len(frame) != _PREFIX.size + _ACK.size:
        raise _reject("bad length", f"an ack has {_PREFIX.size + _ACK.size} bytes")
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
    transfer_id = _expect(frame, KIND_CHUNK, CHUNK_HEADER_SIZE)
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
            raise _reject("truncated manifest", f"ends inside the {what}")
        out = bytes(self.frame[self.offset : end])
        self.offset = end
        return out

    def short_id(self, what: str) -> str:
        raw = self.take(self.take(1, what)[0], what)
        try:
            return validate_id(what, raw.decode("ascii"))
        except (UnicodeDecodeError, ParameterError):
            raise _reject("bad manifest", f"invalid {what} {raw!r}") from None


def decode_transfer_manifest(frame: bytes) -> TransferManifest:
    """Parse and sanity-check a manifest; the signature is NOT verified here."""
    fixed = _PREFIX.size + _MANIFEST.size
    transfer_id = _expect(frame, KIND_MANIFEST, fixed)
    count, total, chunk_size, payload_digest = _MANIFEST.unpack_from(frame, _PREFIX.size)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise _reject("bad manifest", f"chunk size {chunk_size} outside 1-4 MiB")
    if count != _count_for(total, chunk_size):
        raise _reject("bad manifest", f"{count} chunks cannot carry {total} bytes")
    reader = _Reader(frame, fixed)
    sender, recipient, channel = (reader.short_id(w) for w in ("sender", "recipient", "channel"))
    if len(frame) - reader.offset < count * _DIGEST:
        raise _reject("truncated manifest", f"ends inside the {count} chunk digests")
    raw = reader.take(count * _DIGEST, "chunk digests")
    digests = tuple(raw[i : i + _DIGEST] for i in range(0, len(raw), _DIGEST))
    signed = _SIGN_DOMAIN + bytes(frame[: reader.offset])
    (sig_len,) = struct.unpack(">H", reader.take(2, "signature length"))
    if not 0 < sig_len <= MAX_SIGNATURE_SIZE:
        raise _reject("bad manifest", f"signature length {sig_len}")
    signature = reader.take(sig_len, "signature")
    if reader.offset != len(frame):
        raise _reject("bad manifest", f"{len(frame) - reader.offset} trailing bytes")
    return TransferManifest(transfer_id, count, total, chunk_size, payload_digest, sender,
                    recipient, channel, digests, signed, signature)


# ----------------------------------------------------------------------- receiving side


@dataclass(frozen=True)
class ReassemblyLimits:
    """Memory bounds of a :class:`Reassembler`.

    ``max_buffered``: the payload bytes of all open transfers together (what a manifest
    announces counts at once, so the bound holds before any chunk arrives);
    ``max_transfers_per_sender``: open transfers per sender; when full, a newer verified
    manifest from that sender evicts its least recently progressed one (a sender's send
    window, 8 frames by default, keeps its own honest transfers well below 16);
    ``expiry_s``: a transfer with no accepted frame for this long is dropped;
    ``remember_per_sender``: ids of finished or dropped transfers kept per sender (about
    100 bytes each; the oldest go first), so that a retransmission or replay of a finished
    transfer is acked but not delivered again, and a dropped one is not reopened.  Only
    verified senders get a record, so the parties of the session bound the senders.
    """

    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_buffered: int = 2 * DEFAULT_MAX_PAYLOAD
    max_transfers_per_sender: int = 16
    expiry_s: float = 120.0
    remember_per_sender: int = 8192

    def __post_init__(self) -> None:
        if not 0 <= self.max_payload <= self.max_buffered or self.max_transfers_per_sender < 1:
            raise ParameterError("need 0 <= max_payload <= max_buffered and "
                                 "max_transfers_per_sender >= 1")
        if not self.expiry_s > 0 or self.remember_per_sender < 1:
            raise ParameterError("expiry_s must be > 0 and remember_per_sender >= 1")


@dataclass(frozen=True)
class Accepted:
    """A frame the reassembler took: ack it to ``sender``; ``payload`` when it completed one."""

    sender: str
    transfer_id: bytes
    seq: int
    duplicate: bool = False
    payload: bytes | None = None

    @property
    def ack(self) -> bytes:
        return encode_ack(self.transfer_id, self.seq)


class Dropped(NamedTuple):
    """An open transfer the reassembler gave up on, for the caller to log."""

    sender: str
    kind: str  # "expired transfer" or "evicted transfer"
    reason: str


@dataclass(eq=False)
class _Incoming:
    manifest: TransferManifest
    manifest_hash: bytes
    last_activity: float
    chunks: dict[int, bytes] = field(default_factory=dict)


_DROPPED = b""  # history mark of a transfer dropped unfinished (else: its manifest's hash)
_MARK = 8  # bytes of the manifest hash kept: only the sender can sign a clash, and only ack it


class Reassembler:
    """Turns the frames addressed to one party into verified payloads.

    ``accept`` returns an :class:`Accepted` (ack it; a payload when complete) or raises
    :class:`FrameError` / :class:`AuthenticationError` naming what is wrong.  A rejected
    frame changes no state (except a transfer whose whole digest fails, which is
    dropped), so the caller just logs it and carries on.  Memory stays bounded by
    :class:`ReassemblyLimits`; stale transfers expire as ``now`` advances.
    """

    def __init__(self, recipient: str, channel: str, verify: Verifier,
                 limits: ReassemblyLimits | None = None) -> None:
        self.recipient = validate_id("recipient", recipient)
        self.channel = validate_id("channel", channel)
        self._verify = verify
        self.limits = limits or ReassemblyLimits()
        self._open: dict[bytes, _Incoming] = {}
        self._history: dict[str, dict[bytes, bytes]] = {}  # sender: {id: mark}, oldest first
        self._dropped: deque[Dropped] = deque(maxlen=64)  # for the caller to log

    @property
    def in_progress(self) -> int:
        return len(self._open)

    @property
    def buffered_bytes(self) -> int:
        return sum(len(c) for t in self._open.values() for c in t.chunks.values())

    def accept(self, frame: bytes, now: float) -> Accepted:
        self.expire(now)
        kind = frame_kind(frame)
        if kind == KIND_MANIFEST:
            return self._manifest(frame, now)
        if kind == KIND_CHUNK:
            return self._chunk(decode_chunk(frame), now)
        raise _reject("wrong kind", "an ack frame reached an inbox")

    def claimed_sender(self, frame: bytes) -> str | None:
        """Who a frame (say, a rejected one) claims or is known to come from, if it gets
        that far; unverified, for logs only."""
        try:
            if frame_kind(frame) == KIND_MANIFEST:
                return decode_transfer_manifest(frame).sender
            transfer_id = _expect(frame, KIND_CHUNK, CHUNK_HEADER_SIZE)
        except FrameError:
            return None
        state = self._open.get(transfer_id)
        if state is not None:
            return state.manifest.sender
        seen = self._recall(transfer_id)
        return None if seen is None else seen[0]

    def _remember(self, sender: str, transfer_id: bytes, mark: bytes) -> None:
        ids = self._history.setdefault(sender, {})
        ids[transfer_id] = mark[:_MARK]
        if len(ids) > self.limits.remember_per_sender:
            del ids[next(iter(ids))]

    def _recall(self, transfer_id: bytes) -> tuple[str, bytes] | None:
        """``(sender, mark)``; a chunk names no sender, so every sender is looked at."""
        for sender, ids in self._history.items():
            if transfer_id in ids:
                return sender, ids[transfer_id]
        return None

    def take_expired(self) -> list[Dropped]:
        """Transfers dropped since the last call, expired or evicted (the most recent 64)."""
        out = list(self._dropped)
        self._dropped.clear()
        return out

    def expire(self, now: float) -> None:
        """Drop transfers idle for longer than ``expiry_s`` (see :meth:`take_expired`)."""
        for tid in [t for t, s in self._open.items()
                    if now - s.last_activity > self.limits.expiry_s]:
            self._drop(tid, "expired transfer", "expired")

    def _drop(self, transfer_id: bytes, kind: str, how: str) -> None:
        state = self._open.pop(transfer_id)
        m = state.manifest
        self._remember(m.sender, transfer_id, _DROPPED)
        self._dropped.append(Dropped(m.sender, kind, f"transfer {_tid(transfer_id)} from "
                                     f"{m.sender!r} {how} with {len(state.chunks)}/{m.count} "
                                     "chunks"))

    def _manifest(self, frame: bytes, now: float) -> Accepted:
        digest = hashlib.sha256(frame).digest()
        m = decode_transfer_manifest(frame)
        if self._seen(m, digest):
            return Accepted(m.sender, m.transfer_id, MANIFEST_SEQ, duplicate=True)
        self._check_manifest(m)
        self._make_room(m.sender)
        self._open[m.transfer_id] = _Incoming(m, digest, now)
        return Accepted(m.sender, m.transfer_id, MANIFEST_SEQ)

    def _seen(self, m: TransferManifest, digest: bytes) -> bool:
        """True for a manifest known already (retransmitted or replayed); FrameError if
        it conflicts with what is known or its transfer was dropped."""
        state = self._open.get(m.transfer_id)
        known = (self._recall(m.transfer_id) if state is None
                 else (state.manifest.sender, state.manifest_hash[:_MARK]))
        if known is None:
            return False
        if known == (m.sender, _DROPPED):
            raise _reject("stale transfer", f"transfer {_tid(m.transfer_id)} from {m.sender!r} "
                          "was dropped unfinished earlier (replayed, or retransmitted late)")
        if known != (m.sender, digest[:_MARK]):
            raise _reject("conflicting manifest",
                          f"transfer {_tid(m.transfer_id)} is known with another manifest")
        return True

    def _check_manifest(self, m: TransferManifest) -> None:
        if (m.recipient, m.channel) != (self.recipient, self.channel):
            raise _reject("misaddressed", f"manifest for {m.recipient!r} in {m.channel!r} reached "
                          f"{self.recipient!r} in {self.channel!r} (replayed or misrouted)")
        if m.total > self.limits.max_payload:
            raise _reject("too large", f"payload of {m.total} bytes from {m.sender!r} exceeds "
                                       f"the limit of {self.limits.max_payload}")
        announced = sum(s.manifest.total for s in self._open.values())
        if announced + m.total > self.limits.max_buffered:
            raise _reject("too large", f"{m.total} more bytes from {m.sender!r} would exceed "
                                       f"max_buffered {self.limits.max_buffered} "
                                       f"({announced} announced by open transfers)")
        try:  # a verifier that fails (unknown sender, bad key) is a failed verification
            ok = self._verify(m.sender, m.signed, m.signature) is True
        except Exception as exc:
            ok, why = False, f" ({type(exc).__name__}: {exc})"
        else:
            why = ""
        if not ok:
            raise AuthenticationError(
                f"rejected frame (bad signature): manifest of transfer {_tid(m.transfer_id)} "
                f"claimed by {m.sender!r} does not verify{why}"
            )

    def _make_room(self, sender: str) -> None:
        """A verified sender's slots are full: evict its least recently progressed
        transfer, most likely a replayed manifest whose chunks never come."""
        mine = [(s.last_activity, t) for t, s in self._open.items() if s.manifest.sender == sender]
        if len(mine) >= self.limits.max_transfers_per_sender:
            self._drop(min(mine)[1], "evicted transfer",
                       f"evicted by a newer one ({len(mine)} open, the limit)")

    def _chunk(self, c: Chunk, now: float) -> Accepted:
        if hashlib.sha256(c.data).digest() != c.digest:
            raise _reject("digest mismatch", f"chunk {c.seq} of transfer {_tid(c.transfer_id)} "
                                             "does not hash to its header digest (corrupted)")
        state = self._open.get(c.transfer_id)
        if state is None:
            return self._chunk_of_closed(c)
        m = state.manifest
        self._check_chunk(c, m)
        if c.seq in state.chunks:
            return Accepted(m.sender, c.transfer_id, c.seq, duplicate=True)
        state.chunks[c.seq] = c.data
        state.last_activity = now
        payload = self._complete(state) if len(state.chunks) == m.count else None
        return Accepted(m.sender, c.transfer_id, c.seq, payload=payload)

    def _chunk_of_closed(self, c: Chunk) -> Accepted:
        """A chunk of no open transfer: re-acked if its transfer finished, else refused."""
        seen = self._recall(c.transfer_id)
        if seen is not None and seen[1] != _DROPPED:
            return Accepted(seen[0], c.transfer_id, c.seq, duplicate=True)
        why = "was dropped unfinished" if seen else "has no verified manifest"
        raise _reject("unknown transfer", f"chunk {c.seq} of transfer {_tid(c.transfer_id)} "
                      f"{why} (replayed, expired or ahead of it)")

    @staticmethod
    def _check_chunk(c: Chunk, m: TransferManifest) -> None:
        where = f"chunk {c.seq} of transfer {_tid(c.transfer_id)}"
        if (c.count, c.total) != (m.count, m.total) or c.seq >= m.count:
            raise _reject("inconsistent header", f"{where} says {c.count} chunks/{c.total} "
                                                 f"bytes, the manifest {m.count}/{m.total}")
        expected = min(m.chunk_size, m.total - c.seq * m.chunk_size)
        if len(c.data) != expected:
            raise _reject("bad length", f"{where} has {len(c.data)} bytes, expected {expected}")
        if c.digest != m.digests[c.seq]:
            raise _reject("digest mismatch", f"{where} does not match the signed manifest "
                                             "(tampered, or spliced in from another transfer)")

    def _complete(self, state: _Incoming) -> bytes:
        m = state.manifest
        del self._open[m.transfer_id]
        payload = b"".join(state.chunks[i] for i in range(m.count))
        state.chunks.clear()
        if len(payload) != m.total or hashlib.sha256(payload).digest() != m.payload_digest:
            self._remember(m.sender, m.transfer_id, _DROPPED)
            raise _reject("digest mismatch", f"transfer {_tid(m.transfer_id)} from {m.sender!r}: "
                                             "whole payload does not match the manifest")
        self._remember(m.sender, m.transfer_id, state.manifest_hash)
        return payload
