"""The protocol wire layer: typed messages (protocols.messages) and the signed codec
(protocols.codec).  Real Ed25519 identities, real msgpack; every rejection must be a
MessageRejected (ForgedMessage or MalformedMessage) and nothing else."""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.codec import (
    _HEADER_FIELDS,
    _LENGTH,
    _PREFIX,
    _SIGNATURE_SIZE,
    CODEC_VERSION,
    MAGIC,
    decode_message,
    encode_message,
    peek_step,
    signing_input,
)
from protocols.messages import (
    BODY_TYPES,
    BROADCAST,
    Abort,
    Aggregate,
    DecryptionShare,
    DecryptRequest,
    Finished,
    Fused,
    Header,
    Hello,
    KeyConfirm,
    KeyDelivery,
    KeygenStart,
    MaskConfirm,
    MaskStart,
    Message,
    PublicShare,
    RoundDone,
    RoundStart,
    SensitivityUpload,
    Stage,
    UpdateUpload,
)
from threshold_fl.errors import (
    ForgedMessage,
    MalformedMessage,
    MessageRejected,
    ParameterError,
    ThresholdFLError,
)
from threshold_fl.identity import Identity

SEED = bytes(range(32))
AGGREGATOR = Identity.from_seed("aggregator", SEED)
CLIENT1 = Identity.from_seed("client-1", SEED)
CLIENT2 = Identity.from_seed("client-2", SEED)
OUTSIDER = Identity.from_seed("outsider", SEED)
DIRECTORY = {party.party_id: party.public for party in (AGGREGATOR, CLIENT1, CLIENT2)}


def _digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


D1, D2, D3 = _digest("one"), _digest("two"), _digest("three")
SET = ("client-1", "client-2")  # a decryption set: sorted party ids, no repeats

#: One valid instance of every body type (with non-trivial field values).
SAMPLES: dict[type, Any] = {
    Hello: Hello(samples=1234, manifest=D1),
    KeygenStart: KeygenStart(participants=("client-1", "client-2"), threshold=2,
                             manifest=D2),
    PublicShare: PublicShare(key_frame=b"\x00frame\xff" * 10),
    KeyDelivery: KeyDelivery(sealed=bytes(range(256))),
    KeyConfirm: KeyConfirm(key_id=D1, group_check=D2),
    MaskStart: MaskStart(key_id=D1, group_check=D2, weight=0.25),
    SensitivityUpload: SensitivityUpload(protected=(b"first", b"", b"\x00" * 100)),
    Aggregate: Aggregate(protected=(b"ct-1", b"ct-2"), plain=b"\x01\x02\x03\x04"),
    DecryptRequest: DecryptRequest(members=SET, c1=(b"c1-first", b"\x00c1\xff" * 40)),
    DecryptionShare: DecryptionShare(members=SET, c1_digest=D3, shares=(b"\xaa" * 48, b""),
                                     part=4, parts=7),
    Fused: Fused(members=("client-1", "client-2", "outsider"), c1_digest=D1,
                 fused=(b"\x01fused" * 30,), plain=b"\x00\x00\x80\x3f" * 3, part=1,
                 parts=2),
    MaskConfirm: MaskConfirm(mask_bits=b"\xf0\x0f\x01", digest=D1),
    RoundStart: RoundStart(key_id=D1, mask_digest=D2, group_check=D3, weight=1.0),
    UpdateUpload: UpdateUpload(protected=(b"\x10" * 300,), plain=b"\x00\x00\x80\x3f" * 25,
                               part=2, parts=3),
    RoundDone: RoundDone(model_check=D2),
    Finished: Finished(rounds=3),
    Abort: Abort(reason="timed out waiting for client-2 (ünïcödé ✓)"),
}

CASES = [
    pytest.param(body_type, stage, id=f"{body_type.__name__}-{stage.name}")
    for body_type in BODY_TYPES
    for stage in sorted(body_type.STAGES)
]


def _header(
    stage: Stage = Stage.ROUND,
    *,
    sender: str = "client-1",
    recipient: str = "aggregator",
    session: str = "session-1",
    epoch: int = 1,
    round: int = 2,
    attempt: int = 0,
) -> Header:
    return Header(session, sender, recipient, stage, epoch, round, attempt)  # type: ignore[arg-type]


def _message(body: Any = None, *, sender: str = "client-1", **header: Any) -> Message:
    body = SAMPLES[UpdateUpload] if body is None else body
    stage = header.pop("stage", min(type(body).STAGES))
    return Message(_header(stage, sender=sender, **header), body)


def _envelope(
    signer: Identity,
    payload: bytes,
    *,
    sender: bytes | None = None,
    magic: bytes = MAGIC,
    version: int = CODEC_VERSION,
) -> bytes:
    """Build a signed envelope by hand, following the layout documented in codec.py."""
    name = signer.party_id.encode() if sender is None else sender
    signed = _PREFIX.pack(magic, version, len(name)) + name + _LENGTH.pack(len(payload)) + payload
    return signed + signer.sign(signing_input(signed))


def _payload_of(data: bytes) -> bytes:
    """The msgpack payload inside an encoded message."""
    sender_length = data[_PREFIX.size - 1]
    start = _PREFIX.size + sender_length + _LENGTH.size
    return data[start:-_SIGNATURE_SIZE]


def _valid_wire() -> list[Any]:
    """The decoded payload of a valid message: [header, type code, body]."""
    return msgpack.unpackb(_payload_of(ENCODED), raw=False)


MESSAGE = _message()
ENCODED = encode_message(CLIENT1, MESSAGE)


# ------------------------------------------------------------------ round trips


def test_samples_cover_every_body_type() -> None:
    assert set(SAMPLES) == set(BODY_TYPES)
    assert all(type(SAMPLES[kind]) is kind for kind in BODY_TYPES)


def test_body_type_codes_are_pinned() -> None:
    # The index in BODY_TYPES is the wire type code: reordering breaks compatibility.
    assert [kind.__name__ for kind in BODY_TYPES] == [
        "Hello", "KeygenStart", "PublicShare", "KeyDelivery", "KeyConfirm", "MaskStart",
        "SensitivityUpload", "Aggregate", "DecryptRequest", "DecryptionShare", "Fused",
        "MaskConfirm", "RoundStart", "UpdateUpload", "RoundDone", "Finished", "Abort",
    ]
    # Blind fusion replaced PartialShare, RecoveryRequest and RecoveryShare at codes 8-10
    # (and added Fused at 10): a peer of version 2 would misread them, so the version moved
    # (3); the manifest's fingerprint joined Hello and KeygenStart (4); uploads gained
    # part and parts, to stream over several messages (5); so did the joint decryption's
    # DecryptRequest, DecryptionShare and Fused (6).
    assert CODEC_VERSION == 6


def test_a_removed_type_code_is_not_read_as_its_successor() -> None:
    # A version-2 PartialShare body [on_behalf_of, vector_digest, sealed] under code 8,
    # now DecryptRequest (two fields): refused, not mistaken for a request.
    header = ["s", "client-1", "aggregator", int(Stage.ROUND), 1, 1, 1]
    payload = _packed([header, BODY_TYPES.index(DecryptRequest), ["client-2", D1, b"sealed"]])
    with pytest.raises(MalformedMessage, match="a DecryptRequest has the wrong number of fields"):
        decode_message(_envelope(CLIENT1, payload), DIRECTORY)


@pytest.mark.parametrize(("body_type", "stage"), CASES)
def test_round_trip_every_body_type_and_stage(body_type: type, stage: Stage) -> None:
    message = Message(_header(stage, recipient=BROADCAST), SAMPLES[body_type])
    data = encode_message(CLIENT1, message)
    decoded = decode_message(data, DIRECTORY)
    assert decoded == message
    assert type(decoded.body) is body_type
    assert decoded.kind == body_type.__name__
    assert decoded.header.step == (stage, 1, 2, 0)
    # Tuples stay tuples and enums stay enums (equality alone would not show a list).
    assert type(decoded.header.stage) is Stage
    for name, value in vars(decoded.body).items():
        assert type(value) is type(getattr(message.body, name))
    # The envelope layout documented in codec.py.
    assert data[:4] == MAGIC and data[4] == CODEC_VERSION
    assert data[5] == len(b"client-1") and data[6:14] == b"client-1"
    wire = msgpack.unpackb(_payload_of(data), raw=False)
    assert wire[1] == BODY_TYPES.index(body_type)
    # byte accounting reads the stage and round without the signature or the body
    assert peek_step(data) == (stage, 2, body_type.__name__, 1)


def test_peek_step_reads_a_large_message_and_refuses_what_is_not_one() -> None:
    big = Message(_header(Stage.ROUND, round=7), UpdateUpload(protected=(b"\x01" * 10**6,),
                                                             plain=b""))
    assert peek_step(encode_message(CLIENT1, big)) == (Stage.ROUND, 7, "UpdateUpload", 1)
    assert peek_step(ENCODED[:10]) is None and peek_step(b"junk" * 10) is None
    assert peek_step(_envelope(CLIENT1, msgpack.packb([["s", 1]]))) is None  # no header
    bad_stage = _valid_wire()
    bad_stage[0][3] = 99
    assert peek_step(_envelope(CLIENT1, msgpack.packb(bad_stage))) is None
    bad_epoch = _valid_wire()
    bad_epoch[0][_HEADER_FIELDS.index("epoch")] = -1
    assert peek_step(_envelope(CLIENT1, msgpack.packb(bad_epoch))) is None
    bad_code = _valid_wire()
    bad_code[1] = len(BODY_TYPES)
    assert peek_step(_envelope(CLIENT1, msgpack.packb(bad_code))) is None


def test_encoding_is_deterministic_and_matches_the_documented_layout() -> None:
    assert encode_message(CLIENT1, MESSAGE) == ENCODED
    # Rebuilding the envelope by hand from the payload gives the exact same bytes.
    assert _envelope(CLIENT1, _payload_of(ENCODED)) == ENCODED


def test_round_trip_at_field_limits() -> None:
    longest_id = "a" + "Z" * 63
    identity = Identity.from_seed(longest_id, SEED)
    header = Header("s" * 128, longest_id, "0", Stage.SETUP, 10**6, 10**6, 10**6)  # type: ignore[arg-type]
    message = Message(header, Hello(samples=2**63, manifest=D1))
    decoded = decode_message(encode_message(identity, message), {longest_id: identity.public})
    assert decoded == message
    abort = Message(_header(Stage.END), Abort(reason="x" * 2000))
    assert decode_message(encode_message(CLIENT1, abort), DIRECTORY) == abort


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_decode_accepts_bytes_like_input(kind: Callable[[bytes], Any]) -> None:
    decoded = decode_message(kind(ENCODED), DIRECTORY)
    assert decoded == MESSAGE
    assert type(decoded.raw) is bytes and decoded.raw == ENCODED


