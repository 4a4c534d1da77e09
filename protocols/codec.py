"""The one versioned wire codec: signed envelopes around msgpack-encoded messages.

Layout (all lengths big-endian)::

    b"TFLM" | version u8 | sender length u8 | sender (utf-8) | payload length u64 |
    payload (msgpack) | Ed25519 signature (64 bytes)

The signature covers a domain label and the SHA-256 of everything before it (hashed
first, so a message of gigabytes is not copied to be signed or checked).  The sender is
read from the fixed header, its key looked up in the manifest's directory and the
signature checked *before* the payload is parsed, so forged or corrupted bytes
never reach msgpack, let alone OpenFHE.
"""

from __future__ import annotations

import enum
import hashlib
import struct
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import msgpack

from protocols.messages import BODY_TYPES, Body, Header, Message, Stage, field_hints
from threshold_fl.errors import (
    AuthenticationError,
    ForgedMessage,
    MalformedMessage,
    ParameterError,
)
from threshold_fl.identity import Identity, PartyId, PublicIdentity

__all__ = ["CODEC_VERSION", "MAX_MESSAGE_BYTES", "decode_message", "encode_message",
           "Peeked", "peek_step", "signing_input"]

#: 2: FedAvg weights in MaskStart/RoundStart; 3: blind fusion; 4: the manifest's
#: fingerprint in Hello and KeygenStart; 5: uploads in parts (part, parts), and the
#: signature over the envelope's SHA-256; 6: joint decryption in parts (DecryptRequest,
#: DecryptionShare and Fused carry part, parts).
CODEC_VERSION = 6
MAGIC = b"TFLM"
#: Largest message accepted (a 2.5 * 10^8-value upload is about 4 GB).
MAX_MESSAGE_BYTES = 8 * 2**30
_SIGNATURE_SIZE = 64
_DOMAIN = b"threshold-fl/message/v6\0"
_PREFIX = struct.Struct(">4sBB")
_LENGTH = struct.Struct(">Q")
_HEADER_FIELDS = tuple(spec.name for spec in fields(Header))


def encode_message(identity: Identity, message: Message) -> bytes:
    """Sign and encode ``message``; the identity must be the header's sender."""
    if identity.party_id != message.header.sender:
        raise ParameterError(
            f"{identity.party_id!r} cannot sign a message whose sender is "
            f"{message.header.sender!r}"
        )
    header = [_to_wire(getattr(message.header, name)) for name in _HEADER_FIELDS]
    code = BODY_TYPES.index(type(message.body))
    body = [_to_wire(getattr(message.body, spec.name)) for spec in fields(message.body)]
    payload: bytes = msgpack.packb([header, code, body], use_bin_type=True)
    sender = message.header.sender.encode()
    head = _PREFIX.pack(MAGIC, CODEC_VERSION, len(sender)) + sender + _LENGTH.pack(len(payload))
    digest = hashlib.sha256(head)
    digest.update(payload)
    return b"".join((head, payload, identity.sign(_DOMAIN + digest.digest())))


def signing_input(signed: bytes | memoryview) -> bytes:
    """What the envelope's signature signs, given the envelope's bytes before it."""
    return _DOMAIN + hashlib.sha256(signed).digest()


def decode_message(data: bytes, directory: Mapping[PartyId, PublicIdentity]) -> Message:
    """Authenticate ``data`` against ``directory`` (party id -> identity), then decode it.

    Raises ForgedMessage (unknown sender, bad signature, sender mismatch) or
    MalformedMessage (anything that does not parse); never anything else.
    """
    data = _as_bytes(data)
    sender, payload = _open_envelope(data, directory)
    message = _parse_payload(payload, data)
    if message.header.sender != sender:
        raise ForgedMessage(
            f"the envelope was signed by {sender!r} but the message claims sender "
            f"{message.header.sender!r}; discarded"
        )
    return message


class Peeked(typing.NamedTuple):
    """What a message's bytes claim it is (see :func:`peek_step`)."""

    stage: Stage
    round: int
    kind: str  # the body type's name, as ``Message.kind``
    epoch: int  # the key epoch


