"""Values the parties derive alike: key ids, check values, what seals bind to, and the
mask the manifest fixes (fraction 1: all ones, with no mask agreement).

Every sealed payload binds the session, the protocol step and both parties, so a
sealed blob lifted from one place is useless in any other.  The seals and the keyed
check themselves are in :mod:`threshold_fl.sealing`; this module adds the session.
"""

from __future__ import annotations

import hashlib

import msgpack

from protocols.manifest import Manifest
from protocols.messages import Header, MaskConfirm, MaskStart, Message, SensitivityUpload
from threshold_fl.errors import MalformedMessage, UnexpectedMessage
from threshold_fl.ml.mask import EncryptionMask
from threshold_fl.sealing import GROUP_KEY_SIZE, keyed_check

__all__ = [
    "PLAINTEXT_GROUP_KEY",
    "group_check",
    "known_mask",
    "model_check",
    "open_mapping",
    "pack_mapping",
    "plaintext_key_id",
    "refuse_mask_stage",
    "seal_context",
]

#: Plaintext mode has no group key; checks still run, under a key everyone knows.
PLAINTEXT_GROUP_KEY = bytes(GROUP_KEY_SIZE)


def plaintext_key_id(session: str, epoch: int) -> str:
    """Stands in for a key id in plaintext mode, so the message flow is the same."""
    return hashlib.sha256(f"threshold-fl/plaintext/{session}/{epoch}".encode()).hexdigest()


def known_mask(manifest: Manifest) -> EncryptionMask | None:
    """The mask every party takes from the manifest alone, with no mask agreement: all
    ones when the manifest encrypts everything (mask fraction 1, the default).  None: a
    fraction below 1, whose mask is selected from the jointly decrypted sensitivity sum."""
    if manifest.mask.everything:
        return EncryptionMask.full(manifest.model_length)
    return None


def refuse_mask_stage(manifest: Manifest, message: Message) -> None:
    """Raise for a mask-agreement message in a session that has no mask agreement."""
    if isinstance(message.body, MaskStart | SensitivityUpload | MaskConfirm) and (
            manifest.mask.everything):
        raise UnexpectedMessage(
            f"{message.kind} from {message.header.sender!r} cannot occur in this session: "
            "its manifest encrypts every coordinate (mask fraction 1), so the mask is "
            "all ones and never agreed; discarded (the sender runs another manifest or "
            "misbehaves)")


def group_check(group_key: bytes, session: str, epoch: int) -> str:
    """Proves clients hold the same group key without revealing it to the aggregator."""
    return keyed_check(group_key, "group-check", session.encode(), str(epoch).encode())


def model_check(group_key: bytes, header_context: bytes, model: bytes | memoryview) -> str:
    """A MAC of the global model (its bytes, or a byte view of the array): the aggregator
    can compare clients' values, not guess the model from them."""
    return keyed_check(group_key, "model-check", header_context, model)


def seal_context(header: Header, *extra: str) -> bytes:
    """What a sealed payload is bound to: session, step, sender, recipient and extras."""
    parts = [
        header.session, str(int(header.stage)), str(header.epoch), str(header.round),
        str(header.attempt), header.sender, header.recipient, *extra,
    ]
    packed: bytes = msgpack.packb(parts, use_bin_type=True)
    return packed


def pack_mapping(values: dict[str, bytes]) -> bytes:
    packed: bytes = msgpack.packb(values, use_bin_type=True)
    return packed


def open_mapping(data: bytes, allowed: frozenset[str], what: str) -> dict[str, bytes]:
    """Parse a small sealed map of named byte strings, rejecting anything else."""
    try:
        values = msgpack.unpackb(data, raw=False)
    except Exception:  # msgpack raises several unrelated types
        raise MalformedMessage(f"{what} does not parse; discarded") from None
    if not isinstance(values, dict) or not set(values) <= allowed or not all(
        isinstance(value, bytes) for value in values.values()
    ):
        raise MalformedMessage(f"{what} holds unexpected fields; discarded")
    return values