def test_a_decoded_message_keeps_its_signed_bytes_for_relays() -> None:
    decoded = decode_message(ENCODED, DIRECTORY)
    assert decoded.raw == ENCODED  # what the aggregator forwards, signature included
    assert MESSAGE.raw == b""  # built here: nothing to forward
    assert decoded == MESSAGE and hash(decoded) == hash(MESSAGE)  # raw is not content
    assert "raw" not in repr(decoded)


@settings(max_examples=60, deadline=None)
@given(
    session=st.text(min_size=1, max_size=128),
    recipient=st.sampled_from(["aggregator", "client-2", BROADCAST]),
    epoch=st.integers(0, 10**6),
    rnd=st.integers(0, 10**6),
    attempt=st.integers(0, 10**6),
    reason=st.text(min_size=1, max_size=2000),
    stage=st.sampled_from(list(Stage)),
)
def test_round_trip_property(
    session: str, recipient: str, epoch: int, rnd: int, attempt: int, reason: str, stage: Stage
) -> None:
    header = Header(session, "client-1", recipient, stage, epoch, rnd, attempt)  # type: ignore[arg-type]
    message = Message(header, Abort(reason=reason))
    assert decode_message(encode_message(CLIENT1, message), DIRECTORY) == message


# ----------------------------------------------------------- construction checks

BAD_BODIES: list[Any] = [
    pytest.param(lambda: Hello(samples="3", manifest=D1), "field 'samples' must be a non-negative",
                 id="str-int"),
    pytest.param(lambda: Hello(samples=-1, manifest=D1), "field 'samples' must be a non-negative",
                 id="neg"),
    pytest.param(lambda: Hello(samples=True, manifest=D1),
                 "field 'samples' must be a non-negative", id="bool"),
    pytest.param(lambda: Hello(samples=1.0, manifest=D1),
                 "field 'samples' must be a non-negative", id="float"),
    pytest.param(lambda: Hello(samples=2**63 + 1, manifest=D1), "field 'samples'",
                 id="int-too-big"),
    pytest.param(lambda: Hello(samples=1, manifest=D1[:16]),
                 "field 'manifest' must be a lowercase hex SHA-256 digest", id="short-fingerprint"),
    pytest.param(lambda: Hello(samples=1, manifest=D1.upper()),
                 "field 'manifest' must be a lowercase hex SHA-256 digest", id="upper-fingerprint"),
    pytest.param(lambda: KeygenStart(participants=("a",), threshold=1, manifest=b"\x00" * 32),
                 "field 'manifest' must be str", id="bytes-fingerprint"),
    pytest.param(lambda: PublicShare(key_frame="frame"), "field 'key_frame' must be bytes, got str",
                 id="str-bytes"),
    pytest.param(lambda: PublicShare(key_frame=bytearray(b"x")), "field 'key_frame' must be bytes",
                 id="bytearray"),
    pytest.param(lambda: SensitivityUpload(protected=[b"a"]),
                 "field 'protected' must be a sequence, got list", id="list-tuple"),
    pytest.param(lambda: SensitivityUpload(protected=(b"a", "b")),
                 "field 'protected' must be bytes, got str", id="tuple-item"),
    pytest.param(lambda: Aggregate(protected=(), plain=None), "field 'plain' must be bytes",
                 id="none-bytes"),
    pytest.param(lambda: KeyConfirm(key_id=D1.upper(), group_check=D2),
                 "field 'key_id' must be a lowercase hex SHA-256 digest", id="upper-digest"),
    pytest.param(lambda: KeyConfirm(key_id=D1, group_check=D2[:-1]),
                 "field 'group_check' must be a lowercase hex SHA-256 digest", id="short"),
    pytest.param(lambda: MaskStart(key_id=D1 + "0", group_check=D2, weight=0.5),
                 "field 'key_id' must be a lowercase hex SHA-256 digest", id="long-digest"),
    pytest.param(lambda: MaskStart(key_id=D1, group_check="g" * 64, weight=0.5),
                 "field 'group_check' must be a lowercase hex", id="non-hex"),
    pytest.param(lambda: MaskStart(key_id=D1, group_check=D2 + "\n", weight=0.5),
                 "field 'group_check' must be a lowercase hex", id="trailing-newline"),
    pytest.param(lambda: KeyConfirm(key_id=bytes.fromhex(D1), group_check=D2),
                 "field 'key_id' must be str, got bytes", id="bytes-digest"),
    pytest.param(lambda: RoundStart(key_id=D1, mask_digest="", group_check=D3, weight=0.5),
                 "field 'mask_digest' must be a lowercase hex", id="empty-digest"),
    pytest.param(lambda: RoundStart(key_id=D1, mask_digest=D2, group_check=D3, weight=1),
                 "field 'weight' must be a finite float, got 1", id="int-weight"),
    pytest.param(lambda: RoundStart(key_id=D1, mask_digest=D2, group_check=D3,
                                    weight=float("nan")),
                 "field 'weight' must be a finite float", id="nan-weight"),
    pytest.param(lambda: MaskStart(key_id=D1, group_check=D2, weight=0.0),
                 "field 'weight' must be in (0, 1], got 0.0", id="zero-weight"),
    pytest.param(lambda: MaskStart(key_id=D1, group_check=D2, weight=1.5),
                 "field 'weight' must be in (0, 1], got 1.5", id="big-weight"),
    pytest.param(lambda: RoundDone(model_check=" " + D1[1:]),
                 "field 'model_check' must be a lowercase hex", id="space-digest"),
    pytest.param(lambda: MaskConfirm(mask_bits=b"", digest="x"),
                 "field 'digest' must be a lowercase hex", id="mask-digest"),
    pytest.param(lambda: DecryptionShare(members=SET, c1_digest=D1[:63] + "G", shares=()),
                 "field 'c1_digest' must be a lowercase hex", id="share-c1-digest"),
    pytest.param(lambda: DecryptionShare(members=SET, c1_digest=D1.upper(), shares=()),
                 "field 'c1_digest' must be a lowercase hex", id="share-upper-digest"),
    pytest.param(lambda: DecryptionShare(members=SET, c1_digest="", shares=()),
                 "field 'c1_digest' must be a lowercase hex", id="share-empty-digest"),
    pytest.param(lambda: Fused(members=SET, c1_digest=D1 + "0", fused=(), plain=b""),
                 "field 'c1_digest' must be a lowercase hex", id="fused-long-digest"),
    pytest.param(lambda: Fused(members=SET, c1_digest=bytes.fromhex(D1), fused=(), plain=b""),
                 "field 'c1_digest' must be str, got bytes", id="fused-bytes-digest"),
    pytest.param(lambda: DecryptRequest(members=SET, c1=[b"c1"]),
                 "field 'c1' must be a sequence, got list", id="c1-list"),
    pytest.param(lambda: DecryptRequest(members=SET, c1=(b"c1", "c1")),
                 "field 'c1' must be bytes, got str", id="c1-item"),
    pytest.param(lambda: DecryptionShare(members=SET, c1_digest=D1, shares=(None,)),
                 "field 'shares' must be bytes, got NoneType", id="shares-item"),
    pytest.param(lambda: Fused(members=SET, c1_digest=D1, fused=(), plain=None),
                 "field 'plain' must be bytes, got NoneType", id="fused-plain"),
    pytest.param(lambda: DecryptRequest(members=list(SET), c1=()),
                 "field 'members' must be a sequence, got list", id="members-list"),
    pytest.param(lambda: DecryptRequest(members="client-1", c1=()),
                 "field 'members' must be a sequence, got str", id="members-str"),
    *(
        pytest.param(build, "the decryption set must be a non-empty, sorted list without "
                            "repeats", id=f"{name}-{case}")
        for name, make in (
            ("request", lambda members: DecryptRequest(members=members, c1=(b"c1",))),
            ("share", lambda members: DecryptionShare(members=members, c1_digest=D1,
                                                      shares=(b"share",))),
            ("fused", lambda members: Fused(members=members, c1_digest=D1, fused=(b"f",),
                                            plain=b"")),
        )
        for case, members in (
            ("unsorted", ("client-2", "client-1")),
            ("repeat", ("client-1", "client-1", "client-2")),
            ("empty", ()),
        )
        for build in [functools.partial(make, members)]
    ),
    pytest.param(lambda: KeygenStart(participants=("client-2", "client-1"), threshold=2,
                                     manifest=D1),
                 "participants must be a non-empty, sorted list without repeats", id="unsorted"),
    pytest.param(lambda: KeygenStart(participants=("client-1", "client-1"), threshold=2,
                                     manifest=D1),
                 "participants must be a non-empty, sorted list without repeats", id="repeat"),
    pytest.param(lambda: KeygenStart(participants=(), threshold=1, manifest=D1),
                 "participants must be a non-empty, sorted list without repeats", id="empty"),
    pytest.param(lambda: KeygenStart(participants=("a",), threshold="1", manifest=D1),
                 "field 'threshold' must be a non-negative integer", id="threshold-str"),
    pytest.param(lambda: Abort(reason=""), "an abort reason must have 1 to 2000 characters",
                 id="empty-reason"),
    pytest.param(lambda: Abort(reason="x" * 2001), "an abort reason must have 1 to 2000",
                 id="long-reason"),
    pytest.param(lambda: Abort(reason=None), "field 'reason' must be str, got NoneType",
                 id="none-reason"),
    pytest.param(lambda: Finished(rounds=-3), "field 'rounds' must be a non-negative",
                 id="neg-rounds"),
]