def peek_step(data: bytes) -> Peeked | None:
    """The stage, round, body type and key epoch a message claims, read without checking the
    signature and without parsing the body; None if the bytes do not look like a message.

    Unauthenticated: for byte accounting and logs only, never for a decision.
    """
    if len(data) < _PREFIX.size + _LENGTH.size or data[:4] != MAGIC:
        return None
    offset = _PREFIX.size + data[5] + _LENGTH.size
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
    unpacker.feed(data[offset:offset + 4096])  # header and type code lie well within
    try:
        unpacker.read_array_header()
        header, code = unpacker.unpack(), unpacker.unpack()
        stage = Stage(header[_HEADER_FIELDS.index("stage")])
        round_, epoch = (header[_HEADER_FIELDS.index(name)] for name in ("round", "epoch"))
        if type(round_) is not int or type(epoch) is not int or epoch < 0 or (
                type(code) is not int or not 0 <= code < len(BODY_TYPES)):
            return None
        return Peeked(stage, round_, BODY_TYPES[code].__name__, epoch)
    except Exception:  # msgpack raises several unrelated types; anything else: not ours
        return None


def _as_bytes(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"a message must be bytes, got {type(data).__name__}")
    return bytes(data)  # no copy for bytes; the message keeps it (``Message.raw``)


def _open_envelope(data: bytes, directory: Mapping[PartyId, PublicIdentity]
                   ) -> tuple[str, memoryview]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(data) < _PREFIX.size + _LENGTH.size + _SIGNATURE_SIZE:
        raise MalformedMessage(f"message of {len(data)} bytes is truncated; discarded")
    magic, version, sender_length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MalformedMessage("not a threshold-fl message (bad magic); discarded")
    if version != CODEC_VERSION:
        raise MalformedMessage(
            f"message codec version {version}, this build speaks {CODEC_VERSION}; "
            "upgrade the older party"
        )
    offset = _PREFIX.size + sender_length
    try:
        sender = data[_PREFIX.size : offset].decode()
        (payload_length,) = _LENGTH.unpack_from(data, offset)
    except (UnicodeDecodeError, struct.error):
        raise MalformedMessage("the message header is corrupt; discarded") from None
    offset += _LENGTH.size
    if offset + payload_length + _SIGNATURE_SIZE != len(data):
        raise MalformedMessage("the message length does not match its header; discarded")
    identity = directory.get(PartyId(sender))
    if identity is None:
        raise ForgedMessage(f"message from {sender!r}, who is not in the manifest; discarded")
    view = memoryview(data)  # slices of it copy nothing
    signed, signature = view[:-_SIGNATURE_SIZE], data[-_SIGNATURE_SIZE:]
    try:
        identity.verify(signing_input(signed), signature)
    except AuthenticationError:
        raise ForgedMessage(
            f"bad signature on a message claiming to be from {sender!r}: forged or "
            "corrupted in transit; discarded"
        ) from None
    return sender, signed[offset:]


def _parse_payload(payload: memoryview, raw: bytes) -> Message:
    try:
        decoded = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedMessage(f"the message payload does not parse ({exc}); discarded") from None
    if not (isinstance(decoded, list) and len(decoded) == 3):
        raise MalformedMessage("the message payload has the wrong shape; discarded")
    header_values, code, body_values = decoded
    if type(code) is not int or not 0 <= code < len(BODY_TYPES):
        raise MalformedMessage(f"unknown message type code {code!r}; discarded")
    body_type = BODY_TYPES[code]
    header = _build(Header, header_values)
    body = typing.cast(Body, _build(body_type, body_values))
    return Message(header, body, raw)


_T = typing.TypeVar("_T")


def _build(cls: type[_T], values: object) -> _T:
    specs = fields(cls)  # type: ignore[arg-type]
    if not isinstance(values, list) or len(values) != len(specs):
        raise MalformedMessage(f"a {cls.__name__} has the wrong number of fields; discarded")
    hints = field_hints(cls)
    arguments = {
        spec.name: _from_wire(value, hints[spec.name])
        for spec, value in zip(specs, values, strict=True)
    }
    try:
        return cls(**arguments)
    except MalformedMessage:
        raise
    except (ParameterError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"a {cls.__name__} is invalid: {exc}; discarded") from None


def _to_wire(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_to_wire(item) for item in value]
    return value


def _from_wire(value: object, kind: Any) -> object:
    """Rebuild tuples and enums; type checks happen in the dataclasses."""
    if typing.get_origin(kind) is tuple and isinstance(value, list):
        item = typing.get_args(kind)[0]
        return tuple(_from_wire(element, item) for element in value)
    if kind is Stage:
        if type(value) is not int:
            raise MalformedMessage(f"the stage must be an integer, got {value!r}; discarded")
        try:
            return Stage(value)
        except ValueError:
            raise MalformedMessage(f"unknown stage {value!r}; discarded") from None
    return value
