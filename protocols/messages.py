"""Typed protocol messages: a header every message shares and one body type per step.

Messages are frozen dataclasses validated on construction, so a message that
exists is well formed; whether it is *expected* is for the state machines to
decide.  The wire form is in :mod:`protocols.codec`.
"""

from __future__ import annotations

import enum
import math
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Union

from threshold_fl.errors import MalformedMessage, ParameterError
from threshold_fl.identity import PartyId, validate_party_id

__all__ = [
    "BROADCAST",
    "MAX_UPLOAD_PARTS",
    "Abort",
    "Aggregate",
    "Body",
    "DecryptRequest",
    "DecryptionShare",
    "Finished",
    "Fused",
    "Header",
    "Hello",
    "KeyConfirm",
    "KeyDelivery",
    "KeygenStart",
    "MaskConfirm",
    "MaskStart",
    "Message",
    "PublicShare",
    "RoundDone",
    "RoundStart",
    "SensitivityUpload",
    "Stage",
    "UpdateUpload",
    "BODY_TYPES",
    "field_hints",
]

#: Recipient meaning "every client of the session" (relayed by the aggregator).
BROADCAST = "*"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_REASON = 2000
_MAX_ROUND = 1_000_000
#: Most parts one upload may come in (a part holds at least one ciphertext or value).
MAX_UPLOAD_PARTS = 100_000


class Stage(enum.IntEnum):
    """Protocol stage a message belongs to."""

    SETUP = 0  # clients announce themselves
    KEYS = 1  # key agreement (threshold), key delivery (single-key), roll call (plaintext)
    MASK = 2  # encryption-mask agreement
    ROUND = 3  # masked FedAvg rounds
    END = 4  # finish or abort


def _reject(what: str) -> MalformedMessage:
    return MalformedMessage(f"{what}; the message is malformed and was discarded")


def _check_value(name: str, value: object, kind: Any) -> None:
    """Check one field against its annotation (the few types messages use)."""
    if kind is PartyId:
        _check_party(name, value)
    elif kind in (str, bytes, bool):
        if type(value) is not kind:
            raise _reject(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")
        if kind is str and not _encodable(value):
            raise _reject(f"field {name!r} is not valid Unicode text")
    elif kind is int:
        if type(value) is not int or not 0 <= value <= 2**63:
            raise _reject(f"field {name!r} must be a non-negative integer, got {value!r}")
    elif kind is float:
        if type(value) is not float or not math.isfinite(value):
            raise _reject(f"field {name!r} must be a finite float, got {value!r}")
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if type(value) is not tuple:
            raise _reject(f"field {name!r} must be a sequence, got {type(value).__name__}")
        for element in value:
            _check_value(name, element, item)
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        if not isinstance(value, kind):
            raise _reject(f"field {name!r} must be a {kind.__name__}, got {value!r}")
    else:  # pragma: no cover - a programming error in this module
        raise TypeError(f"unsupported field type {kind!r}")


def _check_party(name: str, value: object) -> None:
    try:
        validate_party_id(value)
    except ParameterError as exc:
        raise _reject(f"field {name!r}: {exc}") from None


def _encodable(text: object) -> bool:
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:  # e.g. lone surrogates
        return False
    return True


_HINTS: dict[type, dict[str, Any]] = {}


def field_hints(cls: type) -> dict[str, Any]:
    """Field annotations per class, computed once (get_type_hints is costly); the codec
    rebuilds messages with them too."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _check_fields(instance: object) -> None:
    hints = field_hints(type(instance))
    for spec in fields(instance):  # type: ignore[arg-type]
        _check_value(spec.name, getattr(instance, spec.name), hints[spec.name])


def _check_weight(weight: float) -> None:
    # A FedAvg weight: a share of the uploaders' samples.  Anything else would let the
    # sum of weights overflow the CKKS modulus (or zero a client out).
    if not 0.0 < weight <= 1.0:
        raise _reject(f"field 'weight' must be in (0, 1], got {weight!r}")


def _check_digest(name: str, value: str) -> None:
    if _HEX64.fullmatch(value) is None:
        raise _reject(f"field {name!r} must be a lowercase hex SHA-256 digest")


@dataclass(frozen=True)
class Header:
    """Where a message belongs: session, sender, recipient and protocol step.

    ``epoch`` counts key agreements (it grows when keys are rotated); ``attempt``
    counts upload attempts within a stage (it grows when survivors re-upload).
    """

    session: str
    sender: PartyId
    recipient: str  # a party id, or BROADCAST
    stage: Stage
    epoch: int
    round: int  # 0 outside FedAvg rounds
    attempt: int

    def __post_init__(self) -> None:
        _check_fields(self)
        if not 0 < len(self.session) <= 128:
            raise _reject("the session id must have 1 to 128 characters")
        if self.recipient != BROADCAST:
            _check_party("recipient", self.recipient)
        if self.round > _MAX_ROUND or self.epoch > _MAX_ROUND or self.attempt > _MAX_ROUND:
            raise _reject("round, epoch or attempt is implausibly large")

    @property
    def step(self) -> tuple[Stage, int, int, int]:
        """The protocol step this message is for; messages of other steps are stale."""
        return (self.stage, self.epoch, self.round, self.attempt)


class _Body:
    """Base of message bodies: checks fields by annotation, then ``_validate``."""

    STAGES: ClassVar[frozenset[Stage]]

    def __post_init__(self) -> None:
        _check_fields(self)
        self._validate()

    def _validate(self) -> None:
        """Extra checks of one body type (none by default)."""


# -- setup and key agreement -------------------------------------------------------
@dataclass(frozen=True)
class Hello(_Body):
    """Client -> aggregator: I am here; ``samples`` is my local data size (FedAvg weight),
    ``manifest`` the fingerprint of the manifest I run (``Manifest.fingerprint``)."""

    samples: int
    manifest: str
    STAGES = frozenset({Stage.SETUP})

    def _validate(self) -> None:
        _check_digest("manifest", self.manifest)


@dataclass(frozen=True)
class KeygenStart(_Body):
    """Aggregator -> clients (and key authority): start key epoch ``header.epoch``;
    ``manifest`` is the fingerprint of the aggregator's manifest."""

    participants: tuple[PartyId, ...]
    threshold: int
    manifest: str
    STAGES = frozenset({Stage.KEYS})

    def _validate(self) -> None:
        _check_digest("manifest", self.manifest)
        if list(self.participants) != sorted(set(self.participants)) or not self.participants:
            raise _reject("participants must be a non-empty, sorted list without repeats")


@dataclass(frozen=True)
class PublicShare(_Body):
    """A client's public key share (threshold) or the authority's public key, as a frame."""

    key_frame: bytes
    STAGES = frozenset({Stage.KEYS})


@dataclass(frozen=True)
class KeyDelivery(_Body):
    """Sealed for the recipient alone: a Shamir share, the group key or a secret key."""

    sealed: bytes
    STAGES = frozenset({Stage.KEYS})


@dataclass(frozen=True)
class KeyConfirm(_Body):
    """Client -> aggregator: the key I computed and a check value of the group key."""

    key_id: str
    group_check: str
    STAGES = frozenset({Stage.KEYS})

    def _validate(self) -> None:
        _check_digest("key_id", self.key_id)
        _check_digest("group_check", self.group_check)


# -- mask agreement --------------------------------------------------------------
@dataclass(frozen=True)
class MaskStart(_Body):
    """Aggregator -> clients: keys agreed on ``key_id``; upload your sensitivity map,
    multiplied by ``weight`` (your FedAvg weight among this attempt's uploaders)."""

    key_id: str
    group_check: str
    weight: float
    STAGES = frozenset({Stage.MASK})

    def _validate(self) -> None:
        _check_digest("key_id", self.key_id)
        _check_digest("group_check", self.group_check)
        _check_weight(self.weight)


def _check_part(part: int, parts: int, what: str = "upload") -> None:
    if not 1 <= parts <= MAX_UPLOAD_PARTS:
        article = "an" if what[0] in "aeiou" else "a"
        raise _reject(f"{article} {what} must come in 1 to {MAX_UPLOAD_PARTS} parts, got "
                      f"{parts}")
    if part >= parts:
        raise _reject(f"{what} part {part} is out of range: the {what} has {parts} parts "
                      f"(0 to {parts - 1})")


@dataclass(frozen=True)
class SensitivityUpload(_Body):
    """Client -> aggregator: the (encrypted) sensitivity map as frames; part ``part`` of
    ``parts`` (an upload too large for one message streams as several, each signed and
    bound to the step by its header; see protocols.protection.part_span)."""

    protected: tuple[bytes, ...]
    part: int = 0
    parts: int = 1
    STAGES = frozenset({Stage.MASK})

    def _validate(self) -> None:
        _check_part(self.part, self.parts)


@dataclass(frozen=True)
class Aggregate(_Body):
    """Aggregator -> clients: the weighted sum, protected part as frames and plain part
    (single-key and plaintext modes, and threshold mode when nothing is encrypted)."""

    protected: tuple[bytes, ...]
    plain: bytes
    STAGES = frozenset({Stage.MASK, Stage.ROUND})


def _check_members(members: tuple[PartyId, ...]) -> None:
    if not members or list(members) != sorted(set(members)):
        raise _reject("the decryption set must be a non-empty, sorted list without repeats")


@dataclass(frozen=True)
class DecryptRequest(_Body):
    """Aggregator -> each member of a decryption set: the aggregate's c1 parts as
    frames; decrypt them for the set ``members`` (this attempt's).  A large aggregate's
    decryption streams: part ``part`` of ``parts`` carries ciphertexts
    ``part_span(count, parts, part)``, and so do the share and the fused result of it."""

    members: tuple[PartyId, ...]
    c1: tuple[bytes, ...]
    part: int = 0
    parts: int = 1
    STAGES = frozenset({Stage.MASK, Stage.ROUND})

    def _validate(self) -> None:
        _check_members(self.members)
        _check_part(self.part, self.parts, "decryption")


@dataclass(frozen=True)
class DecryptionShare(_Body):
    """Member -> aggregator: my decryption shares for the set ``members``, masked so
    that only the whole set's sum means anything; ``c1_digest`` names what they decrypt
    (part ``part`` of ``parts``: that part's c1, as :class:`DecryptRequest`)."""

    members: tuple[PartyId, ...]
    c1_digest: str
    shares: tuple[bytes, ...]
    part: int = 0
    parts: int = 1
    STAGES = frozenset({Stage.MASK, Stage.ROUND})

    def _validate(self) -> None:
        _check_members(self.members)
        _check_digest("c1_digest", self.c1_digest)
        _check_part(self.part, self.parts, "decryption")


@dataclass(frozen=True)
class Fused(_Body):
    """Aggregator -> clients: c0 plus the set's shares, still under the pad (which only
    clients can remove), and the plain part of the aggregate; part ``part`` of
    ``parts`` (as :class:`DecryptRequest`; the plain values split by ``part_span`` too)."""

    members: tuple[PartyId, ...]
    c1_digest: str
    fused: tuple[bytes, ...]
    plain: bytes
    part: int = 0
    parts: int = 1
    STAGES = frozenset({Stage.MASK, Stage.ROUND})

    def _validate(self) -> None:
        _check_members(self.members)
        _check_digest("c1_digest", self.c1_digest)
        _check_part(self.part, self.parts, "decryption")


@dataclass(frozen=True)
class MaskConfirm(_Body):
    """Client -> aggregator: the mask I selected, as a bitset, and its digest."""

    mask_bits: bytes
    digest: str
    STAGES = frozenset({Stage.MASK})

    def _validate(self) -> None:
        _check_digest("digest", self.digest)


# -- FedAvg rounds ----------------------------------------------------------------
@dataclass(frozen=True)
class RoundStart(_Body):
    """Aggregator -> clients: train round ``header.round`` under this key and mask, and
    upload the model multiplied by ``weight`` (your FedAvg weight in this attempt)."""

    key_id: str
    mask_digest: str
    group_check: str
    weight: float
    STAGES = frozenset({Stage.ROUND})

    def _validate(self) -> None:
        for name in ("key_id", "mask_digest", "group_check"):
            _check_digest(name, getattr(self, name))
        _check_weight(self.weight)


@dataclass(frozen=True)
class UpdateUpload(_Body):
    """Client -> aggregator: masked coordinates as frames, the rest as float32 bytes;
    part ``part`` of ``parts``, as :class:`SensitivityUpload`."""

    protected: tuple[bytes, ...]
    plain: bytes
    part: int = 0
    parts: int = 1
    STAGES = frozenset({Stage.ROUND})

    def _validate(self) -> None:
        _check_part(self.part, self.parts)


@dataclass(frozen=True)
class RoundDone(_Body):
    """Client -> aggregator: I hold the new global model; a MAC of it under the group key."""

    model_check: str
    STAGES = frozenset({Stage.ROUND})

    def _validate(self) -> None:
        _check_digest("model_check", self.model_check)


# -- end -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Finished(_Body):
    """Aggregator -> clients: all rounds are done."""

    rounds: int
    STAGES = frozenset(Stage)


@dataclass(frozen=True)
class Abort(_Body):
    """Any party -> others: the session (or the recipient's part in it) ends now."""

    reason: str
    STAGES = frozenset(Stage)  # may end any step

    def _validate(self) -> None:
        if not 0 < len(self.reason) <= _MAX_REASON:
            raise _reject(f"an abort reason must have 1 to {_MAX_REASON} characters")


Body = Union[  # noqa: UP007 - a runtime alias; X | Y would need every name defined first
    Hello,
    KeygenStart,
    PublicShare,
    KeyDelivery,
    KeyConfirm,
    MaskStart,
    SensitivityUpload,
    Aggregate,
    DecryptRequest,
    DecryptionShare,
    Fused,
    MaskConfirm,
    RoundStart,
    UpdateUpload,
    RoundDone,
    Finished,
    Abort,
]

#: Every body type, in wire-code order (the index is the type code: never reorder).
BODY_TYPES: tuple[type[_Body], ...] = typing.get_args(Body)


@dataclass(frozen=True)
class Message:
    """One authenticated protocol message.

    ``raw`` is the signed envelope it was decoded from (set by ``decode_message``), so
    the aggregator relays the sender's own signature; it is empty for a message built
    here, and takes no part in equality.
    """

    header: Header
    body: Body
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.header, Header) and isinstance(self.body, _Body)
                and isinstance(self.raw, bytes)):
            raise _reject("a message is a Header, a body of a known type and its bytes")
        if self.header.stage not in type(self.body).STAGES:
            raise _reject(
                f"a {type(self.body).__name__} cannot belong to stage {self.header.stage.name}"
            )

    @property
    def kind(self) -> str:
        return type(self.body).__name__