@pytest.mark.parametrize(("build", "problem"), BAD_BODIES)
def test_invalid_bodies_are_malformed(build: Callable[[], Any], problem: str) -> None:
    with pytest.raises(MalformedMessage, match=re.escape(problem)):
        build()


BAD_HEADERS: list[Any] = [
    pytest.param({"session": ""}, "the session id must have 1 to 128 characters", id="empty"),
    pytest.param({"session": "s" * 129}, "the session id must have 1 to 128", id="long-session"),
    pytest.param({"session": 7}, "field 'session' must be str, got int", id="int-session"),
    pytest.param({"stage": 3}, "field 'stage' must be a Stage, got 3", id="int-stage"),
    pytest.param({"epoch": -1}, "field 'epoch' must be a non-negative integer", id="neg-epoch"),
    pytest.param({"round": 10**6 + 1}, "round, epoch or attempt is implausibly large",
                 id="big-round"),
    pytest.param({"epoch": 10**6 + 1}, "implausibly large", id="big-epoch"),
    pytest.param({"attempt": "0"}, "field 'attempt' must be a non-negative", id="str-attempt"),
    pytest.param({"attempt": False}, "field 'attempt' must be a non-negative", id="bool-attempt"),
]


@pytest.mark.parametrize(("change", "problem"), BAD_HEADERS)
def test_invalid_headers_are_malformed(change: dict[str, Any], problem: str) -> None:
    values: dict[str, Any] = {
        "session": "s", "sender": "client-1", "recipient": "aggregator", "stage": Stage.ROUND,
        "epoch": 0, "round": 0, "attempt": 0,
    }
    values.update(change)
    with pytest.raises(MalformedMessage, match=re.escape(problem)):
        Header(**values)


