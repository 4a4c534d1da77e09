"""Sealing and keyed checks: what is encrypted or MACed under which key, and why.

- **Pairwise seals** (:func:`seal_for` / :func:`open_from`): ChaCha20-Poly1305 under a
  key derived (HKDF-SHA256) from the static X25519 secret of sender and recipient.
  Key material in transit (Shamir shares, the group key, a single-key secret key) must
  open for one named party only, so the key is directional and binds both identities
  and the caller's context.
- **Group seals** (:func:`seal_group` / :func:`open_group`): ChaCha20-Poly1305 under
  the 32-byte client group key.  Partial decryptions go to every client through the
  aggregator, which must not read them.
- **Keyed checks** (:func:`keyed_check`): HMAC-SHA256 under the group key.  Clients
  prove they hold the same key (or model) to the aggregator without handing it a value
  it could test guesses against.

What each seal is bound to (session, step, parties) is the caller's ``context``; the
protocol builds it in ``protocols/session.py``.  No OpenFHE here: these are plain
symmetric primitives over bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from threshold_fl.errors import (
    AuthenticationError,
    ForgedMessage,
    MalformedMessage,
    ParameterError,
)
from threshold_fl.identity import (
    KEY_SIZE,
    Identity,
    PublicIdentity,
    length_prefixed,
    require_bytes,
)

__all__ = [
    "GROUP_KEY_SIZE", "NONCE_SIZE", "SEAL_VERSION",
    "keyed_check", "keyed_mac", "open_from", "open_group", "random_nonce", "seal_for", "seal_group",
]

NONCE_SIZE = 12  # ChaCha20-Poly1305's nonce, for both kinds of seal
SEAL_VERSION = 1  # first byte of a pairwise seal; a new format gets a new value
GROUP_KEY_SIZE = 32
_TAG_SIZE = 16


# ------------------------------------------------------------------ keyed checks


def keyed_mac(key: bytes, head: bytes, parts: Sequence[bytes | memoryview], *,
              width: int = 4) -> bytes:
    """HMAC-SHA256 under ``key`` of ``head`` then each part after its length (``width``
    bytes), so distinct tuples of parts never give the same value.  Keyed checks and
    threshold_fl.crypto's key derivations are both this, with their own heads.  A part
    may be a byte view (``memoryview(array).cast("B")``): hashed in place, not copied."""
    mac = hmac.new(key, head, hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(width, "big"))  # as length_prefixed, without a copy
        mac.update(part)
    return mac.digest()


def keyed_check(key: bytes, label: str, *parts: bytes | memoryview) -> str:
    """A value only key holders can compute: :func:`keyed_mac` of the label, in hex (8-byte
    lengths, as first deployed)."""
    return keyed_mac(key, label.encode(), parts, width=8).hex()


# ------------------------------------------------------------------ pairwise seals


def _derive_pairwise_key(own: Identity, peer: PublicIdentity, *,
                         sending: bool, context: bytes) -> bytes:
    """Key for one direction (sender -> recipient) between ``own`` and ``peer``."""
    me = own.public
    sender, recipient = (me, peer) if sending else (peer, me)
    shared = own.shared_secret(peer)
    # Salt: both parties in canonical order, so both sides derive the same one.
    pair = sorted((p.party_id.encode(), p.agreement_public) for p in (me, peer))
    salt = hashlib.sha256(b"threshold-fl/pairwise/v1"
                          + b"".join(length_prefixed(i) + k for i, k in pair)).digest()
    # Info: direction label, so A->B and B->A never share a key.  The context
    # is mixed in as well so that a nonce reused in another session is harmless.
    info = (b"threshold-fl/seal/v1" + length_prefixed(sender.party_id.encode())
            + sender.agreement_public + b"->" + length_prefixed(recipient.party_id.encode())
            + recipient.agreement_public + length_prefixed(context))
    return HKDF(hashes.SHA256(), KEY_SIZE, salt, info).derive(shared)


def seal_for(sender: Identity, recipient: PublicIdentity, plaintext: bytes, *,
             context: bytes, nonce: bytes) -> bytes:
    """Encrypt for ``recipient`` only; output is version || nonce || ciphertext.

    ``nonce`` (12 bytes) must never repeat for the same sender, recipient and
    context; outside the protocol core, :func:`random_nonce` is fine.
    """
    require_bytes(plaintext=plaintext, context=context, nonce=nonce)
    if len(nonce) != NONCE_SIZE:
        raise ParameterError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    key = _derive_pairwise_key(sender, recipient, sending=True, context=context)
    header = bytes([SEAL_VERSION]) + nonce
    return header + ChaCha20Poly1305(key).encrypt(nonce, plaintext, header[:1] + context)


def open_from(recipient: Identity, sender: PublicIdentity, sealed: bytes, *,
              context: bytes) -> bytes:
    """Decrypt a :func:`seal_for` output; any failure -> AuthenticationError."""
    require_bytes(sealed=sealed, context=context)
    minimum = 1 + NONCE_SIZE + _TAG_SIZE
    if len(sealed) < minimum:
        raise AuthenticationError(f"sealed message is truncated ({len(sealed)} bytes, "
                                  f"at least {minimum} needed); discard it")
    if sealed[0] != SEAL_VERSION:
        raise AuthenticationError(f"sealed message has unknown version byte {sealed[0]} "
                                  f"(expected {SEAL_VERSION}): corrupt or from an "
                                  "incompatible peer; discard it")
    key = _derive_pairwise_key(recipient, sender, sending=False, context=context)
    nonce = sealed[1:1 + NONCE_SIZE]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, sealed[1 + NONCE_SIZE:], sealed[:1] + context)
    except InvalidTag:
        raise AuthenticationError(
            f"the sealed message from {sender.party_id!r} did not authenticate: it was "
            "tampered with, sealed for another party or by another sender, or under "
            "another context; discard it") from None


def random_nonce() -> bytes:
    """A fresh random 12-byte nonce from the OS, for callers outside the protocol core."""
    return os.urandom(NONCE_SIZE)


# ------------------------------------------------------------------ group seals


def seal_group(group_key: bytes, nonce: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Authenticated encryption under the client group key: nonce || ciphertext."""
    return nonce + ChaCha20Poly1305(group_key).encrypt(nonce, plaintext, context)


def open_group(group_key: bytes, sealed: bytes, context: bytes, what: str) -> bytes:
    """Decrypt a :func:`seal_group` output; ``what`` names the payload in the errors."""
    if len(sealed) < NONCE_SIZE + _TAG_SIZE:
        raise MalformedMessage(f"{what} is truncated; discarded")
    try:
        return ChaCha20Poly1305(group_key).decrypt(
            sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], context
        )
    except InvalidTag:
        raise ForgedMessage(
            f"{what} did not authenticate under the group key: tampered, replayed from "
            "another step, or from a party outside the group; discarded"
        ) from None
