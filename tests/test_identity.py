"""Tests for threshold_fl.identity and its pairwise seals (threshold_fl.sealing): real
cryptography, real files, no mocks."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threshold_fl.errors import AuthenticationError, IdentityError, ParameterError
from threshold_fl.identity import (
    PUBLIC_FILENAME,
    SECRET_FILENAME,
    Identity,
    PublicIdentity,
    validate_party_id,
)
from threshold_fl.sealing import NONCE_SIZE, SEAL_VERSION, open_from, random_nonce, seal_for

CTX = b"session-42/share-transfer"
NONCE = bytes(range(NONCE_SIZE))


def _seed(n: int) -> bytes:
    return bytes([n]) * 32


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.from_seed("alice", _seed(1))


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.from_seed("bob", _seed(2))


@pytest.fixture(scope="module")
def carol() -> Identity:
    return Identity.from_seed("carol", _seed(3))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------ party ids

@pytest.mark.parametrize("pid", ["a", "A" * 64, "node-1.example_2", "0"])
def test_valid_party_ids_accepted(pid: str) -> None:
    assert validate_party_id(pid) == pid


@pytest.mark.parametrize(
    "pid", ["", "-a", ".a", "_a", "a" * 65, "a b", "a/b", "é", "a\n", "a\x00", 5, None, b"a"]
)
def test_invalid_party_ids_rejected(pid: object) -> None:
    with pytest.raises(ParameterError, match="invalid party id"):
        validate_party_id(pid)
    with pytest.raises(ParameterError):
        Identity.from_seed(pid, _seed(9))  # type: ignore[arg-type]


# ------------------------------------------------------------ generation

def test_generate_uses_fresh_keys() -> None:
    a, b = Identity.generate("p1"), Identity.generate("p1")
    assert a.public != b.public
    assert a.public.fingerprint() != b.public.fingerprint()


def test_generate_deterministic_from_random_bytes() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return _seed(7)[:n]

    one = Identity.generate("p1", random_bytes=rng)
    assert calls == [32]
    assert one.public == Identity.generate("p1", random_bytes=rng).public
    assert one.public == Identity.from_seed("p1", _seed(7)).public
    # The party id is mixed in: one seed never gives two parties the same keys.
    other = Identity.from_seed("p2", _seed(7)).public
    assert other.signing_public != one.public.signing_public
    assert other.agreement_public != one.public.agreement_public


@pytest.mark.parametrize("seed", [b"", b"x" * 31, b"x" * 33, "x" * 32])
def test_bad_seed_rejected(seed: Any) -> None:
    with pytest.raises(ParameterError, match="seed"):
        Identity.from_seed("p1", seed)


def test_repr_does_not_leak_keys(alice: Identity) -> None:
    text = repr(alice)
    assert "alice" in text
    assert alice._signing_key.private_bytes_raw().hex() not in text


# ------------------------------------------------------------ signatures

def test_sign_verify(alice: Identity) -> None:
    sig = alice.sign(b"hello")
    assert len(sig) == 64
    alice.public.verify(b"hello", sig)  # no exception


def test_tampered_message_rejected(alice: Identity) -> None:
    sig = alice.sign(b"hello")
    with pytest.raises(AuthenticationError, match="does not verify"):
        alice.public.verify(b"hellp", sig)


@pytest.mark.parametrize("index", [0, 31, 63])
def test_tampered_signature_rejected(alice: Identity, index: int) -> None:
    sig = bytearray(alice.sign(b"hello"))
    sig[index] ^= 0x01
    with pytest.raises(AuthenticationError):
        alice.public.verify(b"hello", bytes(sig))


@pytest.mark.parametrize("sig", [b"", b"\x00" * 63, b"\x00" * 65])
def test_wrong_length_signature_rejected(alice: Identity, sig: bytes) -> None:
    with pytest.raises(AuthenticationError):
        alice.public.verify(b"hello", sig)


def test_verify_with_other_party_key_rejected(alice: Identity, bob: Identity) -> None:
    with pytest.raises(AuthenticationError, match="'bob'"):
        bob.public.verify(b"hello", alice.sign(b"hello"))


def test_sign_rejects_non_bytes(alice: Identity) -> None:
    with pytest.raises(ParameterError):
        alice.sign("hello")  # type: ignore[arg-type]


# ------------------------------------------------------------ PublicIdentity

def test_public_dict_round_trip(alice: Identity) -> None:
    d = alice.public.to_dict()
    assert PublicIdentity.from_dict(json.loads(json.dumps(d))) == alice.public
    assert d["party_id"] == "alice"


def test_fingerprint_stable_and_distinct(alice: Identity, bob: Identity) -> None:
    fp = alice.public.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == Identity.from_seed("alice", _seed(1)).public.fingerprint()
    assert fp != bob.public.fingerprint()
    renamed = PublicIdentity(validate_party_id("mallory"), alice.public.signing_public,
                             alice.public.agreement_public)
    assert renamed.fingerprint() != fp


def _public_dict(alice: Identity, **changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = dict(alice.public.to_dict())
    for key, value in changes.items():
        if value is ...:
            del d[key]
        else:
            d[key] = value
    return d


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"format": ...}, "format"),
        ({"format": "something-else"}, "format"),
        ({"version": 2}, "version"),
        ({"version": True}, "version"),
        ({"party_id": ...}, "party_id"),
        ({"party_id": "bad id"}, "party_id"),
        ({"signing_public": ...}, "signing_public"),
        ({"signing_public": "zz" * 32}, "signing_public"),
        ({"signing_public": "ab" * 31}, "signing_public"),
        ({"signing_public": 12}, "signing_public"),
        ({"agreement_public": "ab" * 33}, "agreement_public"),
        ({"agreement_public": "00" * 32}, "agreement_public"),  # low-order point
    ],
)
def test_malformed_public_dict_rejected(
    alice: Identity, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(IdentityError, match=field):
        PublicIdentity.from_dict(_public_dict(alice, **changes))


@pytest.mark.parametrize("data", [None, [], "alice", 5])
def test_non_mapping_public_dict_rejected(data: Any) -> None:
    with pytest.raises(IdentityError, match="expected a mapping"):
        PublicIdentity.from_dict(data)


def test_public_identity_constructor_validates(alice: Identity) -> None:
    pid, sp, ap = alice.public.party_id, alice.public.signing_public, alice.public.agreement_public
    with pytest.raises(ParameterError, match="signing_public"):
        PublicIdentity(pid, sp[:31], ap)
    with pytest.raises(ParameterError, match="agreement_public"):
        PublicIdentity(pid, sp, ap + b"\x00")
    with pytest.raises(ParameterError, match="low-order"):
        PublicIdentity(pid, sp, (1).to_bytes(32, "little"))
    with pytest.raises(ParameterError, match="party id"):
        PublicIdentity("", sp, ap)  # type: ignore[arg-type]


# ------------------------------------------------------------ sealing

def test_shared_secret_is_symmetric(alice: Identity, bob: Identity, carol: Identity) -> None:
    # The one way key agreement leaves Identity: both ends must derive the same secret.
    assert alice.shared_secret(bob.public) == bob.shared_secret(alice.public)
    assert alice.shared_secret(bob.public) != alice.shared_secret(carol.public)


def test_seal_open_round_trip(alice: Identity, bob: Identity) -> None:
    sealed = seal_for(alice, bob.public, b"secret share", context=CTX, nonce=NONCE)
    assert sealed[0] == SEAL_VERSION
    assert sealed[1:1 + NONCE_SIZE] == NONCE
    assert b"secret share" not in sealed
    assert open_from(bob, alice.public, sealed, context=CTX) == b"secret share"


def test_seal_empty_plaintext(alice: Identity, bob: Identity) -> None:
    sealed = seal_for(alice, bob.public, b"", context=b"", nonce=NONCE)
    assert len(sealed) == 1 + NONCE_SIZE + 16
    assert open_from(bob, alice.public, sealed, context=b"") == b""


def test_seal_is_deterministic_given_nonce(alice: Identity, bob: Identity) -> None:
    a = seal_for(alice, bob.public, b"m", context=CTX, nonce=NONCE)
    assert a == seal_for(alice, bob.public, b"m", context=CTX, nonce=NONCE)
    assert a != seal_for(alice, bob.public, b"m", context=CTX, nonce=random_nonce())


def test_third_party_cannot_open(alice: Identity, bob: Identity, carol: Identity) -> None:
    sealed = seal_for(alice, bob.public, b"for bob", context=CTX, nonce=NONCE)
    with pytest.raises(AuthenticationError, match="did not authenticate"):
        open_from(carol, alice.public, sealed, context=CTX)


def test_wrong_sender_key_fails(alice: Identity, bob: Identity, carol: Identity) -> None:
    sealed = seal_for(alice, bob.public, b"for bob", context=CTX, nonce=NONCE)
    with pytest.raises(AuthenticationError):
        open_from(bob, carol.public, sealed, context=CTX)
    # Same id, different keys: an impostor "alice" is not alice.
    impostor = Identity.from_seed("alice", _seed(99)).public
    with pytest.raises(AuthenticationError):
        open_from(bob, impostor, sealed, context=CTX)


def test_direction_matters(alice: Identity, bob: Identity) -> None:
    # A->B and B->A share the X25519 secret; the direction label must split them.
    sealed = seal_for(alice, bob.public, b"a to b", context=CTX, nonce=NONCE)
    with pytest.raises(AuthenticationError):
        open_from(alice, bob.public, sealed, context=CTX)
    reverse = seal_for(bob, alice.public, b"a to b", context=CTX, nonce=NONCE)
    assert reverse != sealed


def test_context_is_bound_into_the_key(alice: Identity, bob: Identity) -> None:
    # A nonce reused under another context must not reuse the keystream.
    one = seal_for(alice, bob.public, b"same plaintext", context=b"session-1", nonce=NONCE)
    two = seal_for(alice, bob.public, b"same plaintext", context=b"session-2", nonce=NONCE)
    body = slice(1 + NONCE_SIZE, -16)
    assert one[body] != two[body]


def test_wrong_context_fails(alice: Identity, bob: Identity) -> None:
    sealed = seal_for(alice, bob.public, b"m", context=CTX, nonce=NONCE)
    for ctx in (b"", CTX + b"x", CTX[:-1], b"session-43/share-transfer"):
        with pytest.raises(AuthenticationError, match="context"):
            open_from(bob, alice.public, sealed, context=ctx)


@pytest.mark.parametrize("index", [1, NONCE_SIZE, NONCE_SIZE + 1, -17, -1])
def test_tampered_byte_fails(alice: Identity, bob: Identity, index: int) -> None:
    # Covers nonce (1, 12), ciphertext (13) and tag (-17, -1) bytes.
    sealed = bytearray(seal_for(alice, bob.public, b"payload", context=CTX, nonce=NONCE))
    sealed[index] ^= 0x80
    with pytest.raises(AuthenticationError, match="did not authenticate"):
        open_from(bob, alice.public, bytes(sealed), context=CTX)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_fails(alice: Identity, bob: Identity, version: int) -> None:
    sealed = seal_for(alice, bob.public, b"payload", context=CTX, nonce=NONCE)
    with pytest.raises(AuthenticationError, match="version"):
        open_from(bob, alice.public, bytes([version]) + sealed[1:], context=CTX)


@pytest.mark.parametrize("keep", [0, 1, NONCE_SIZE, NONCE_SIZE + 16, -1])
def test_truncated_fails(alice: Identity, bob: Identity, keep: int) -> None:
    sealed = seal_for(alice, bob.public, b"payload", context=CTX, nonce=NONCE)
    with pytest.raises(AuthenticationError):
        open_from(bob, alice.public, sealed[:keep], context=CTX)


def test_appended_bytes_fail(alice: Identity, bob: Identity) -> None:
    sealed = seal_for(alice, bob.public, b"payload", context=CTX, nonce=NONCE)
    with pytest.raises(AuthenticationError):
        open_from(bob, alice.public, sealed + b"\x00", context=CTX)


@pytest.mark.parametrize("nonce", [b"", b"\x00" * 11, b"\x00" * 13, "x" * 12])
def test_bad_nonce_rejected(alice: Identity, bob: Identity, nonce: Any) -> None:
    with pytest.raises(ParameterError, match="nonce"):
        seal_for(alice, bob.public, b"m", context=CTX, nonce=nonce)


def test_random_nonce() -> None:
    a, b = random_nonce(), random_nonce()
    assert len(a) == NONCE_SIZE and a != b


@settings(max_examples=40, deadline=None)
@given(plaintext=st.binary(max_size=512), context=st.binary(max_size=64),
       nonce=st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE))
def test_seal_open_property(plaintext: bytes, context: bytes, nonce: bytes) -> None:
    a, b = Identity.from_seed("alice", _seed(1)), Identity.from_seed("bob", _seed(2))
    sealed = seal_for(a, b.public, plaintext, context=context, nonce=nonce)
    assert open_from(b, a.public, sealed, context=context) == plaintext


# ------------------------------------------------------------ key files

def test_save_load_round_trip(tmp_path: Path, alice: Identity) -> None:
    directory = tmp_path / "keys" / "alice"
    alice.save(directory)
    assert _mode(directory) == 0o700
    assert _mode(directory / SECRET_FILENAME) == 0o600
    assert _mode(directory / PUBLIC_FILENAME) == 0o644
    loaded = Identity.load(directory)
    assert loaded.public == alice.public
    alice.public.verify(b"m", loaded.sign(b"m"))
    public = json.loads((directory / PUBLIC_FILENAME).read_text())
    assert PublicIdentity.from_dict(public) == alice.public
    secret = json.loads((directory / SECRET_FILENAME).read_text())
    assert secret["format"] == "threshold-fl-identity" and secret["version"] == 1
    assert secret["party_id"] == "alice"


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o277])
def test_save_modes_do_not_depend_on_umask(tmp_path: Path, alice: Identity, umask: int) -> None:
    old = os.umask(umask)
    try:
        alice.save(tmp_path / "k")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o700
    assert _mode(tmp_path / "k" / SECRET_FILENAME) == 0o600
    assert _mode(tmp_path / "k" / PUBLIC_FILENAME) == 0o644


def test_load_without_public_file(tmp_path: Path, alice: Identity) -> None:
    alice.save(tmp_path)
    (tmp_path / PUBLIC_FILENAME).unlink()
    assert Identity.load(tmp_path).public == alice.public


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_load_refuses_loose_permissions(tmp_path: Path, alice: Identity, mode: int) -> None:
    alice.save(tmp_path)
    key = tmp_path / SECRET_FILENAME
    key.chmod(mode)
    with pytest.raises(IdentityError, match="chmod 600") as info:
        Identity.load(tmp_path)
    assert str(key) in str(info.value)


def test_load_refuses_symlinked_key(tmp_path: Path, alice: Identity) -> None:
    alice.save(tmp_path / "real")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / SECRET_FILENAME).symlink_to(tmp_path / "real" / SECRET_FILENAME)
    with pytest.raises(IdentityError, match="symlink"):
        Identity.load(tmp_path / "link")


def test_save_refuses_overwrite(tmp_path: Path, alice: Identity, bob: Identity) -> None:
    alice.save(tmp_path)
    before = (tmp_path / SECRET_FILENAME).read_bytes()
    with pytest.raises(IdentityError, match="overwrite=True"):
        Identity.from_seed("alice", _seed(5)).save(tmp_path)
    assert (tmp_path / SECRET_FILENAME).read_bytes() == before
    bob.save(tmp_path, overwrite=True)
    assert _mode(tmp_path / SECRET_FILENAME) == 0o600
    assert Identity.load(tmp_path).public == bob.public
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SECRET_FILENAME, PUBLIC_FILENAME])


def test_save_refuses_when_only_public_file_exists(tmp_path: Path, alice: Identity) -> None:
    (tmp_path / PUBLIC_FILENAME).write_text("{}")
    with pytest.raises(IdentityError, match="already exists"):
        alice.save(tmp_path)
    assert not (tmp_path / SECRET_FILENAME).exists()


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no identity file"):
        Identity.load(tmp_path)


def _write_secret(directory: Path, content: str) -> None:
    path = directory / SECRET_FILENAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    path.chmod(0o600)


def _secret_doc(identity: Identity, **changes: Any) -> str:
    doc: dict[str, Any] = {
        "format": "threshold-fl-identity", "version": 1, "party_id": identity.party_id,
        "signing_private": base64.b64encode(
            identity._signing_key.private_bytes_raw()).decode(),
        "agreement_private": base64.b64encode(
            identity._agreement_key.private_bytes_raw()).decode(),
    }
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


def test_hand_written_secret_file_loads(tmp_path: Path, alice: Identity) -> None:
    _write_secret(tmp_path, _secret_doc(alice))
    assert Identity.load(tmp_path).public == alice.public


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "not a valid identity JSON"),
        ("{not json", "not a valid identity JSON"),
        ("\xff", "not a valid identity JSON"),
        ("[1, 2]", "expected a JSON object"),
        ("{}", "missing field 'format'"),
    ],
)
def test_load_malformed_json(tmp_path: Path, content: str, expected: str) -> None:
    _write_secret(tmp_path, content)
    with pytest.raises(IdentityError, match=expected):
        Identity.load(tmp_path)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"format": "threshold-fl-public-identity"}, "format"),
        ({"version": 2}, "version"),
        ({"version": "1"}, "version"),
        ({"party_id": ...}, "party_id"),
        ({"party_id": "../etc"}, "party_id"),
        ({"signing_private": ...}, "signing_private"),
        ({"signing_private": "AAAA"}, "signing_private"),
        ({"signing_private": "not base64!"}, "signing_private"),
        ({"agreement_private": "A" * 44 + "AAAA"}, "agreement_private"),
        ({"agreement_private": None}, "agreement_private"),
    ],
)
def test_load_malformed_fields(
    tmp_path: Path, alice: Identity, changes: dict[str, Any], field: str
) -> None:
    _write_secret(tmp_path, _secret_doc(alice, **changes))
    with pytest.raises(IdentityError, match=field):
        Identity.load(tmp_path)


def test_load_party_id_mismatch(tmp_path: Path, alice: Identity) -> None:
    alice.save(tmp_path)
    renamed = Identity.from_seed("mallory", _seed(1))
    (tmp_path / PUBLIC_FILENAME).write_text(json.dumps(renamed.public.to_dict()))
    with pytest.raises(IdentityError, match="party id mismatch"):
        Identity.load(tmp_path)


def test_load_public_key_mismatch(tmp_path: Path, alice: Identity) -> None:
    alice.save(tmp_path)
    other = Identity.from_seed("alice", _seed(8))
    (tmp_path / PUBLIC_FILENAME).write_text(json.dumps(other.public.to_dict()))
    with pytest.raises(IdentityError, match="does not hold the public keys"):
        Identity.load(tmp_path)


def test_load_malformed_public_file(tmp_path: Path, alice: Identity) -> None:
    alice.save(tmp_path)
    (tmp_path / PUBLIC_FILENAME).write_text('{"format": "threshold-fl-public-identity"}')
    with pytest.raises(IdentityError, match=PUBLIC_FILENAME.replace(".", r"\.")):
        Identity.load(tmp_path)