DISALLOWED = [
    pytest.param(body_type, stage, id=f"{body_type.__name__}-{stage.name}")
    for body_type in BODY_TYPES
    for stage in Stage
    if stage not in body_type.STAGES
]


def test_some_stages_are_disallowed() -> None:
    assert len(DISALLOWED) > 30  # only Finished and Abort may belong to every stage


@pytest.mark.parametrize(("body_type", "stage"), DISALLOWED)
def test_stage_not_allowed_for_body_type(body_type: type, stage: Stage) -> None:
    problem = f"a {body_type.__name__} cannot belong to stage {stage.name}"
    with pytest.raises(MalformedMessage, match=re.escape(problem)):
        Message(_header(stage), SAMPLES[body_type])


BAD_PARTY_IDS = ["", "bad id", "-leading-dash", "a" * 65, "ünï", "a/b", "a\n"]

BAD_PARTY_FIELDS: list[Any] = [
    pytest.param(lambda bad: _header(sender=bad), id="sender"),
    pytest.param(lambda bad: _header(recipient=bad), id="recipient"),
    # A bad id anywhere in a decryption set, first, middle or alone, is refused.
    pytest.param(lambda bad: DecryptRequest(members=(bad,), c1=()), id="request-members"),
    pytest.param(lambda bad: DecryptionShare(members=("0", bad, "zz"), c1_digest=D1,
                                             shares=()), id="share-members"),
    pytest.param(lambda bad: Fused(members=("0", bad), c1_digest=D1, fused=(), plain=b""),
                 id="fused-members"),
    pytest.param(lambda bad: KeygenStart(participants=(bad,), threshold=1, manifest=D1),
                 id="participants"),
]


@pytest.mark.parametrize("bad", BAD_PARTY_IDS)
@pytest.mark.parametrize("build", BAD_PARTY_FIELDS)
def test_bad_party_ids_are_refused(build: Callable[[str], Any], bad: str) -> None:
    # Refused with a library error naming the offending id (see the strict test below).
    with pytest.raises(ThresholdFLError, match="invalid party id"):
        build(bad)


@pytest.mark.parametrize("build", BAD_PARTY_FIELDS)
def test_bad_party_ids_are_malformed(build: Callable[[str], Any]) -> None:
    with pytest.raises(MalformedMessage, match="invalid party id"):
        build("bad id")


@pytest.mark.parametrize("recipient", ["**", "", " *", "*client"])
def test_bad_recipient_is_refused(recipient: str) -> None:
    with pytest.raises(ThresholdFLError, match="invalid party id"):
        _header(recipient=recipient)


def test_recipient_is_type_checked() -> None:
    with pytest.raises(MalformedMessage, match="field 'recipient' must be str, got int"):
        _header(recipient=5)  # type: ignore[arg-type]


# ------------------------------------------------------- encoding-side checks


def test_encoding_with_an_identity_that_is_not_the_sender_is_refused() -> None:
    with pytest.raises(ParameterError, match="'client-2' cannot sign a message whose sender "
                                             "is 'client-1'"):
        encode_message(CLIENT2, MESSAGE)


def test_unencodable_text_is_refused_at_construction() -> None:
    with pytest.raises(MalformedMessage):
        message = Message(_header(Stage.END), Abort(reason="\ud800"))
        encode_message(CLIENT1, message)


# ------------------------------------------------------ authentication & framing


def test_unknown_sender_is_forged() -> None:
    directory = {pid: key for pid, key in DIRECTORY.items() if pid != "client-1"}
    with pytest.raises(ForgedMessage, match="message from 'client-1', who is not in the manifest"):
        decode_message(ENCODED, directory)


def test_outsider_is_forged() -> None:
    data = encode_message(OUTSIDER, _message(sender="outsider"))
    with pytest.raises(ForgedMessage, match="'outsider', who is not in the manifest"):
        decode_message(data, DIRECTORY)


def test_impostor_with_a_known_name_is_forged() -> None:
    impostor = Identity.from_seed("client-1", b"\x42" * 32)  # same id, other keys
    data = encode_message(impostor, MESSAGE)
    with pytest.raises(ForgedMessage, match="bad signature on a message claiming to be from "
                                            "'client-1'"):
        decode_message(data, DIRECTORY)


def test_signature_by_another_known_party_is_forged() -> None:
    # Envelope names client-1 but client-2 signed it.
    signed = ENCODED[:-_SIGNATURE_SIZE]
    data = signed + CLIENT2.sign(signing_input(signed))
    with pytest.raises(ForgedMessage, match="bad signature"):
        decode_message(data, DIRECTORY)


def test_resigned_by_another_party_is_forged() -> None:
    # client-2 re-wraps client-1's payload in its own, validly signed envelope.
    data = _envelope(CLIENT2, _payload_of(ENCODED))
    with pytest.raises(ForgedMessage, match=re.escape(
            "signed by 'client-2' but the message claims sender 'client-1'")):
        decode_message(data, DIRECTORY)


def test_signature_without_domain_label_is_forged() -> None:
    signed = ENCODED[:-_SIGNATURE_SIZE]
    data = signed + CLIENT1.sign(signed)  # same key, but no domain separation
    with pytest.raises(ForgedMessage, match="bad signature"):
        decode_message(data, DIRECTORY)


