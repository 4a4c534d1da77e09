"""Versioned wire frames for everything the crypto layer sends.

Layout (big-endian)::

    magic "TFLF" | version u8 | kind u8 | flags u16 | params fingerprint 32 B
    | metadata length u32 | part count u32 | part lengths u32 * count
    | SHA-256 digest of all of the above and of what follows | metadata | parts

Every field is checked, and the digest recomputed, before any byte reaches an
OpenFHE deserialiser: OpenFHE can crash the process on malformed input.  The
digest detects corruption, not forgery: frames travel inside signed envelopes
(and private ones inside pairwise AEAD), which the protocol layer checks first.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from threshold_fl.crypto.context import CkksContext, sha256_hex
from threshold_fl.crypto.params import CkksParams
from threshold_fl.errors import FrameError, ParameterError, ThresholdFLError

__all__ = [
    "FRAME_VERSION",
    "Frame",
    "FrameKind",
    "decode_frame",
    "encode_frame",
    "encode_params",
    "decode_params",
]

MAGIC = b"TFLF"
FRAME_VERSION = 1
_FIXED = struct.Struct(">4sBBH32sII")
_DIGEST_SIZE = 32
MAX_METADATA_BYTES = 64 * 1024
MAX_PARTS = 4096
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
_PART_SLACK = 64 * 1024  # OpenFHE's per-object header, generously


class FrameKind(IntEnum):
    PARAMS = 1
    PUBLIC_KEY = 2
    CIPHERTEXTS = 3
    PARTIAL_DECRYPTION = 4
    # Retired: OpenFHE Shamir shares of a whole secret key, for rebuilding a dropped
    # party's key.  No decoder accepts it (decode_frame refuses it by name); the code
    # stays reserved so that an old frame is never read as something else.
    RETIRED_SHAMIR_SHARE = 5
    SECRET_KEY = 6
    POLYNOMIALS = 7  # one ring element per ciphertext, raw uint64 limbs (evaluation form)
    KEY_SHARE = 8  # a t-of-N Shamir share of a key, dealt on ring arrays


_RETIRED = frozenset({FrameKind.RETIRED_SHAMIR_SHARE})


@dataclass(frozen=True)
class Frame:
    """A checked frame: header fields, decoded metadata and raw parts."""

    kind: FrameKind
    params_fingerprint: str
    metadata: dict[str, Any]
    parts: tuple[bytes, ...]


def encode_frame(
    kind: FrameKind, fingerprint: str, metadata: dict[str, Any],
    parts: Sequence[bytes | bytearray] = (),
) -> bytes:
    if kind in _RETIRED:
        raise ParameterError(f"frame kind {int(kind)} ({kind.name}) is retired; never send it")
    meta = msgpack.packb(metadata, use_bin_type=True)
    if len(meta) > MAX_METADATA_BYTES or len(parts) > MAX_PARTS:
        raise ParameterError("frame metadata or part count is over the wire limits")
    head = _FIXED.pack(
        MAGIC, FRAME_VERSION, int(kind), 0, bytes.fromhex(fingerprint), len(meta), len(parts)
    )
    lengths = b"".join(len(part).to_bytes(4, "big") for part in parts)
    digest = _digest(head + lengths, meta, parts)
    return b"".join((head, lengths, digest, meta, *parts))


def decode_frame(
    data: bytes,
    expected_kind: FrameKind,
    expected_fingerprint: str,
    *,
    max_part_bytes: int,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Frame:
    """Parse and check a frame; raise FrameError naming the first thing wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"a frame must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_frame_bytes:
        raise FrameError(f"frame of {len(data)} bytes is over the {max_frame_bytes}-byte limit")
    if len(data) < _FIXED.size + _DIGEST_SIZE:
        raise FrameError(f"frame truncated: {len(data)} bytes is shorter than any header")
    magic, version, kind, flags, fingerprint, meta_len, count = _FIXED.unpack_from(data)
    _check_header(magic, version, kind, flags, expected_kind)
    if fingerprint.hex() != expected_fingerprint:
        raise FrameError(
            f"{expected_kind.name} frame was made under other CKKS parameters "
            f"({fingerprint.hex()[:16]}, expected {expected_fingerprint[:16]}); "
            "all parties must use the federation's parameters"
        )
    if meta_len > MAX_METADATA_BYTES or count > MAX_PARTS:
        raise FrameError(f"frame declares {meta_len} metadata bytes and {count} parts: over limits")
    lengths_end = _FIXED.size + 4 * count
    if len(data) < lengths_end + _DIGEST_SIZE:
        raise FrameError("frame truncated inside its part-length table")
    lengths = [
        int.from_bytes(data[_FIXED.size + 4 * i : _FIXED.size + 4 * i + 4], "big")
        for i in range(count)
    ]
    if any(length > max_part_bytes for length in lengths):
        raise FrameError(f"a part length exceeds {max_part_bytes} bytes for these parameters")
    body_start = lengths_end + _DIGEST_SIZE
    declared = body_start + meta_len + sum(lengths)
    if declared != len(data):
        raise FrameError(
            f"frame length {len(data)} does not match the declared {declared} bytes "
            "(truncated or padded)"
        )
    meta = data[body_start : body_start + meta_len]
    parts = _split(data, body_start + meta_len, lengths)
    if _digest(data[:lengths_end], meta, parts) != data[lengths_end:body_start]:
        raise FrameError(
            "frame digest mismatch: the frame was corrupted in transit; request it again"
        )
    return Frame(expected_kind, fingerprint.hex(), _unpack_metadata(meta), tuple(parts))


