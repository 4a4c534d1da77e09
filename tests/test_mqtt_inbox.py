"""MqttTransport's inbox against a real mosquitto: what is held while it is full, and
what happens to it when the transport ends or its spill file fails."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mqtt_fixtures
import pytest
from mqtt_fixtures import FAST, Keyring, make_transport, receive_within, wait_until

from threshold_fl.errors import TransportClosed, TransportError
from transports.broker import MosquittoBroker
from transports.chunks import ReassemblyLimits

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)

MiB = 1 << 20

#: One message in the inbox; every further one held, and in a spill file at once.
SPILL_ALL = dataclasses.replace(FAST, inbox_limit=1, held_memory_bytes=0, ack_timeout_s=0.2)


@pytest.fixture
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Spill files go here (unlinked, so seen only through this process's fds)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def spill_fds(directory: Path) -> Iterator[str]:
    """This process's open files in ``directory`` (deleted ones included), as fd paths."""
    for fd in os.listdir("/proc/self/fd"):
        path = f"/proc/self/fd/{fd}"
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(path).startswith(str(directory)):
                yield path


@pytest.mark.parametrize("end", ["close", "sever"])
async def test_ending_the_transport_deletes_what_it_held(
        broker: MosquittoBroker, spill_dir: Path, end: str) -> None:
    keys = Keyring("alice", "bob")
    async with make_transport(broker.url, "alice", keys, options=SPILL_ALL) as alice:
        bob = make_transport(broker.url, "bob", keys, options=SPILL_ALL)
        await bob.connect()
        sends = [asyncio.create_task(alice.send(["bob"], b"m%d" % n)) for n in range(3)]
        await wait_until(lambda: bob.stats.spilled >= 1, 5, "a message spilled")
        assert list(spill_fds(spill_dir))
        if end == "close":
            await bob.close()
        else:
            bob.sever()
        assert list(spill_fds(spill_dir)) == []  # not left to the garbage collector
        assert await receive_within(bob) == b"m0"  # what was delivered is still taken
        with pytest.raises(TransportClosed):
            await receive_within(bob)
        await asyncio.gather(*sends)


async def test_a_spill_file_that_fails_loses_no_delivered_message_and_acks_none(
        broker: MosquittoBroker, spill_dir: Path) -> None:
    keys = Keyring("alice", "bob")
    async with make_transport(broker.url, "alice", keys, options=SPILL_ALL) as alice, \
            make_transport(broker.url, "bob", keys, options=SPILL_ALL) as bob:
        await alice.send(["bob"], b"m0")
        await alice.send(["bob"], b"m1")
        await wait_until(lambda: bob.stats.spilled == 1, 5, "m1 spilled")
        for path in spill_fds(spill_dir):
            os.truncate(path, 0)  # the disk lost it
        assert await receive_within(bob) == b"m0"  # taken before the failure: returned
        with pytest.raises(TransportError, match="tampered"):
            await receive_within(bob)
        assert bob.closed
        await asyncio.sleep(1.0)  # alice resends m1's last frame: nobody may ack it now
        assert alice.stats.transfers_acked == 1


#: A sender that gives up a frame after 0.1 + 0.2 s unanswered, and probes a busy
#: recipient every 0.5 s.
IMPATIENT = dataclasses.replace(FAST, ack_timeout_s=0.1, max_tries=2, max_ack_timeout_s=0.5)


async def test_a_sender_never_gives_up_on_a_busy_recipient(broker: MosquittoBroker) -> None:
    # Before, the resends of a held message counted as tries: the sender gave it up
    # (a failed transfer, its window slot freed) though it was delivered later.
    keys = Keyring("alice", "bob")
    receiver = dataclasses.replace(FAST, inbox_limit=1)
    async with make_transport(broker.url, "alice", keys, options=IMPATIENT) as alice, \
            make_transport(broker.url, "bob", keys, options=receiver) as bob:
        await asyncio.gather(*(alice.send(["bob"], b"m%d" % n) for n in range(3)))
        await wait_until(lambda: bob.stats.held == 2, 5, "two messages held")
        await asyncio.sleep(2.0)  # several times alice's whole retry schedule
        assert alice.stats.transfers_failed == 0
        assert [await receive_within(bob) for _ in range(3)] == [b"m0", b"m1", b"m2"]
        await wait_until(lambda: alice.stats.transfers_acked == 3, 5, "every ack")
        assert alice.stats.transfers_failed == 0 and alice.stats.busy >= 2


@pytest.mark.parametrize("bound", [{"held_per_sender": 1}, {"held_max_bytes": 1}],
                         ids=["per sender", "in bytes"])
async def test_frames_beyond_the_held_bounds_wait_with_their_sender(
        broker: MosquittoBroker, bound: dict[str, int]) -> None:
    keys = Keyring("alice", "bob")
    receiver = dataclasses.replace(FAST, inbox_limit=1, **bound)
    async with make_transport(broker.url, "alice", keys, options=IMPATIENT) as alice, \
            make_transport(broker.url, "bob", keys, options=receiver) as bob:
        await asyncio.gather(*(alice.send(["bob"], b"m%d" % n) for n in range(5)))
        await wait_until(lambda: bob.stats.deferred >= 1, 5, "a frame deferred")
        await asyncio.sleep(1.0)  # probes of the deferred frames: answered busy again
        assert bob.stats.held == 1 and bob.stats.messages_received == 1  # bounded
        assert alice.stats.transfers_failed == 0
        got = [await receive_within(bob) for _ in range(5)]
        assert sorted(got) == [b"m%d" % n for n in range(5)]  # probes may reorder them
        await wait_until(lambda: alice.stats.transfers_acked == 5, 5, "every ack")
        assert alice.stats.transfers_failed == 0


async def test_a_transfer_deferred_past_the_expiry_is_kept(broker: MosquittoBroker) -> None:
    # Before, a deferred chunk (answered busy unread) did not count as activity: a
    # transfer whose chunks waited longer than expiry_s expired, the receiver refused
    # the chunks once it had room, and the sender gave the message up.  Now each busy
    # answer to a probe keeps its transfer: the expiry counts from the last exchange.
    keys = Keyring("alice", "bob")
    receiver = dataclasses.replace(FAST, inbox_limit=1, held_per_sender=1,
                                   limits=ReassemblyLimits(expiry_s=1.0), max_ack_timeout_s=0.5)
    async with make_transport(broker.url, "alice", keys, options=IMPATIENT) as alice, \
            make_transport(broker.url, "bob", keys, options=receiver) as bob:
        messages = [b"m%d" % n + bytes(MiB) for n in range(4)]  # 2 chunks each
        await asyncio.gather(*(alice.send(["bob"], m) for m in messages))
        await wait_until(lambda: bob.stats.deferred >= 1, 5, "a frame deferred")
        await asyncio.sleep(3.0)  # three expiries; probes every max_ack_timeout_s (0.5 s)
        assert bob.stats.messages_received == 1 and bob.stats.expired == 0
        got = [await receive_within(bob) for _ in range(4)]
        assert sorted(got) == messages
        await wait_until(lambda: alice.stats.transfers_acked == 4, 5, "every ack")
        assert alice.stats.transfers_failed == 0 and bob.stats.expired == 0