def _flip_positions(size: int) -> list[int]:
    return sorted(set(range(0, size, 7)) | set(range(70)) | set(range(size - 70, size)))


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_flip_is_rejected(mask: int) -> None:
    sender_end = _PREFIX.size + len("client-1")
    positions = _flip_positions(len(ENCODED))
    assert len(positions) > 150 and positions[-1] == len(ENCODED) - 1
    for position in positions:
        data = bytearray(ENCODED)
        data[position] ^= mask
        with pytest.raises(MessageRejected) as caught:
            decode_message(bytes(data), DIRECTORY)
        assert isinstance(caught.value, ForgedMessage | MalformedMessage), position
        if sender_end + _LENGTH.size <= position:
            # Payload and signature: the framing is intact, so the signature must fail.
            assert isinstance(caught.value, ForgedMessage), position


def test_every_truncation_is_rejected() -> None:
    for length in range(len(ENCODED)):
        with pytest.raises(MalformedMessage, match=r"truncated|length does not match"):
            decode_message(ENCODED[:length], DIRECTORY)


@pytest.mark.parametrize("extra", [b"\x00", b"x" * 64])
def test_trailing_bytes_are_rejected(extra: bytes) -> None:
    with pytest.raises(MalformedMessage, match="length does not match its header"):
        decode_message(ENCODED + extra, DIRECTORY)


@pytest.mark.parametrize("magic", [b"TFLX", b"\x00\x00\x00\x00", b"tflm"])
def test_wrong_magic_is_malformed(magic: bytes) -> None:
    data = _envelope(CLIENT1, _payload_of(ENCODED), magic=magic)
    with pytest.raises(MalformedMessage, match="not a threshold-fl message \\(bad magic\\)"):
        decode_message(data, DIRECTORY)


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, CODEC_VERSION + 1, 255])
def test_wrong_version_is_malformed(version: int) -> None:
    data = _envelope(CLIENT1, _payload_of(ENCODED), version=version)
    with pytest.raises(MalformedMessage, match=f"message codec version {version}, this build "
                                               f"speaks {CODEC_VERSION}; upgrade"):
        decode_message(data, DIRECTORY)


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="a message must be bytes, got str"):
        decode_message(ENCODED.decode("latin-1"), DIRECTORY)  # type: ignore[arg-type]


def test_undecodable_sender_is_malformed() -> None:
    data = _envelope(CLIENT1, _payload_of(ENCODED), sender=b"\xff\xfe")
    with pytest.raises(MalformedMessage, match="the message header is corrupt"):
        decode_message(data, DIRECTORY)


def test_empty_sender_is_forged() -> None:
    data = _envelope(CLIENT1, _payload_of(ENCODED), sender=b"")
    with pytest.raises(ForgedMessage, match="message from '', who is not in the manifest"):
        decode_message(data, DIRECTORY)


def test_sender_length_past_the_end_is_malformed() -> None:
    data = _PREFIX.pack(MAGIC, CODEC_VERSION, 255) + b"c" * (_LENGTH.size + _SIGNATURE_SIZE)
    with pytest.raises(MalformedMessage, match=r"header is corrupt|length does not match"):
        decode_message(data, DIRECTORY)


def test_payload_length_mismatch_is_malformed() -> None:
    prefix_end = _PREFIX.size + len("client-1")
    (length,) = _LENGTH.unpack_from(ENCODED, prefix_end)
    for wrong in (length - 1, length + 1, 2**64 - 1):
        data = ENCODED[:prefix_end] + _LENGTH.pack(wrong) + ENCODED[prefix_end + _LENGTH.size:]
        with pytest.raises(MalformedMessage, match="length does not match its header"):
            decode_message(data, DIRECTORY)


# --------------------------------------- validly signed but malformed payloads


def _with(index: int, value: Any) -> list[Any]:
    wire = _valid_wire()
    wire[index] = value
    return wire


def _with_header(field: int, value: Any) -> list[Any]:
    wire = _valid_wire()
    wire[0][field] = value
    return wire


def _packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


HELLO_HEADER = ["s", "client-1", "aggregator", int(Stage.SETUP), 0, 0, 0]
ROUND_HEADER = ["s", "client-1", "aggregator", int(Stage.ROUND), 1, 1, 1]