def _check_header(magic: bytes, version: int, kind: int, flags: int, expected: FrameKind) -> None:
    if magic != MAGIC:
        raise FrameError(f"not a threshold-fl frame (magic {magic!r}, expected {MAGIC!r})")
    if version != FRAME_VERSION:
        raise FrameError(
            f"frame version {version} is not supported (this library speaks {FRAME_VERSION}); "
            "upgrade the older party"
        )
    for code in (kind, int(expected)):
        if code in _RETIRED:
            raise FrameError(
                f"frame kind {code} ({FrameKind(code).name}) is retired: no party sends or "
                "accepts it any more; the sender runs an older threshold-fl, upgrade it"
            )
    if kind != expected:
        name = FrameKind(kind).name if kind in FrameKind._value2member_map_ else str(kind)
        raise FrameError(f"expected a {expected.name} frame, got kind {name}")
    if flags != 0:
        raise FrameError(f"unknown frame flags {flags:#x}")


def _digest(head: bytes, meta: bytes, parts: Sequence[bytes | bytearray]) -> bytes:
    digest = hashlib.sha256(b"threshold-fl/frame/v1\0")
    for chunk in (head, meta, *parts):
        digest.update(chunk)
    return digest.digest()


def _split(data: bytes, start: int, lengths: list[int]) -> list[bytes]:
    parts = []
    for length in lengths:
        parts.append(data[start : start + length])
        start += length
    return parts


def _unpack_metadata(meta: bytes) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(
            meta, raw=False, strict_map_key=True, max_bin_len=MAX_METADATA_BYTES
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise FrameError(f"frame metadata is not valid msgpack: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise FrameError("frame metadata must be a map with string keys")
    return value


# -- typed metadata access ---------------------------------------------------------
def field_of(frame: Frame, name: str, kind: type | tuple[type, ...]) -> Any:
    """A metadata field, type-checked (bool is not accepted where int is asked)."""
    if name not in frame.metadata:
        raise FrameError(f"{frame.kind.name} frame lacks the field {name!r}")
    value = frame.metadata[name]
    if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
        raise FrameError(f"{frame.kind.name} frame field {name!r} has the wrong type")
    return value


def int_field(frame: Frame, name: str, low: int, high: int) -> int:
    value = int(field_of(frame, name, int))
    if not low <= value <= high:
        raise FrameError(
            f"{frame.kind.name} frame field {name!r}={value} is outside [{low}, {high}]"
        )
    return value


def hex_field(frame: Frame, name: str) -> str:
    value = str(field_of(frame, name, str))
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise FrameError(f"{frame.kind.name} frame field {name!r} is not a SHA-256 hex digest")
    return value


def checked_hash(part: bytes, expected: str, what: str) -> None:
    if sha256_hex(part) != expected:
        raise FrameError(f"the {what} does not match its id; it was altered, discard it")


def max_part_bytes(context: CkksContext) -> int:
    """Largest OpenFHE object a frame may carry: two polynomials over two limbs."""
    return 2 * 2 * 8 * context.params.resolved_ring_dimension + _PART_SLACK


def iter_chunked(parts: Sequence[bytes], max_frame_bytes: int) -> Iterator[tuple[int, list[bytes]]]:
    """Group parts into runs that fit one frame each: (first index, parts)."""
    budget = max(max_frame_bytes - MAX_METADATA_BYTES, 1)
    run: list[bytes] = []
    first = size = 0
    for index, part in enumerate(parts):
        if run and (size + len(part) > budget or len(run) == MAX_PARTS):
            yield first, run
            run, first, size = [], index, 0
        run.append(part)
        size += len(part)
    if run or not parts:
        yield first, run


# -- parameters ---------------------------------------------------------------------
def encode_params(params: CkksParams) -> bytes:
    return encode_frame(FrameKind.PARAMS, params.fingerprint(), params.to_dict())


def decode_params(data: bytes, expected_fingerprint: str | None = None) -> CkksParams:
    """Decode a PARAMS frame; with ``expected_fingerprint`` also check agreement."""
    claimed = _FIXED.unpack_from(data)[4].hex() if len(data) >= _FIXED.size else "0" * 64
    frame = decode_frame(data, FrameKind.PARAMS, expected_fingerprint or claimed, max_part_bytes=0)
    try:
        params = CkksParams.from_dict(frame.metadata)
    except ThresholdFLError as exc:
        raise FrameError(f"PARAMS frame holds invalid parameters: {exc}") from None
    if params.fingerprint() != frame.params_fingerprint:
        raise FrameError("PARAMS frame's fingerprint does not match its parameters")
    return params
