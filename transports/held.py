"""Messages a receiver holds unacked while its inbox is full, in bounded memory.

A receiver that falls behind (an aggregator relaying the N^2 sealed key deliveries of
key agreement) holds each complete message that finds its inbox full, with its ack
unsent, so that the sender's window stalls (back-pressure) and nothing is lost
(:mod:`transports.inbox`: it answers busy meanwhile, and bounds what is held per sender
and in bytes).  Each sender can have a whole window of messages held that way, so what
is held grows with the number of senders (an aggregator at N = 50 held 368 messages,
47 MiB).  Dropping them unacked instead would leave them to the senders'
retransmissions, which give up after ``max_tries``: a lost key delivery.

:class:`HeldMessages` keeps them all, in arrival order, but at most ``memory_bytes`` of
their payloads in memory; the rest goes to unlinked temporary files (gone with the
process, whatever happens to it), read back when the inbox has room.  The receiver's
memory then stays bounded whatever N is; only the disk use grows with N, up to the
inbox's ``max_bytes``.  A spill is flushed at once, so a full disk shows when the
message is written (it then stays in memory), not when it is read back.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from threshold_fl.errors import ParameterError, TransportError

__all__ = ["DEFAULT_HELD_MEMORY", "HeldMessage", "HeldMessages"]

#: Payload bytes of held messages kept in memory; beyond: spilled to a temporary file.
DEFAULT_HELD_MEMORY = 32 << 20


@dataclass(frozen=True)
class HeldMessage:
    """A complete message waiting for room in the inbox, its ack not yet sent."""

    sender: str
    payload: bytes
    ack_topic: str
    ack: bytes  # the ack frame, sent once the message is delivered


class _Segment:
    """One spill file, appended to; deleted once nothing in it is held any more."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.end, self.live = file, 0, 0
        self.broken = False  # a write failed: none goes here any more

    def write(self, payload: bytes) -> int:
        """Append *payload*; OSError if it is not all on disk.  Flushed here: a buffered
        file reports a full disk only at its next flush, when the message would already
        count as spilled, and then read back as garbage."""
        self.file.seek(self.end)
        view = memoryview(payload)
        while view:  # a raw file may take part of it (a disk filling up)
            written = self.file.write(view)
            if not written:
                raise OSError(f"the spill file took none of {len(view)} bytes")
            view = view[written:]
        self.file.flush()
        offset, self.end, self.live = self.end, self.end + len(payload), self.live + 1
        return offset

    def read(self, offset: int, length: int) -> bytes:
        try:
            self.file.seek(offset)
            data = self.file.read(length)
        except OSError as exc:
            raise TransportError(f"could not read a held message back from its temporary "
                                 f"file: {exc}") from exc
        if len(data) != length:
            raise TransportError(f"a held message's spill file returned {len(data)} of "
                                 f"{length} bytes; its temporary directory was tampered with")
        return data


@dataclass
class _Entry:
    sender: str
    ack_topic: str
    ack: bytes
    payload: bytes | None  # None: spilled, at [offset, offset + length) of segment
    segment: _Segment | None = None
    offset: int = 0
    length: int = 0


def _unbuffered_temporary_file() -> IO[bytes]:
    # Unbuffered: a write reaches the disk (or fails) at once, and leaves no buffer behind.
    return tempfile.TemporaryFile(buffering=0)


