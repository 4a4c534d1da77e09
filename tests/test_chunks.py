"""Sans-I/O chunking: round trips, and every way a frame can be rejected (no broker)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import struct
from collections.abc import Callable

import pytest
from mqtt_fixtures import Keyring, rechunk

from threshold_fl.errors import AuthenticationError, FrameError, ParameterError
from transports.chunks import Reassembler, ReassemblyLimits
from transports.frames import (
    CHUNK_HEADER_SIZE,
    DEFAULT_CHUNK_SIZE,
    MANIFEST_SEQ,
    MAX_CHUNK_SIZE,
    ChunkPlan,
    Transfer,
    decode_ack,
    decode_transfer_manifest,
    encode_ack,
    split,
    validate_id,
)

MiB = 1 << 20
KEYS = Keyring("alice", "bob", "mallory")


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def make(payload: bytes, n: int = 1, *, sender: str = "alice", recipient: str = "bob",
         channel: str = "s1", chunk_size: int = DEFAULT_CHUNK_SIZE) -> Transfer:
    return split(payload, sender=sender, recipient=recipient, channel=channel,
                 transfer_id=tid(n), sign=KEYS.signer(sender), chunk_size=chunk_size)


def receiver(limits: ReassemblyLimits | None = None) -> Reassembler:
    return Reassembler("bob", "s1", KEYS.verify, limits)


def feed_all(r: Reassembler, t: Transfer, now: float = 0.0) -> bytes | None:
    r.accept(t.manifest, now)
    result = None
    for seq in range(t.count):
        result = r.accept(t.chunk(seq), now).payload
    return result


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 12345])
def test_round_trip(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    t = make(payload)
    assert t.count == max(1, -(-size // MiB))
    r = receiver()
    got = r.accept(t.manifest, 0.0)
    assert (got.sender, got.seq, got.payload) == ("alice", MANIFEST_SEQ, None)
    assert decode_ack(got.ack) == (tid(1), MANIFEST_SEQ, False)
    for seq in range(t.count):
        got = r.accept(t.chunk(seq), 0.0)
        assert decode_ack(got.ack) == (tid(1), seq, False)
    assert got.payload == payload
    assert r.in_progress == 0 and r.buffered_bytes == 0


def test_out_of_order_and_duplicate_chunks_deliver_once() -> None:
    payload = random.Random(1).randbytes(4 * MiB + 7)
    t = make(payload, chunk_size=2 * MiB)
    r = receiver()
    r.accept(t.manifest, 0.0)
    order = [2, 0, 0, 1]
    results = [r.accept(t.chunk(seq), 0.0) for seq in order]
    assert [x.duplicate for x in results] == [False, False, True, False]
    assert [x.payload for x in results[:-1]] == [None, None, None]
    assert results[-1].payload == payload
    # Retransmissions after completion (their acks were lost) are re-acked, not delivered.
    again = r.accept(t.chunk(1), 1.0)
    assert again.duplicate and again.payload is None and again.sender == "alice"
    assert r.accept(t.manifest, 1.0).duplicate


def test_one_plan_serves_several_recipients() -> None:
    plan = ChunkPlan.of(b"broadcast" * 1000)
    for n, recipient in enumerate(["bob", "carol"]):
        t = plan.transfer(sender="alice", recipient=recipient, channel="s1",
                          transfer_id=tid(n), sign=KEYS.signer("alice"))
        r = Reassembler(recipient, "s1", KEYS.verify)
        assert feed_all(r, t) == b"broadcast" * 1000


# ------------------------------------------------------------------ rejections


def test_chunk_before_its_manifest_is_unknown() -> None:
    t = make(b"x" * 10)
    r = receiver()
    with pytest.raises(FrameError, match=r"unknown transfer"):
        r.accept(t.chunk(0), 0.0)
    assert feed_all(r, t) == b"x" * 10  # the manifest, then the resent chunk: fine


def test_bad_signature_is_rejected_and_nothing_is_kept() -> None:
    t = make(b"payload")
    forged = t.manifest[:-1] + bytes([t.manifest[-1] ^ 1])
    r = receiver()
    with pytest.raises(AuthenticationError, match=r"bad signature.*'alice'"):
        r.accept(forged, 0.0)
    assert r.in_progress == 0
    with pytest.raises(FrameError, match=r"unknown transfer"):
        r.accept(t.chunk(0), 0.0)


def test_manifest_signed_by_someone_else_is_rejected() -> None:
    # mallory signs a manifest that claims to come from alice
    t = split(b"evil", sender="alice", recipient="bob", channel="s1", transfer_id=tid(9),
              sign=KEYS.signer("mallory"))
    with pytest.raises(AuthenticationError, match=r"bad signature"):
        receiver().accept(t.manifest, 0.0)


def test_verifier_that_raises_counts_as_failed() -> None:
    def verify(sender: str, data: bytes, signature: bytes) -> bool:
        raise KeyError(sender)

    r = Reassembler("bob", "s1", verify)
    with pytest.raises(AuthenticationError, match=r"KeyError"):
        r.accept(make(b"x").manifest, 0.0)


def test_tampered_chunk_is_rejected_then_the_genuine_one_completes() -> None:
    payload = random.Random(2).randbytes(2 * MiB + 5)
    t = make(payload)
    r = receiver()
    r.accept(t.manifest, 0.0)
    genuine = t.chunk(1)
    flipped = bytearray(genuine)
    flipped[-1] ^= 0xFF
    with pytest.raises(FrameError, match=r"digest mismatch.*header digest"):
        r.accept(bytes(flipped), 0.0)  # data changed, header digest not
    with pytest.raises(FrameError, match=r"digest mismatch.*signed manifest"):
        r.accept(rechunk(genuine, data=bytes(flipped[CHUNK_HEADER_SIZE:])), 0.0)
    r.accept(t.chunk(0), 0.0)
    r.accept(t.chunk(2), 0.0)
    assert r.accept(genuine, 0.0).payload == payload


def test_chunk_replayed_into_another_transfer_is_rejected() -> None:
    first, second = make(b"A" * MiB * 2, 1), make(b"B" * MiB * 2, 2)
    r = receiver()
    assert feed_all(r, first) == b"A" * MiB * 2
    r.accept(second.manifest, 0.0)
    spliced = rechunk(first.chunk(0), transfer_id=tid(2))
    with pytest.raises(FrameError, match=r"signed manifest.*another transfer"):
        r.accept(spliced, 0.0)
    # An old transfer nobody announced (another session, expired): unknown.
    with pytest.raises(FrameError, match=r"unknown transfer"):
        r.accept(rechunk(first.chunk(0), transfer_id=tid(77)), 0.0)
    r.accept(second.chunk(0), 0.0)
    assert r.accept(second.chunk(1), 0.0).payload == b"B" * MiB * 2


def test_manifest_replayed_to_another_party_or_session_is_rejected() -> None:
    to_carol = make(b"x", recipient="carol")
    other_session = make(b"x", channel="s2")
    for frame in (to_carol.manifest, other_session.manifest):
        with pytest.raises(FrameError, match=r"misaddressed"):
            receiver().accept(frame, 0.0)


def test_conflicting_manifest_for_a_known_transfer() -> None:
    r = receiver()
    r.accept(make(b"one", 5).manifest, 0.0)
    with pytest.raises(FrameError, match=r"conflicting manifest"):
        r.accept(make(b"two", 5).manifest, 0.0)


@pytest.mark.parametrize("kind", ["manifest", "chunk"])
def test_every_truncation_is_a_clear_frame_error(kind: str) -> None:
    t = make(b"0123456789")
    frame = t.manifest if kind == "manifest" else t.chunk(0)
    limit = len(frame) if kind == "manifest" else CHUNK_HEADER_SIZE
    r = receiver()
    for cut in range(limit):
        with pytest.raises(FrameError, match=r"truncated|bad length|bad manifest"):
            r.accept(frame[:cut], 0.0)
    assert feed_all(r, t) == b"0123456789"  # nothing was disturbed


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: b"XXXX" + f[4:], "bad magic"),
        (lambda f: f[:4] + b"\x09" + f[5:], "bad version"),
        (lambda f: f[:5] + b"\x07" + f[6:], "unknown kind"),
        (lambda f: f + b"\x00", "trailing bytes"),
    ],
)
def test_malformed_manifests(mutate: Callable[[bytes], bytes], reason: str) -> None:
    frame = make(b"data").manifest
    with pytest.raises(FrameError, match=reason):
        receiver().accept(mutate(frame), 0.0)


def test_chunk_with_wrong_length_or_header_is_rejected() -> None:
    t = make(b"z" * (MiB + 10))
    r = receiver()
    r.accept(t.manifest, 0.0)
    with pytest.raises(FrameError, match=r"bad length"):
        r.accept(rechunk(t.chunk(1), data=b"z" * 9), 0.0)
    c = t.chunk(0)
    lying = c[:22] + struct.pack(">I", 0) + struct.pack(">I", 5) + c[30:]  # count 5, not 2
    with pytest.raises(FrameError, match=r"inconsistent header"):
        r.accept(lying, 0.0)


def test_ack_frames() -> None:
    assert decode_ack(encode_ack(tid(3), 7)) == (tid(3), 7, False)
    assert decode_ack(encode_ack(tid(3), 7, busy=True)) == (tid(3), 7, True)
    with pytest.raises(FrameError, match=r"truncated"):
        decode_ack(encode_ack(tid(3), 7)[:-1])
    with pytest.raises(FrameError, match=r"wrong kind"):
        decode_ack(make(b"x").manifest)
    with pytest.raises(FrameError, match=r"ack frame reached an inbox"):
        receiver().accept(encode_ack(tid(3), 7), 0.0)


def test_whole_payload_digest_must_match() -> None:
    plan = ChunkPlan.of(b"q" * 100)
    bad = dataclasses.replace(plan, payload_digest=hashlib.sha256(b"other").digest())
    t = bad.transfer(sender="alice", recipient="bob", channel="s1", transfer_id=tid(4),
                     sign=KEYS.signer("alice"))
    r = receiver()
    r.accept(t.manifest, 0.0)
    with pytest.raises(FrameError, match=r"whole payload"):
        r.accept(t.chunk(0), 0.0)
    assert r.in_progress == 0


# ------------------------------------------------------------------ memory bounds


def test_payload_over_the_limit_is_refused_before_any_chunk() -> None:
    r = receiver(ReassemblyLimits(max_payload=MiB))
    with pytest.raises(FrameError, match=r"too large.*exceeds the limit"):
        r.accept(make(b"x" * (MiB + 1)).manifest, 0.0)
    assert r.in_progress == 0


def test_memory_of_all_open_transfers_is_bounded() -> None:
    r = receiver(ReassemblyLimits(max_payload=2 * MiB, max_buffered=3 * MiB))
    r.accept(make(b"a" * 2 * MiB, 1).manifest, 0.0)
    with pytest.raises(FrameError, match=r"too large.*max_buffered"):
        r.accept(make(b"b" * 2 * MiB, 2).manifest, 0.0)
    r.accept(make(b"c" * MiB, 3).manifest, 0.0)  # still fits
    assert r.in_progress == 2


def test_concurrent_transfers_per_sender_are_bounded() -> None:
    # More are evicted, not refused: see test_transfer_slots.py for why.
    r = receiver(ReassemblyLimits(max_transfers_per_sender=2))
    r.accept(make(b"1", 1).manifest, 0.0)
    r.accept(make(b"2", 2).manifest, 1.0)
    r.accept(make(b"3", 3).manifest, 2.0)  # evicts transfer 1, the least recently active
    assert r.in_progress == 2
    assert [d.reason for d in r.take_expired()] == [
        f"transfer {tid(1).hex()[:12]} from 'alice' evicted by a newer one (2 open, the limit) "
        "with 0/1 chunks"]
    with pytest.raises(FrameError, match=r"unknown transfer.*dropped unfinished"):
        r.accept(make(b"1", 1).chunk(0), 3.0)
    assert r.accept(make(b"2", 2).chunk(0), 3.0).payload == b"2"


def test_stale_transfers_expire() -> None:
    r = receiver(ReassemblyLimits(expiry_s=10.0))
    t = make(b"y" * (MiB + 1))
    r.accept(t.manifest, 0.0)
    r.accept(t.chunk(0), 5.0)
    r.accept(make(b"other", 2).manifest, 14.0)  # 9 s after the last activity: kept
    assert r.take_expired() == []
    with pytest.raises(FrameError, match=r"unknown transfer"):
        r.accept(t.chunk(1), 15.5)  # 10.5 s: gone
    assert [tuple(d) for d in r.take_expired()] == [
        ("alice", "expired transfer",
         f"transfer {tid(1).hex()[:12]} from 'alice' expired with 1/2 chunks")]
    assert r.in_progress == 1 and r.buffered_bytes == 0


def test_a_sender_kept_waiting_does_not_see_its_transfers_expire() -> None:
    # alice's chunks are answered busy unread (her held messages are at a bound): each
    # such answer keeps all her open transfers, the one without a chunk in flight too
    r = receiver(ReassemblyLimits(expiry_s=10.0))
    waiting, queued, idle = make(b"a" * (MiB + 1)), make(b"q", 2), make(b"c", 3, sender="mallory")
    for transfer in (waiting, queued, idle):
        r.accept(transfer.manifest, 0.0)
    r.accept(waiting.chunk(0), 1.0)
    r.keep_alive("alice", 9.0)  # what Inbox.deferral calls
    assert r.accept(waiting.chunk(1), 18.0).payload == b"a" * (MiB + 1)  # 9 s on: kept
    assert r.accept(queued.chunk(0), 18.0).payload == b"q"
    assert [d.sender for d in r.take_expired()] == ["mallory"]  # 18 s idle: expired


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize("size", [MiB - 1, MAX_CHUNK_SIZE + 1, 0])
def test_chunk_size_bounds(size: int) -> None:
    with pytest.raises(ParameterError, match=r"chunk_size"):
        ChunkPlan.of(b"x", size)


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "a\0b", "a b", "x" * 65, "-lead", 5])
def test_ids_must_be_topic_safe(bad: object) -> None:
    with pytest.raises(ParameterError, match=r"invalid party id"):
        validate_id("party id", bad)
    assert validate_id("party id", "Party_1.x-y") == "Party_1.x-y"


def test_transfer_id_and_signature_are_checked() -> None:
    with pytest.raises(ParameterError, match=r"16 random bytes"):
        split(b"x", sender="a", recipient="b", channel="c", transfer_id=b"short",
              sign=KEYS.signer("alice"))
    with pytest.raises(ParameterError, match=r"sign"):
        split(b"x", sender="a", recipient="b", channel="c", transfer_id=tid(1),
              sign=lambda data: b"")


def test_decoded_manifest_fields() -> None:
    t = make(b"m" * (2 * MiB + 1), 8)
    m = decode_transfer_manifest(t.manifest)
    assert (m.sender, m.recipient, m.channel, m.count, m.total) == ("alice", "bob", "s1", 3,
                                                                    2 * MiB + 1)
    assert m.transfer_id == tid(8) and len(m.digests) == 3 and len(m.signature) == 64
