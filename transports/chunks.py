"""Sans-I/O reassembly: the frames of signed chunked transfers turned into payloads.

The frames (a signed manifest, chunks, acks) are built and parsed by
:mod:`transports.frames`; a :class:`Reassembler` checks them and puts each transfer's
payload back together.  It does no I/O and reads no clock: the caller passes ``now``.

Replays: the receiver remembers, per sender and for its whole life, the ids of the
transfers that finished or were dropped (:class:`ReassemblyLimits` bounds how many), so
a replayed or retransmitted finished transfer is acked again but never delivered twice,
and a dropped one does not come back.  A sender has a few slots for open transfers; when
they are full, its next verified manifest evicts its least recently progressed one, so
replayed manifests nobody completes cannot lock a sender out.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from threshold_fl.errors import AuthenticationError, FrameError, ParameterError
from transports.frames import (
    CHUNK_HEADER_SIZE,
    KIND_CHUNK,
    KIND_MANIFEST,
    MANIFEST_SEQ,
    Chunk,
    TransferManifest,
    Verifier,
    decode_chunk,
    decode_transfer_manifest,
    encode_ack,
    expect_frame,
    frame_kind,
    refusal,
    short_tid,
    validate_id,
)

__all__ = ["DEFAULT_MAX_PAYLOAD", "ReassemblyLimits", "Accepted", "Dropped", "Reassembler"]

DEFAULT_MAX_PAYLOAD = 1 << 30  # the largest payload a receiver accepts by default


@dataclass(frozen=True)
class ReassemblyLimits:
    """Memory bounds of a :class:`Reassembler`.

    ``max_buffered``: the payload bytes of all open transfers together (what a manifest
    announces counts at once, so the bound holds before any chunk arrives);
    ``max_transfers_per_sender``: open transfers per sender; when full, a newer verified
    manifest from that sender evicts its least recently progressed one (a sender's send
    window, 8 frames by default, keeps its own honest transfers well below 16);
    ``expiry_s``: a transfer with no accepted frame for this long is dropped (a sender
    whose chunks are answered busy unread, waiting for room, is not idle:
    :meth:`Reassembler.keep_alive`);
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
        raise refusal("wrong kind", "an ack frame reached an inbox")

    def claimed_sender(self, frame: bytes) -> str | None:
        """Who a frame (say, a rejected one) claims or is known to come from, if it gets
        that far; unverified, for logs only."""
        try:
            if frame_kind(frame) == KIND_MANIFEST:
                return decode_transfer_manifest(frame).sender
            transfer_id = expect_frame(frame, KIND_CHUNK, CHUNK_HEADER_SIZE)
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

    def keep_alive(self, sender: str, now: float) -> None:
        """*sender*'s chunks are answered busy unread while it waits for room
        (:meth:`transports.inbox.Inbox.deferral`): its open transfers stall for the
        receiver's sake, not the sender's, so their expiry counts from now."""
        for state in self._open.values():
            if state.manifest.sender == sender:
                state.last_activity = now

    def expire(self, now: float) -> None:
        """Drop transfers idle for longer than ``expiry_s`` (see :meth:`take_expired`)."""
        for tid in [t for t, s in self._open.items()
                    if now - s.last_activity > self.limits.expiry_s]:
            self._drop(tid, "expired transfer", "expired")

    def _drop(self, transfer_id: bytes, kind: str, how: str) -> None:
        state = self._open.pop(transfer_id)
        m = state.manifest
        self._remember(m.sender, transfer_id, _DROPPED)
        self._dropped.append(Dropped(m.sender, kind, f"transfer {short_tid(transfer_id)} from "
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
            raise refusal("stale transfer", f"transfer {short_tid(m.transfer_id)} from "
                          f"{m.sender!r} was dropped unfinished earlier (replayed, or "
                          "retransmitted late)")
        if known != (m.sender, digest[:_MARK]):
            raise refusal("conflicting manifest",
                          f"transfer {short_tid(m.transfer_id)} is known with another manifest")
        return True

    def _check_manifest(self, m: TransferManifest) -> None:
        if (m.recipient, m.channel) != (self.recipient, self.channel):
            raise refusal("misaddressed", f"manifest for {m.recipient!r} in {m.channel!r} reached "
                          f"{self.recipient!r} in {self.channel!r} (replayed or misrouted)")
        if m.total > self.limits.max_payload:
            raise refusal("too large", f"payload of {m.total} bytes from {m.sender!r} exceeds "
                                       f"the limit of {self.limits.max_payload}")
        announced = sum(s.manifest.total for s in self._open.values())
        if announced + m.total > self.limits.max_buffered:
            raise refusal("too large", f"{m.total} more bytes from {m.sender!r} would exceed "
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
                f"rejected frame (bad signature): manifest of transfer {short_tid(m.transfer_id)} "
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
            raise refusal("digest mismatch", f"chunk {c.seq} of transfer "
                                             f"{short_tid(c.transfer_id)} does not hash to its "
                                             "header digest (corrupted)")
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
        raise refusal("unknown transfer", f"chunk {c.seq} of transfer {short_tid(c.transfer_id)} "
                      f"{why} (replayed, expired or ahead of it)")

    @staticmethod
    def _check_chunk(c: Chunk, m: TransferManifest) -> None:
        where = f"chunk {c.seq} of transfer {short_tid(c.transfer_id)}"
        if (c.count, c.total) != (m.count, m.total) or c.seq >= m.count:
            raise refusal("inconsistent header", f"{where} says {c.count} chunks/{c.total} "
                                                 f"bytes, the manifest {m.count}/{m.total}")
        expected = min(m.chunk_size, m.total - c.seq * m.chunk_size)
        if len(c.data) != expected:
            raise refusal("bad length", f"{where} has {len(c.data)} bytes, expected {expected}")
        if c.digest != m.digests[c.seq]:
            raise refusal("digest mismatch", f"{where} does not match the signed manifest "
                                             "(tampered, or spliced in from another transfer)")

    def _complete(self, state: _Incoming) -> bytes:
        m = state.manifest
        del self._open[m.transfer_id]
        payload = b"".join(state.chunks[i] for i in range(m.count))
        state.chunks.clear()
        if len(payload) != m.total or hashlib.sha256(payload).digest() != m.payload_digest:
            self._remember(m.sender, m.transfer_id, _DROPPED)
            raise refusal("digest mismatch", f"transfer {short_tid(m.transfer_id)} from "
                                             f"{m.sender!r}: whole payload does not match the "
                                             "manifest")
        self._remember(m.sender, m.transfer_id, state.manifest_hash)
        return payload