BAD_PAYLOADS: list[Any] = [
    pytest.param(b"", "does not parse", id="empty"),
    pytest.param(b"\xc1", "does not parse", id="reserved-byte"),
    pytest.param(b"\x93\x01", "does not parse", id="truncated-msgpack"),
    pytest.param(_packed([[], 0, []]) + b"\x00", "does not parse", id="extra-data"),
    pytest.param(_packed({1: 2}), "does not parse", id="int-map-key"),
    pytest.param(b"\xa2\xff\xfe", "does not parse", id="bad-utf8-str"),
    pytest.param(b"\x91" * 5000 + b"\xc0", "does not parse", id="deeply-nested"),
    pytest.param(_packed({"header": 1}), "the message payload has the wrong shape", id="map"),
    pytest.param(_packed(b"raw"), "the message payload has the wrong shape", id="bytes"),
    pytest.param(_packed([HELLO_HEADER, 0]), "wrong shape", id="two-items"),
    pytest.param(_packed([HELLO_HEADER, 0, [1], []]), "wrong shape", id="four-items"),
    pytest.param(_packed([HELLO_HEADER, len(BODY_TYPES), [1]]),
                 f"unknown message type code {len(BODY_TYPES)}", id="code-too-big"),
    pytest.param(_packed([HELLO_HEADER, -1, [1]]), "unknown message type code -1", id="code-neg"),
    pytest.param(_packed([HELLO_HEADER, "0", [1]]), "unknown message type code '0'",
                 id="code-str"),
    pytest.param(_packed([HELLO_HEADER, 0.0, [1]]), "unknown message type code 0.0",
                 id="code-float"),
    pytest.param(_packed([HELLO_HEADER[:6], 0, [1]]), "a Header has the wrong number of fields",
                 id="header-short"),
    pytest.param(_packed([[*HELLO_HEADER, 0], 0, [1]]), "a Header has the wrong number of fields",
                 id="header-long"),
    pytest.param(_packed([{"session": "s"}, 0, [1]]), "a Header has the wrong number of fields",
                 id="header-map"),
    pytest.param(_packed([HELLO_HEADER, 0, []]), "a Hello has the wrong number of fields",
                 id="body-short"),
    pytest.param(_packed([HELLO_HEADER, 0, [1, D1, 2]]), "a Hello has the wrong number of fields",
                 id="body-long"),
    # A version-3 Hello had no manifest fingerprint (the codec version moved with it).
    pytest.param(_packed([HELLO_HEADER, 0, [7]]), "a Hello has the wrong number of fields",
                 id="hello-without-fingerprint"),
    pytest.param(_packed([HELLO_HEADER, 0, b"\x01"]), "a Hello has the wrong number of fields",
                 id="body-bytes"),
    pytest.param(_packed([HELLO_HEADER, 0, ["1", D1]]), "field 'samples' must be a non-negative",
                 id="body-type"),
    pytest.param(_packed([["s", "client-1", "aggregator", 9, 0, 0, 0], 0, [1]]),
                 "unknown stage 9", id="unknown-stage"),
    pytest.param(_packed([["s", "client-1", "aggregator", "SETUP", 0, 0, 0], 0, [1]]),
                 "the stage must be an integer, got 'SETUP'", id="stage-name"),
    pytest.param(_packed([["s", "client-1", "aggregator", None, 0, 0, 0], 0, [1]]),
                 "the stage must be an integer, got None", id="stage-none"),
    pytest.param(_packed([["s", "client-1", "bad id", 0, 0, 0, 0], 0, [1]]),
                 "field 'recipient': invalid party id 'bad id'", id="bad-recipient"),
    pytest.param(_packed([["", "client-1", "aggregator", 0, 0, 0, 0], 0, [1]]),
                 "the session id must have 1 to 128 characters", id="empty-session"),
    pytest.param(_packed([HELLO_HEADER, BODY_TYPES.index(KeyConfirm), [D1, D2]]),
                 "a KeyConfirm cannot belong to stage SETUP", id="stage-not-allowed"),
    pytest.param(_packed([HELLO_HEADER, BODY_TYPES.index(Abort), [""]]),
                 "an abort reason must have 1 to 2000 characters", id="empty-reason"),
    pytest.param(_packed([HELLO_HEADER, BODY_TYPES.index(Abort), [b"bytes"]]),
                 "field 'reason' must be str, got bytes", id="reason-bytes"),
    pytest.param(_packed([["s", "client-1", "*", 1, 0, 0, 0], BODY_TYPES.index(KeygenStart),
                          [["client-2", "client-1"], 2, D1]]),
                 "participants must be a non-empty, sorted list", id="unsorted-participants"),
    pytest.param(_packed([["s", "client-1", "*", 1, 0, 0, 0], BODY_TYPES.index(KeygenStart),
                          [["client-1", "bad id"], 2, D1]]),
                 "field 'participants': invalid party id", id="bad-participant"),
    pytest.param(_packed([["s", "client-1", "*", 1, 0, 0, 0], BODY_TYPES.index(KeygenStart),
                          ["client-1", 2, D1]]),
                 "field 'participants' must be a sequence, got str", id="participants-str"),
    pytest.param(_packed([["s", "client-1", "*", 1, 0, 0, 0], BODY_TYPES.index(KeyConfirm),
                          [D1.upper(), D2]]),
                 "field 'key_id' must be a lowercase hex SHA-256 digest", id="bad-digest"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(DecryptRequest),
                          [["client-2", "client-1"], [b"c1"], 0, 1]]),
                 "the decryption set must be a non-empty, sorted list", id="unsorted-members"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(DecryptionShare),
                          [["client-1", "client-1"], D1, [b"s"], 0, 1]]),
                 "the decryption set must be a non-empty, sorted list", id="repeated-member"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(Fused), [[], D1, [b"f"], b"", 0, 1]]),
                 "the decryption set must be a non-empty, sorted list", id="empty-members"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(Fused),
                          [["client-1", "bad id"], D1, [b"f"], b"", 0, 1]]),
                 "field 'members': invalid party id", id="bad-member"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(DecryptionShare),
                          [["client-1"], D1[:-1], [b"s"], 0, 1]]),
                 "field 'c1_digest' must be a lowercase hex SHA-256 digest", id="short-c1-digest"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(DecryptRequest),
                          ["client-1", [b"c"], 0, 1]]),
                 "field 'members' must be a sequence, got str", id="members-str"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(DecryptRequest),
                          [["client-1"], [b"c"], 3, 3]]),
                 "decryption part 3 is out of range: the decryption has 3 parts",
                 id="decryption-part-out-of-range"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(Fused),
                          [["client-1"], D1, [b"f"], b"", 0, 0]]),
                 "a decryption must come in 1 to 100000 parts, got 0", id="fused-no-parts"),
    pytest.param(_packed([ROUND_HEADER, BODY_TYPES.index(DecryptionShare),
                          [["client-1"], D1, [b"s"], -1, 2]]),
                 "field 'part' must be a non-negative integer", id="share-negative-part"),
    pytest.param(_packed([HELLO_HEADER, BODY_TYPES.index(DecryptionShare),
                          [["client-1"], D1, [b"s"], 0, 1]]),
                 "a DecryptionShare cannot belong to stage SETUP", id="share-in-setup"),
]


