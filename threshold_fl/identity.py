"""Long-term party identities: Ed25519 signatures and X25519 agreement keys.

Each party holds an :class:`Identity` (secret) and publishes its
:class:`PublicIdentity`.  Pairwise sealing on the agreement keys lives in
:mod:`threshold_fl.sealing`, which gets only the shared secret
(:meth:`Identity.shared_secret`): the private keys never leave this module.

Key files are **not encrypted at rest**: the secret file is small JSON holding
the raw private keys in base64, protected only by owner-only permissions
(0o600 in a 0o700 directory).  Use encrypted storage if the disk may leak.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from threshold_fl.errors import AuthenticationError, IdentityError, ParameterError

__all__ = [
    "KEY_SIZE", "PUBLIC_FILENAME", "SECRET_FILENAME",
    "Identity", "PartyId", "PublicIdentity", "length_prefixed", "require_bytes",
    "validate_party_id",
]

PartyId = NewType("PartyId", str)

KEY_SIZE = 32
SECRET_FILENAME = "identity.key"
PUBLIC_FILENAME = "identity.pub.json"

_PARTY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SECRET_FORMAT = "threshold-fl-identity"
_PUBLIC_FORMAT = "threshold-fl-public-identity"
_FILE_VERSION = 1
_MAX_FILE_BYTES = 64 * 1024
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # never follow a planted symlink
# Fixed scalar for the low-order test: a clamped scalar times a point of
# order dividing 8 is the identity, which X25519 reports as an error.
_PROBE_KEY = X25519PrivateKey.from_private_bytes(b"\x01" * KEY_SIZE)


def validate_party_id(value: object) -> PartyId:
    """Return ``value`` as a :data:`PartyId`, or raise ParameterError."""
    if not isinstance(value, str) or _PARTY_ID_RE.fullmatch(value) is None:
        raise ParameterError(
            f"invalid party id {value!r}: use 1-64 ASCII letters, digits, '_', "
            "'.' or '-', starting with a letter or digit"
        )
    return PartyId(value)


def length_prefixed(data: bytes, width: int = 4) -> bytes:
    """``data`` after its length (``width`` bytes, big-endian), so distinct tuples of
    fields never encode alike."""
    return len(data).to_bytes(width, "big") + data


def _hkdf(ikm: bytes, *, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_SIZE, salt, info).derive(ikm)


def require_bytes(**values: object) -> None:
    """Refuse (ParameterError) any named value that is not bytes."""
    for name, value in values.items():
        if not isinstance(value, bytes):
            raise ParameterError(f"{name} must be bytes, got {type(value).__name__}")


@dataclass(frozen=True)
class PublicIdentity:
    """What a party publishes: its id and raw 32-byte public keys."""

    party_id: PartyId
    signing_public: bytes
    agreement_public: bytes

    def __post_init__(self) -> None:
        validate_party_id(self.party_id)
        for name in ("signing_public", "agreement_public"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != KEY_SIZE:
                raise ParameterError(f"{name} must be {KEY_SIZE} raw bytes")
        Ed25519PublicKey.from_public_bytes(self.signing_public)
        try:  # a low-order key would force a known shared secret
            _PROBE_KEY.exchange(X25519PublicKey.from_public_bytes(self.agreement_public))
        except ValueError:
            raise ParameterError("agreement_public is a low-order X25519 point") from None

    def fingerprint(self) -> str:
        """Hex SHA-256 of a canonical encoding; compare it out of band."""
        encoded = (length_prefixed(_PUBLIC_FORMAT.encode())
                   + length_prefixed(self.party_id.encode())
                   + self.signing_public + self.agreement_public)
        return hashlib.sha256(encoded).hexdigest()

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise AuthenticationError unless ``signature`` signs ``message``."""
        require_bytes(message=message, signature=signature)
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_public).verify(signature, message)
        except InvalidSignature:
            raise AuthenticationError(
                f"signature does not verify under party {self.party_id!r}'s key: the "
                "message was altered or signed by someone else; reject it"
            ) from None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict; keys as lowercase hex."""
        return {"format": _PUBLIC_FORMAT, "version": _FILE_VERSION,
                "party_id": self.party_id, "signing_public": self.signing_public.hex(),
                "agreement_public": self.agreement_public.hex()}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PublicIdentity:
        """Inverse of :meth:`to_dict`; anything malformed -> IdentityError."""
        if not isinstance(data, Mapping):
            raise IdentityError(f"public identity: expected a mapping, got {type(data).__name__}")
        party_id = _check_header(data, _PUBLIC_FORMAT, "public identity")
        keys = [_key_field(data, n, "public identity", bytes.fromhex, "hex")
                for n in ("signing_public", "agreement_public")]
        try:
            return cls(party_id, keys[0], keys[1])
        except ParameterError as exc:
            raise IdentityError(f"public identity: {exc}") from None


def _field(data: Mapping[str, object], name: str, where: str) -> object:
    if name not in data:
        raise IdentityError(f"{where}: missing field {name!r}")
    return data[name]


def _check_header(data: Mapping[str, object], fmt: str, where: str) -> PartyId:
    """Check format and version; return the validated party id."""
    if _field(data, "format", where) != fmt:
        raise IdentityError(f"{where}: field 'format' must be {fmt!r}")
    version = _field(data, "version", where)
    if version != _FILE_VERSION or isinstance(version, bool):
        raise IdentityError(f"{where}: unsupported 'version' {version!r}; expected 1")
    try:
        return validate_party_id(_field(data, "party_id", where))
    except ParameterError as exc:
        raise IdentityError(f"{where}: field 'party_id': {exc}") from None


def _key_field(data: Mapping[str, object], name: str, where: str,
               decode: Callable[[str], bytes], encoding: str) -> bytes:
    value = _field(data, name, where)
    try:
        raw = decode(value) if isinstance(value, str) else None
    except (ValueError, binascii.Error):
        raw = None
    if raw is None or len(raw) != KEY_SIZE:
        raise IdentityError(f"{where}: field {name!r} must be {KEY_SIZE} bytes in {encoding}")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class Identity:
    """A party's secret keys.  Never share or log it; publish :attr:`public`."""

    __slots__ = ("_agreement_key", "_public", "_signing_key")

    def __init__(self, party_id: str, signing_key: Ed25519PrivateKey,
                 agreement_key: X25519PrivateKey) -> None:
        if not isinstance(signing_key, Ed25519PrivateKey) or not isinstance(
                agreement_key, X25519PrivateKey):
            raise ParameterError("need an Ed25519 signing key and an X25519 agreement key")
        self._signing_key = signing_key
        self._agreement_key = agreement_key
        self._public = PublicIdentity(
            validate_party_id(party_id),
            signing_key.public_key().public_bytes_raw(),
            agreement_key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, party_id: str,
                 random_bytes: Callable[[int], bytes] | None = None) -> Identity:
        """New keys from OS randomness, or from ``random_bytes(32)`` if given."""
        if random_bytes is None:
            return cls(party_id, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())
        return cls.from_seed(party_id, random_bytes(KEY_SIZE))

    @classmethod
    def from_seed(cls, party_id: str, seed: bytes) -> Identity:
        """Deterministic keys (for tests); the party id is mixed in."""
        if not isinstance(seed, bytes) or len(seed) != KEY_SIZE:
            raise ParameterError(f"seed must be {KEY_SIZE} bytes")
        pid = validate_party_id(party_id).encode()
        sign = _hkdf(seed, salt=None, info=b"threshold-fl/identity/ed25519" + length_prefixed(pid))
        agree = _hkdf(seed, salt=None, info=b"threshold-fl/identity/x25519" + length_prefixed(pid))
        return cls(party_id, Ed25519PrivateKey.from_private_bytes(sign),
                   X25519PrivateKey.from_private_bytes(agree))

    @property
    def party_id(self) -> PartyId:
        return self._public.party_id

    @property
    def public(self) -> PublicIdentity:
        return self._public

    def __repr__(self) -> str:  # never print key material
        fingerprint = self._public.fingerprint()[:16]
        return f"Identity(party_id={self.party_id!r}, fingerprint={fingerprint}...)"

    def sign(self, message: bytes) -> bytes:
        """64-byte Ed25519 signature over ``message``."""
        require_bytes(message=message)
        return self._signing_key.sign(message)

    def shared_secret(self, peer: PublicIdentity) -> bytes:
        """Raw X25519 secret shared with ``peer``: input to a KDF, never a key by itself.

        This is how :mod:`threshold_fl.sealing` derives pairwise keys without the
        private agreement key ever leaving this object.
        """
        try:
            peer_key = X25519PublicKey.from_public_bytes(peer.agreement_public)
            return self._agreement_key.exchange(peer_key)
        except ValueError:
            raise IdentityError(f"party {peer.party_id!r}'s agreement key is unusable") from None

    def save(self, directory: Path | str, *, overwrite: bool = False) -> None:
        """Write the secret file (0o600) and public file (0o644) into ``directory``."""
        directory = Path(directory)
        _make_private_dir(directory)
        secret_path, public_path = directory / SECRET_FILENAME, directory / PUBLIC_FILENAME
        for path in (secret_path, public_path):
            if not overwrite and os.path.lexists(path):
                raise IdentityError(f"{path} already exists; refusing to overwrite an identity. "
                                    "Pass overwrite=True to replace it (the old key is lost)")
        doc = {"format": _SECRET_FORMAT, "version": _FILE_VERSION, "party_id": self.party_id,
               "signing_private": _b64(self._signing_key.private_bytes_raw()),
               "agreement_private": _b64(self._agreement_key.private_bytes_raw())}
        _write_file(secret_path, json.dumps(doc).encode(), 0o600, replace=overwrite)
        _write_file(public_path, json.dumps(self._public.to_dict()).encode(), 0o644, replace=True)

    @classmethod
    def load(cls, directory: Path | str) -> Identity:
        """Read an identity written by :meth:`save`; checks permissions and consistency."""
        secret_path = Path(directory) / SECRET_FILENAME
        doc = _read_json(secret_path, private=True)
        where = str(secret_path)
        party_id = _check_header(doc, _SECRET_FORMAT, where)
        sign, agree = (_key_field(doc, n, where, _b64decode, "base64")
                       for n in ("signing_private", "agreement_private"))
        identity = cls(party_id, Ed25519PrivateKey.from_private_bytes(sign),
                       X25519PrivateKey.from_private_bytes(agree))
        public_path = Path(directory) / PUBLIC_FILENAME
        if os.path.lexists(public_path):  # optional, but must agree when present
            try:
                stored = PublicIdentity.from_dict(_read_json(public_path, private=False))
            except IdentityError as exc:
                raise IdentityError(f"{public_path}: {exc}") from None
            if stored.party_id != party_id:
                raise IdentityError(f"party id mismatch: {secret_path} says {party_id!r}, "
                                    f"{public_path} says {stored.party_id!r}")
            if stored != identity.public:
                raise IdentityError(f"{public_path} does not hold the public keys of "
                                    f"{secret_path}; delete it and save the identity again")
        return identity


def _make_private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        if not directory.is_dir():
            raise IdentityError(f"{directory} exists and is not a directory") from None


def _write_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    # O_EXCL with the final mode: the file never exists with looser permissions.
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, mode)
    except OSError as exc:
        raise IdentityError(f"cannot create {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exact mode whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(target, path)  # atomic: readers see old or new, never half
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _read_json(path: Path, *, private: bool) -> dict[str, object]:
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW)
    except FileNotFoundError:
        raise IdentityError(f"no identity file at {path}; create one with "
                            "Identity.generate(...).save(directory)") from None
    except OSError as exc:
        raise IdentityError(f"cannot open {path} (symlinks are refused): {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise IdentityError(f"{path} is not a regular file")
        if private and mode & 0o077:
            raise IdentityError(
                f"identity key file {path} has mode {oct(mode & 0o777)} and is open to group "
                f"or others; run `chmod 600 {path}` (and consider the key exposed)")
        raw = handle.read(_MAX_FILE_BYTES + 1)
    try:
        if len(raw) > _MAX_FILE_BYTES:
            raise ValueError("file too large")
        doc = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise IdentityError(f"{path} is not a valid identity JSON file: {exc}") from None
    if not isinstance(doc, dict):
        raise IdentityError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc
