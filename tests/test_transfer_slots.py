"""Replayed transfers: they must neither block a sender's slots nor be delivered again.

A party that may write to others' inboxes (or anyone, on a broker without an ACL) can
replay signed manifests it saw or sent earlier.  The receiver's slots for a sender are
few (``max_transfers_per_sender``), so replays must not fill them, and a transfer that
finished must stay finished for the whole session, however long ago it was.
"""

from __future__ import annotations

import asyncio
import dataclasses

import aiomqtt
import mqtt_fixtures
import pytest
from mqtt_fixtures import FAST, SESSION, Keyring, make_transport, receive_within, wait_until

from threshold_fl.errors import AuthenticationError, FrameError
from transports.broker import MosquittoBroker
from transports.chunks import Reassembler, ReassemblyLimits
from transports.frames import Transfer, split

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)

KEYS = Keyring("alice", "bob", "carol", "mallory")
SLOTS = ReassemblyLimits().max_transfers_per_sender  # 16
LATER = 10 * ReassemblyLimits().expiry_s  # long after any expiry


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def make(n: int, payload: bytes | None = None, *, sender: str = "alice",
         signer: str | None = None) -> Transfer:
    return split(payload if payload is not None else f"message {n}".encode(), sender=sender,
                 recipient="bob", channel=SESSION, transfer_id=tid(n),
                 sign=KEYS.signer(signer or sender))


def receiver(limits: ReassemblyLimits | None = None) -> Reassembler:
    return Reassembler("bob", SESSION, KEYS.verify, limits)


def deliver(r: Reassembler, t: Transfer, now: float) -> bytes | None:
    r.accept(t.manifest, now)
    return r.accept(t.chunk(0), now).payload


def test_replayed_old_manifests_do_not_block_a_new_transfer() -> None:
    r = receiver()
    old = [make(n) for n in range(SLOTS)]
    for t in old:
        assert deliver(r, t, 0.0) is not None
    for t in old:  # replayed long after: recognised as finished, acked, no slot taken
        got = r.accept(t.manifest, LATER)
        assert got.duplicate and got.payload is None
    assert r.in_progress == 0
    assert deliver(r, make(100), LATER + 1) == b"message 100"


def test_replayed_finished_transfer_is_not_delivered_again() -> None:
    r = receiver()
    t = make(1, b"pay once")
    assert deliver(r, t, 0.0) == b"pay once"
    for now in (1.0, LATER, 100 * LATER):  # a lost ack's retransmission, or a replay
        assert r.accept(t.manifest, now).duplicate
        again = r.accept(t.chunk(0), now)
        assert again.duplicate and again.payload is None and again.sender == "alice"


def test_a_new_transfer_evicts_the_least_recently_progressed_stale_one() -> None:
    # Manifests nobody completes (replayed after a restart, say) fill alice's slots.
    r = receiver()
    stale = [make(n, bytes(3 << 20)) for n in range(SLOTS)]  # 3 chunks each
    for n, t in enumerate(stale):
        r.accept(t.manifest, float(n))
    r.accept(stale[0].chunk(0), 50.0)  # the oldest one progressed recently: keep it
    fresh = make(100)
    assert deliver(r, fresh, 60.0) == b"message 100"
    assert r.in_progress == SLOTS - 1
    dropped = r.take_expired()
    assert [(d.sender, d.kind) for d in dropped] == [("alice", "evicted transfer")]
    assert tid(1).hex()[:12] in dropped[0].reason  # idle since t=1: the least recent
    r.accept(stale[0].chunk(1), 61.0)  # the one that progressed is still there
    with pytest.raises(FrameError, match=r"stale transfer"):
        r.accept(stale[1].manifest, 62.0)  # an evicted transfer does not come back
    assert r.in_progress == SLOTS - 1


def test_expired_transfer_replayed_later_does_not_reopen() -> None:
    r = receiver()
    t = make(1, bytes(2 << 20))
    r.accept(t.manifest, 0.0)
    r.expire(LATER)
    assert [d.kind for d in r.take_expired()] == ["expired transfer"]
    with pytest.raises(FrameError, match=r"stale transfer"):
        r.accept(t.manifest, LATER + 1)
    assert r.in_progress == 0


def test_forged_or_other_senders_manifests_evict_nothing() -> None:
    r = receiver()
    for n in range(SLOTS):
        r.accept(make(n, bytes(2 << 20)).manifest, 0.0)
    forged = make(200, signer="mallory")  # claims alice, signed by mallory
    with pytest.raises(AuthenticationError, match=r"bad signature"):
        r.accept(forged.manifest, 1.0)
    assert deliver(r, make(201, sender="carol"), 1.0) == b"message 201"  # own slots
    assert r.in_progress == SLOTS and r.take_expired() == []


def test_history_is_bounded_per_sender() -> None:
    r = receiver(ReassemblyLimits(remember_per_sender=4))
    for n in range(5):
        deliver(r, make(n), 0.0)
    deliver(r, make(50, sender="carol"), 0.0)
    for n in range(6, 20):  # alice's own traffic pushes only alice's oldest ids out
        deliver(r, make(n), 0.0)
    assert r.accept(make(50, sender="carol").manifest, LATER).duplicate
    assert r.accept(make(19).manifest, LATER).duplicate
    # The documented limit: after 4 newer transfers from alice, transfer 0 is forgotten.
    assert not r.accept(make(0).manifest, LATER).duplicate


async def test_replayed_transfer_is_acked_not_delivered_twice(broker: MosquittoBroker) -> None:
    # End to end, with a short expiry so that the old 'recently finished' record is gone.
    options = dataclasses.replace(FAST, limits=ReassemblyLimits(expiry_s=0.2),
                                  max_ack_timeout_s=0.1)
    inbox = f"tfl/{SESSION}/to/bob"
    captured: list[bytes] = []
    async with make_transport(broker.url, "alice", KEYS) as alice, \
            make_transport(broker.url, "bob", KEYS, options=options) as bob, \
            aiomqtt.Client(broker.host, broker.port) as eve:
        await eve.subscribe(inbox, qos=1)

        async def capture() -> None:
            async for message in eve.messages:
                captured.append(bytes(message.payload))

        spy = asyncio.create_task(capture())
        await alice.send(["bob"], b"transfer 100 coins")
        assert await receive_within(bob) == b"transfer 100 coins"
        await wait_until(lambda: len(captured) >= 2, 5, "eve to capture both frames")
        spy.cancel()
        await asyncio.sleep(0.5)  # past expiry_s: only the session history remembers it
        for frame in captured[:2]:
            await eve.publish(inbox, frame, qos=1)
        await wait_until(lambda: bob.stats.duplicates >= 2, 5, "the replay to be acked")
        await alice.send(["bob"], b"next")
        assert await receive_within(bob) == b"next"  # not the replayed coins
        assert bob.stats.messages_received == 2