@pytest.mark.parametrize(("payload", "problem"), BAD_PAYLOADS)
def test_signed_but_malformed_payload(payload: bytes, problem: str) -> None:
    data = _envelope(CLIENT1, payload)
    with pytest.raises(MalformedMessage, match=re.escape(problem)):
        decode_message(data, DIRECTORY)


def test_valid_hand_built_payload_decodes() -> None:
    # Control for the cases above: the same construction with a good payload works.
    data = _envelope(CLIENT1, _packed([HELLO_HEADER, 0, [7, D1]]))
    message = decode_message(data, DIRECTORY)
    assert message == Message(Header("s", "client-1", "aggregator", Stage.SETUP, 0, 0, 0),  # type: ignore[arg-type]
                              Hello(samples=7, manifest=D1))


@pytest.mark.parametrize(("field", "value", "problem"), [
    (0, 5, "field 'session' must be str"),
    (1, "client-2", "signed by 'client-1' but the message claims sender 'client-2'"),
    (1, "bad id", "invalid party id"),
    (3, 7, "unknown stage 7"),
    (4, -1, "field 'epoch' must be a non-negative integer"),
    (5, 10**6 + 1, "implausibly large"),
    (6, 1.5, "field 'attempt' must be a non-negative integer"),
])
def test_signed_payload_with_bad_header_field(field: int, value: Any, problem: str) -> None:
    data = _envelope(CLIENT1, _packed(_with_header(field, value)))
    with pytest.raises(MessageRejected, match=re.escape(problem)) as caught:
        decode_message(data, DIRECTORY)
    expected = ForgedMessage if problem.startswith("signed by") else MalformedMessage
    assert isinstance(caught.value, expected)


@pytest.mark.parametrize(("code", "problem"), [
    (BODY_TYPES.index(Hello), "a Hello has the wrong number of fields"),
    (BODY_TYPES.index(RoundStart), "field 'key_id' must be str, got list"),  # wrong types
    (BODY_TYPES.index(Finished), "a Finished has the wrong number of fields"),
    (BODY_TYPES.index(Fused), "a Fused has the wrong number of fields"),
    (BODY_TYPES.index(DecryptRequest), "field 'members': invalid party id"),  # bytes, not ids
    (BODY_TYPES.index(Abort), "Abort has the wrong number of fields"),
])
def test_signed_payload_with_wrong_type_code(code: int, problem: str) -> None:
    # The UpdateUpload body [protected, plain, part, parts] under another type code.
    data = _envelope(CLIENT1, _packed(_with(1, code)))
    with pytest.raises(MalformedMessage, match=re.escape(problem)):
        decode_message(data, DIRECTORY)


def test_type_code_alone_decides_the_body_type() -> None:
    # PublicShare and KeyDelivery share a shape; the signed type code tells them apart.
    shared = _message(PublicShare(key_frame=b"frame"), stage=Stage.KEYS)
    wire = msgpack.unpackb(_payload_of(encode_message(CLIENT1, shared)), raw=False)
    wire[1] = BODY_TYPES.index(KeyDelivery)
    decoded = decode_message(_envelope(CLIENT1, _packed(wire)), DIRECTORY)
    assert decoded.body == KeyDelivery(sealed=b"frame")
    assert decoded.header == shared.header


# ------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(MessageRejected):
        decode_message(data, DIRECTORY)


@settings(max_examples=200, deadline=None)
@given(rest=st.binary(max_size=2000))
def test_arbitrary_bytes_after_a_valid_prefix_are_rejected(rest: bytes) -> None:
    prefix = ENCODED[: _PREFIX.size + len("client-1")]
    with pytest.raises(MessageRejected):
        decode_message(prefix + rest, DIRECTORY)


@st.composite
def _mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(ENCODED)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "append"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "replace" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and data:
            del data[position : position + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[position:]
        else:
            data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(data=_mutations())
def test_mutated_messages_are_rejected(data: bytes) -> None:
    if data == ENCODED:  # the mutations happened to cancel out
        assert decode_message(data, DIRECTORY) == MESSAGE
        return
    with pytest.raises(MessageRejected):
        decode_message(data, DIRECTORY)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=10,
)
_headers = st.lists(_values, min_size=7, max_size=7) | st.builds(
    lambda stage, numbers: ["s", "client-1", "*", stage, *numbers],
    st.integers(-1, 6) | _scalars,
    st.lists(st.integers(-1, 10**6 + 1) | _scalars, min_size=3, max_size=3),
)
_payloads = _values | st.tuples(
    _headers, st.integers(-1, len(BODY_TYPES)) | _scalars, st.lists(_values, max_size=4)
).map(list)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payloads)
def test_signed_arbitrary_payloads_decode_or_are_malformed(payload: Any) -> None:
    # Signed by a known party, so the parser itself is exercised: it may accept a
    # well-formed message, but must never raise anything but MessageRejected.
    data = _envelope(CLIENT1, _packed(payload))
    try:
        message = decode_message(data, DIRECTORY)
    except MessageRejected:
        return
    assert isinstance(message, Message)
    assert message.header.sender == "client-1"


def test_length_prefix_is_big_endian() -> None:
    start = _PREFIX.size + len("client-1")
    (length,) = struct.unpack(">Q", ENCODED[start : start + 8])
    assert length == len(_payload_of(ENCODED)) == len(ENCODED) - start - 8 - _SIGNATURE_SIZE