class HeldMessages:
    """Held messages, oldest first; see the module docstring.

    Spilled payloads go to files of about ``segment_bytes`` each, and a file is deleted
    once none of its messages is held, so the disk holds what is spilled and one or two
    files' worth more.  ``spill_file`` makes a file (tests); by default an unlinked
    unbuffered :func:`tempfile.TemporaryFile` (put ``TMPDIR`` on a disk, not a tmpfs).
    """

    def __init__(self, memory_bytes: int = DEFAULT_HELD_MEMORY, *,
                 segment_bytes: int = 64 << 20,
                 spill_file: Callable[[], IO[bytes]] = _unbuffered_temporary_file) -> None:
        if memory_bytes < 0 or segment_bytes < 1:
            raise ParameterError(f"held memory must be >= 0 bytes and spill segments >= 1 "
                                 f"byte, got {memory_bytes!r} and {segment_bytes!r}")
        self.memory_bytes, self.segment_bytes = memory_bytes, segment_bytes
        self._open = spill_file
        self._segments: deque[_Segment] = deque()  # the last one is written to
        self._entries: deque[_Entry] = deque()
        self._acks: set[bytes] = set()
        self.in_memory = 0  # payload bytes held in memory now
        self.bytes = 0  # payload bytes held now, in memory and in files
        self._senders: Counter[str] = Counter()  # messages held now, per sender
        self.spilled = 0  # messages ever spilled (a counter for the stats)

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, sender: str) -> int:
        """Messages from ``sender`` held now."""
        return self._senders[sender]

    @property
    def files(self) -> int:
        """Spill files open now."""
        return len(self._segments)

    def holds(self, ack: bytes) -> bool:
        """Whether the message this ack frame acknowledges is held (a resend of it
        must not be acked before it is delivered)."""
        return ack in self._acks

    def hold(self, message: HeldMessage) -> str | None:
        """Keep *message* behind the others: in memory while the budget allows, else in
        a file.  If the file cannot be written, it stays in memory (nothing is lost; its
        ack is already recorded as sent) and why is returned, for the caller to log."""
        entry = _Entry(message.sender, message.ack_topic, message.ack, message.payload)
        size, failure = len(message.payload), None
        if self.in_memory + size > self.memory_bytes:
            try:
                segment = self._writable()
                entry.offset = segment.write(message.payload)
                entry.payload, entry.segment, entry.length = None, segment, size
                self.spilled += 1
            except OSError as exc:
                self._abandon()
                failure = (f"could not spill a held message of {size} bytes to a temporary "
                           f"file ({exc}); kept in memory; free disk space in TMPDIR")
        if entry.segment is None:
            self.in_memory += size
        self._entries.append(entry)
        self._acks.add(message.ack)
        self._senders[message.sender] += 1
        self.bytes += size
        return failure

    def pop(self) -> HeldMessage:
        """The oldest held message (IndexError if none); TransportError if its file cannot
        be read back, and then it stays held (its ack unsent)."""
        entry = self._entries[0]  # removed only once read: a failed read loses nothing
        if entry.segment is None:
            assert entry.payload is not None
            payload = entry.payload
            self.in_memory -= len(payload)
        else:
            payload = entry.segment.read(entry.offset, entry.length)
            entry.segment.live -= 1
            self._retire(entry.segment)
        self._entries.popleft()
        self._acks.discard(entry.ack)
        self._senders[entry.sender] -= 1
        self.bytes -= len(payload)
        return HeldMessage(entry.sender, payload, entry.ack_topic, entry.ack)

    def close(self) -> None:
        """Forget everything and delete the files; idempotent."""
        self._entries.clear()
        self._acks.clear()
        self._senders.clear()
        self.in_memory = self.bytes = 0
        while self._segments:
            _close(self._segments.popleft())

    def _writable(self) -> _Segment:
        last = self._segments[-1] if self._segments else None
        if last is None or last.broken or last.end >= self.segment_bytes:
            self._segments.append(_Segment(self._open()))
        return self._segments[-1]

    def _abandon(self) -> None:
        """A write to the last file failed (what it buffered may be garbage): write no
        more there, and delete it if it holds nothing."""
        if self._segments:
            segment = self._segments[-1]
            segment.broken = True
            if not segment.live:
                self._segments.pop()
                _close(segment)

    def _retire(self, segment: _Segment) -> None:
        """A file none of whose messages is held: delete it, or reuse the last one."""
        if segment.live:
            return
        if segment is self._segments[-1] and not segment.broken:
            segment.end = 0
        else:
            self._segments.remove(segment)
            _close(segment)


def _close(segment: _Segment) -> None:
    # Closing flushes what a failed write left buffered: a full disk must not stop it.
    with contextlib.suppress(OSError):
        segment.file.close()
