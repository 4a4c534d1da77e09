"""MqttTransport against a real mosquitto (started per test on a free loopback port).

No broker fakes: faults are made for real (frames injected by a raw MQTT client, a
client process killed or frozen, the broker stopped and restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import aiomqtt
import mqtt_fixtures
import numpy as np
import pytest
from mqtt_fixtures import (
    BROKERS,
    FAST,
    SESSION,
    Keyring,
    make_transport,
    receive_within,
    rechunk,
    wait_until,
)

import transports.broker as broker_module
from threshold_fl.errors import ParameterError, TransportClosed, TransportError
from transports.broker import (
    BrokerConfig,
    BrokerProcess,
    MosquittoBroker,
    acl_rules,
    free_port,
    mosquitto_config,
    private_broker,
    write_password_file,
)
from transports.chunks import Transfer, split
from transports.mqtt import MqttOptions, MqttTransport

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "mosquitto"
MiB = 1 << 20


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


# ------------------------------------------------------------------ exchange and life cycle


async def test_parties_exchange_broadcast_and_close(broker: MosquittoBroker) -> None:
    keys = Keyring("alice", "bob", "carol")
    alice, bob, carol = (make_transport(broker.url, p, keys) for p in ("alice", "bob", "carol"))
    async with alice, bob, carol:
        await alice.send(["bob"], b"a->b")
        await bob.send(["alice", "carol"], b"b->ac")
        await carol.send(["alice"], b"")  # empty payloads travel too
        assert await receive_within(bob) == b"a->b"
        assert {await receive_within(alice), await receive_within(alice)} == {b"b->ac", b""}
        assert await receive_within(carol) == b"b->ac"

        await alice.send(["alice", "bob", "carol"], b"to all")
        for party in (alice, bob, carol):
            assert await receive_within(party) == b"to all"

        sent = [f"m{i}".encode() * (i + 1) for i in range(20)]
        for message in sent:
            await alice.send(["bob"], message)
        assert sorted([await receive_within(bob) for _ in sent]) == sorted(sent)
        await wait_until(lambda: alice.stats.transfers_acked == alice.stats.messages_sent, 5,
                         "every transfer acked")
        assert alice.stats.retransmits == 0 and bob.stats.rejected == 0
        timeouts = dict(alice.stats.ack_timeouts)  # from measured acks, floored
        assert set(timeouts) <= {"alice", "bob", "carol"}
        assert FAST.ack_timeout_s <= timeouts["bob"] <= FAST.max_ack_timeout_s
        assert bob.stats.messages_received == 22 and bob.stats.bytes_received == sum(
            map(len, sent)) + len(b"a->b") + len(b"to all")

        await wait_until(lambda: alice.online_peers() == {"bob", "carol"}, 5, "presence")
        await carol.send(["bob"], b"one")
        await carol.send(["bob"], b"two")
        await wait_until(lambda: bob.stats.messages_received == 24, 5, "two more")
        await bob.close()  # graceful: says offline, keeps what already arrived
        await wait_until(lambda: alice.online_peers() == {"carol"}, 5, "bob offline")
        assert [await bob.receive(), await bob.receive()] == [b"one", b"two"]
        with pytest.raises(TransportClosed):
            await bob.receive()
        with pytest.raises(TransportClosed):
            await bob.send(["alice"], b"ghost")
        await bob.close()  # idempotent
    for party in (alice, carol):
        with pytest.raises(TransportClosed):
            await party.receive()


async def test_receive_blocked_in_close_is_woken(broker: MosquittoBroker) -> None:
    keys = Keyring("alice")
    alice = make_transport(broker.url, "alice", keys)
    await alice.connect()
    waiter = asyncio.create_task(alice.receive())
    await asyncio.sleep(0.05)
    await alice.close()
    with pytest.raises(TransportClosed):
        await asyncio.wait_for(waiter, 2)


async def test_200_mb_payload_over_mosquitto(broker: MosquittoBroker) -> None:
    keys = Keyring("alice", "bob")
    payload = np.random.default_rng(20240521).bytes(200 * MiB)
    options = MqttOptions()  # default timers: FAST's 0.3 s ack timeout is below the
    # receiver's final join and SHA-256 of 200 MiB, which would cost one retransmission
    async with make_transport(broker.url, "alice", keys, options=options) as alice, \
            make_transport(broker.url, "bob", keys, options=options) as bob:
        start = time.perf_counter()
        sending = asyncio.create_task(alice.send(["bob"], payload))
        received = await receive_within(bob, 120)
        elapsed = time.perf_counter() - start
        await sending
        assert received == payload  # byte for byte
        del received
        await wait_until(lambda: alice.stats.transfers_acked == 1, 10, "the last acks")
        stats = alice.stats
    print(f"\n200 MiB over mosquitto: {elapsed:.2f} s, {200 / elapsed:.0f} MiB/s, "
          f"{stats.frames_sent} frames, {stats.retransmits} retransmits")
    assert stats.frames_sent == 201 and stats.retransmits == 0


# ------------------------------------------------------------------ loss, retries, rejections


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
async def test_a_packet_above_the_brokers_bound(broker: BrokerProcess) -> None:
    """Our frames stay under DEFAULT_MAX_PACKET_SIZE, which our mosquitto enforces: a
    bigger publish gets its sender disconnected.  amqtt 0.12 has no bound at all (what
    docs/deployment.md says of both)."""
    size = 8 * MiB  # above the 5 MiB bound
    got: list[int] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="rx") as rx:
        await rx.subscribe("t/big", qos=1)

        async def read() -> None:
            async for message in rx.messages:
                got.append(len(bytes(message.payload)))
                return

        reader = asyncio.create_task(read())
        async with aiomqtt.Client(broker.host, broker.port, identifier="tx") as tx:
            if broker.name == "amqtt":
                await tx.publish("t/big", b"x" * size, qos=1, timeout=10)
            else:
                with pytest.raises(aiomqtt.MqttError):
                    await tx.publish("t/big", b"x" * size, qos=1, timeout=2)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader, 5 if broker.name == "amqtt" else 1)
        reader.cancel()
    assert got == ([size] if broker.name == "amqtt" else [])
    assert broker.name == "amqtt" or "Client tx disconnected due to oversize packet" in (
        broker.log_text())


async def test_frames_lost_at_the_broker_are_retransmitted(broker: MosquittoBroker) -> None:
    keys = Keyring("alice", "carol")
    async with make_transport(broker.url, "alice", keys) as alice:
        await alice.send(["carol"], b"hello carol")  # nobody subscribed: the broker drops it
        await asyncio.sleep(0.4)
        async with make_transport(broker.url, "carol", keys) as carol:
            assert await receive_within(carol) == b"hello carol"
            await wait_until(lambda: alice.stats.transfers_acked == 1, 5, "ack")
    assert alice.stats.retransmits >= 2 and alice.stats.transfers_failed == 0


async def test_gives_up_on_a_recipient_that_never_acks(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keyring("alice")
    options = dataclasses.replace(FAST, ack_timeout_s=0.1, max_tries=2)
    async with make_transport(broker.url, "alice", keys, options=options) as alice:
        with caplog.at_level(logging.WARNING, logger="transports.mqtt"):
            await alice.send(["nobody"], b"into the void")  # not an error for the sender
            await wait_until(lambda: alice.stats.transfers_failed == 1, 5, "giving up")
        assert "gave up on transfer" in caplog.text and "'nobody'" in caplog.text
        assert alice.stats.retransmits == 2  # manifest and chunk, once each
        await alice.send(["alice"], b"still working")
        assert await receive_within(alice) == b"still working"


async def test_a_silent_recipient_does_not_stall_the_others(broker: MosquittoBroker) -> None:
    # The window is per recipient: frames waiting for a dead party's acks must not hold
    # back messages to live ones (a dropped client would otherwise stall the aggregator).
    keys = Keyring("alice", "bob")
    options = dataclasses.replace(FAST, window=2, ack_timeout_s=30.0)
    async with make_transport(broker.url, "alice", keys, options=options) as alice, \
            make_transport(broker.url, "bob", keys) as bob:
        stuck = [asyncio.create_task(alice.send(["ghost"], b"x" * 10)) for _ in range(6)]
        await asyncio.sleep(0.2)
        assert not all(task.done() for task in stuck)  # ghost's window is full
        await asyncio.wait_for(alice.send(["bob"], b"for bob"), 5)
        assert await receive_within(bob) == b"for bob"
        for task in stuck:
            task.cancel()


@pytest.mark.parametrize("held_memory", [MqttOptions().held_memory_bytes, 0])
async def test_a_full_inbox_holds_messages_unacked_and_loses_none(
        broker: MosquittoBroker, held_memory: int) -> None:
    # An aggregator relaying key agreement at N = 50 fell behind and its inbox of 1,000
    # messages overflowed: messages were dropped (and acked).  Now they wait, unacked,
    # so the senders' windows stall, and arrive in order once receive() makes room;
    # beyond held_memory_bytes they wait in a temporary file (memory bounded whatever N).
    keys = Keyring("alice", "bob")
    options = dataclasses.replace(FAST, inbox_limit=2, window=4, ack_timeout_s=0.2,
                                  held_memory_bytes=held_memory)
    async with make_transport(broker.url, "alice", keys, options=options) as alice, \
            make_transport(broker.url, "bob", keys, options=options) as bob:
        sends = asyncio.gather(*(alice.send(["bob"], b"m%d" % n) for n in range(12)))
        await wait_until(lambda: bob.stats.held >= 1, 5, "a message held")
        await asyncio.sleep(1.0)  # several ack timeouts: held ones stay unacked
        assert alice.stats.transfers_acked <= 2 + options.window  # back-pressure
        # Answered busy: alice resends them only as probes, after max_ack_timeout_s.
        assert alice.stats.busy >= 1 and bob.stats.messages_received == 2
        received = [await receive_within(bob) for _ in range(12)]
        await sends
        await wait_until(lambda: alice.stats.transfers_acked == 12, 5, "every ack")
    assert received == [b"m%d" % n for n in range(12)]
    assert alice.stats.transfers_failed == 0
    assert (bob.stats.spilled == bob.stats.held) if held_memory == 0 else (
        bob.stats.spilled == 0)


async def test_sends_to_a_party_seen_offline_do_not_wait(broker: MosquittoBroker) -> None:
    keys = Keyring("alice", "carol")
    options = dataclasses.replace(FAST, window=2, ack_timeout_s=30.0)
    async with make_transport(broker.url, "alice", keys, options=options) as alice:
        carol = make_transport(broker.url, "carol", keys)
        await carol.connect()
        await wait_until(lambda: "carol" in alice.online_peers(), 5, "carol online")
        await carol.close()
        await wait_until(lambda: "carol" not in alice.online_peers(), 5, "carol offline")
        for _ in range(6):  # more than her window: must not block
            await asyncio.wait_for(alice.send(["carol"], b"later"), 2)


async def test_bad_frames_are_rejected_and_the_good_transfer_arrives(
    broker: MosquittoBroker,
) -> None:
    keys = Keyring("alice", "bob", "mallory")
    rng = np.random.default_rng(1)
    payload, decoy = rng.bytes(2 * MiB + 99), rng.bytes(2 * MiB + 99)

    def transfer(data: bytes, n: int, signer: str = "alice") -> Transfer:
        return split(data, sender="alice", recipient="bob", channel=SESSION, transfer_id=tid(n),
                     sign=keys.signer(signer))

    good, other = transfer(payload, 1), transfer(decoy, 2)
    forged = transfer(b"forged", 3, signer="mallory")  # mallory signs, claims to be alice
    inbox = f"tfl/{SESSION}/to/bob"
    bob = make_transport(broker.url, "bob", keys)
    async with bob, aiomqtt.Client(broker.host, broker.port) as raw:
        flipped = good.chunk(0)[:-1] + bytes([good.chunk(0)[-1] ^ 1])
        attack = [
            good.manifest[:10],  # truncated header
            forged.manifest,  # bad signature
            other.chunk(0),  # a transfer never announced
            good.manifest,  # genuine
            rechunk(flipped),  # tampered, its (unsigned) header digest fixed up
            rechunk(other.chunk(1), transfer_id=tid(1)),  # spliced from another transfer
            good.chunk(1), good.chunk(2), good.chunk(0),  # genuine, chunk 0 "retransmitted"
        ]
        for frame in attack:
            await raw.publish(inbox, frame, qos=1)
        assert await receive_within(bob) == payload
        await wait_until(lambda: bob.stats.rejected == 5, 5, "five rejections")
        tags = Counter(r.split("(", 1)[1].split(")", 1)[0] for r in bob.stats.last_rejections)
        assert tags == {"truncated header": 1, "bad signature": 1, "unknown transfer": 1,
                        "digest mismatch": 2}  # the tampered and the spliced chunk
        with pytest.raises(asyncio.TimeoutError):  # nothing else was delivered
            await asyncio.wait_for(bob.receive(), 0.3)
        async with make_transport(broker.url, "alice", keys) as alice:
            await alice.send(["bob"], b"business as usual")
            assert await receive_within(bob) == b"business as usual"


# ------------------------------------------------------------------ presence


CHILD = """
import asyncio, sys
from transports.mqtt import MqttOptions, MqttTransport

async def main() -> None:
    party, url, keepalive = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t = MqttTransport(party, "s1", url, sign=lambda d: b"-", verify=lambda *a: False,
                      options=MqttOptions(keepalive=keepalive))
    await t.connect()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def spawn_party(party: str, url: str, keepalive: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, party, url, str(keepalive),
        stdout=asyncio.subprocess.PIPE, cwd=REPO, env=env)
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"ready\n"
    return proc


#: Within this many seconds of its pings stopping, mosquitto reports a frozen party
#: with keepalive 1 s offline: 1.5 keepalives, which mosquitto 2.0.11 sweeps for about
#: every 5 s (measured: 5.2 s for keepalive 1, 2 and 3 s, 11.2 s for 5 s), plus slack.
FROZEN_BOUND_S = 1.5 * 1 + 5.0 + 1.0


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
async def test_last_will_reports_killed_and_frozen_parties_offline(
    broker: BrokerProcess,
) -> None:
    events: list[tuple[str, bool]] = []
    keys = Keyring("alice")
    alice = make_transport(broker.url, "alice", keys,
                           on_presence=lambda party, online: events.append((party, online)))
    async with alice:
        # One after the other: amqtt 0.12 can strand a client that connects while another
        # subscribes (docs/deployment.md, section 5), which is not what this test is about.
        carol = await spawn_party("carol", broker.url, 2)
        try:
            dave = await spawn_party("dave", broker.url, 1)
        except BaseException:
            carol.kill()
            await carol.wait()
            raise
        try:
            await wait_until(lambda: alice.online_peers() >= {"carol", "dave"}, 5, "online")
            start = time.monotonic()
            carol.send_signal(signal.SIGKILL)  # socket closed by the kernel, no DISCONNECT
            dave.send_signal(signal.SIGSTOP)  # socket stays open, pings stop
            killed = await wait_until(lambda: "carol" not in alice.online_peers(), 3, "carol")
            if broker.name == "amqtt":
                # amqtt 0.12's keepalive timeout does nothing (its broker handler's
                # handle_read_timeout is a no-op): a frozen party stays online until its
                # socket closes.  Should amqtt start dropping it, docs/deployment.md and
                # this test need updating.
                await asyncio.sleep(FROZEN_BOUND_S)
                assert "dave" in alice.online_peers()
                dave.kill()  # now the socket closes: its Last Will fires
                await wait_until(lambda: "dave" not in alice.online_peers(), 3, "dave")
                frozen = None
            else:
                await wait_until(lambda: "dave" not in alice.online_peers(), 10, "dave")
                frozen = time.monotonic() - start
        finally:
            for proc in (carol, dave):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
    print(f"\n{broker.name}: killed party offline after {killed:.2f} s, frozen one "
          "(keepalive 1 s) " + (f"after {frozen:.2f} s" if frozen is not None else
                                f"still online after {FROZEN_BOUND_S} s"))
    # A closed socket is noticed at once.  A silent one only by the keepalive timeout.
    assert killed < 1.5
    assert frozen is None or frozen <= FROZEN_BOUND_S
    assert events[-2:] in ([("carol", False), ("dave", False)],
                           [("dave", False), ("carol", False)])


async def test_a_severed_transport_vanishes_by_its_last_will(broker: MosquittoBroker) -> None:
    # Several clients share one process in the scale bench: one of them vanishes as a
    # crashed machine would (no DISCONNECT, no offline notice of its own), the others
    # in the process go on.
    keys = Keyring("alice", "carol", "dave")
    events: list[tuple[str, bool]] = []
    async with make_transport(broker.url, "alice", keys,
                              on_presence=lambda p, online: events.append((p, online))) as alice, \
            make_transport(broker.url, "carol", keys) as carol, \
            make_transport(broker.url, "dave", keys) as dave:
        await wait_until(lambda: alice.online_peers() >= {"carol", "dave"}, 5, "online")
        carol.sever()
        assert carol.closed
        with pytest.raises(TransportClosed):
            await receive_within(carol)
        await wait_until(lambda: "carol" not in alice.online_peers(), 3, "carol's Last Will")
        await dave.send(["alice"], b"still here")
        assert await receive_within(alice) == b"still here"
        assert "dave" in alice.online_peers()
    assert ("carol", False) in events
    log = broker.log_text()  # mosquitto tells a lost socket from a DISCONNECT
    assert f"tfl-{SESSION}-carol closed its connection" in log, log
    assert f"tfl-{SESSION}-carol disconnected" not in log


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
async def test_late_joiner_sees_retained_presence(broker: BrokerProcess) -> None:
    keys = Keyring("alice", "bob")
    async with make_transport(broker.url, "alice", keys) as alice:
        async with make_transport(broker.url, "bob", keys) as bob:
            await wait_until(lambda: bob.online_peers() == {"alice"}, 5, "retained presence")
        await wait_until(lambda: alice.online_peers() == frozenset(), 5, "bob offline")


# ------------------------------------------------------------------ broker outages


async def test_broker_restart_mid_transfer_reconnects_and_delivers(
    broker: MosquittoBroker,
) -> None:
    keys = Keyring("alice", "bob")
    payload = np.random.default_rng(3).bytes(60 * MiB)
    async with make_transport(broker.url, "alice", keys) as alice, \
            make_transport(broker.url, "bob", keys) as bob:
        sending = asyncio.create_task(alice.send(["bob"], payload))
        await wait_until(lambda: bob.stats.frames_received >= 5, 10, "the transfer to start")
        assert alice.connected_for_s > 0 and not alice.closed
        await asyncio.to_thread(broker.stop)
        assert bob.stats.messages_received == 0  # cut mid-transfer
        await wait_until(lambda: bob.connected_for_s == 0, 5, "bob to see the outage")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(broker.start)  # same port
        assert await receive_within(bob, 30) == payload
        await asyncio.wait_for(sending, 10)
        assert alice.stats.reconnects >= 1 and bob.stats.reconnects >= 1
        assert bob.connected_for_s > 0 and not bob.closed
        await alice.send(["bob"], b"after the outage")
        assert await receive_within(bob) == b"after the outage"


async def test_broker_gone_for_good_fails_within_give_up_after(broker: MosquittoBroker) -> None:
    keys = Keyring("alice")
    options = dataclasses.replace(FAST, give_up_after=1.5)
    alice = make_transport(broker.url, "alice", keys, options=options)
    await alice.connect()
    receiving = asyncio.create_task(alice.receive())
    sending = asyncio.create_task(alice.send(["nobody"], bytes(12 * MiB)))  # window stalls
    start = time.monotonic()
    await asyncio.to_thread(broker.stop)
    for task in (receiving, sending):  # wait_for: a hang fails the test instead
        with pytest.raises(TransportError, match=r"unreachable for 1.5 s"):
            await asyncio.wait_for(task, 6)
    assert time.monotonic() - start >= 1.5  # it did not give up before give_up_after
    assert alice.closed and alice.connected_for_s == 0
    with pytest.raises(TransportError, match=r"give_up_after"):
        await alice.send(["nobody"], b"x")
    await alice.close()
    await alice.close()
    with pytest.raises(TransportClosed):
        await alice.receive()


async def test_connect_to_an_absent_broker_fails_clearly() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    options = dataclasses.replace(FAST, give_up_after=1.0)
    alice = make_transport(url, "alice", Keyring("alice"), options=options)
    # wait_for turns a hang into a failure; the message says it gave up after 1 s
    with pytest.raises(TransportError, match=r"unreachable for 1 s"):
        await asyncio.wait_for(alice.connect(), 5)


async def test_close_while_a_big_send_is_being_planned_does_not_hang(
        broker: MosquittoBroker) -> None:
    # Payloads over 8 MiB are hashed in a thread; a close during that must still end
    # the send (it used to queue the transfer after the queue was cleared, forever).
    alice = make_transport(broker.url, "alice", Keyring("alice"))
    await alice.connect()
    sending = asyncio.create_task(alice.send(["bob"], bytes(300 * MiB)))
    await asyncio.sleep(0.01)
    await alice.close()
    with pytest.raises(TransportClosed):
        await asyncio.wait_for(sending, 10)


# ------------------------------------------------------------------ deployment ACL


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_deploy_files_match_the_generator() -> None:
    assert (DEPLOY / "tfl.acl").read_text(encoding="utf-8") == acl_rules()
    example = (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8")
    assert _directives(example) == _directives(mosquitto_config(
        port=1883, host="0.0.0.0", password_file="/etc/mosquitto/tfl/tfl.passwd",
        acl_file="/etc/mosquitto/tfl/tfl.acl", log_file="/var/log/mosquitto/tfl.log"))


async def test_acl_confines_each_party_to_its_own_topics(tmp_path: Path) -> None:
    credentials = {"alice": "pw-alice", "bob": "pw-bob", "mallory": "pw-mallory"}
    passwd = write_password_file(tmp_path / "tfl.passwd", credentials)
    keys = Keyring("alice", "bob", "mallory")
    with MosquittoBroker(password_file=passwd, acl_file=DEPLOY / "tfl.acl") as acl_broker:
        url = acl_broker.url
        alice, bob = (make_transport(url, p, keys, username=p, password=credentials[p])
                      for p in ("alice", "bob"))
        got: list[tuple[str, bytes]] = []
        async with alice, bob, aiomqtt.Client(acl_broker.host, acl_broker.port,
                                               username="mallory",
                                               password="pw-mallory") as mallory:
            for name in ("to/alice", "ack/alice", "to/#", "presence/+"):
                await mallory.subscribe(f"tfl/{SESSION}/{name}", qos=1)

            async def collect() -> None:
                async for message in mallory.messages:
                    got.append((message.topic.value, bytes(message.payload)))

            collector = asyncio.create_task(collect())
            offline = json.dumps({"party": "alice", "online": False, "ts": 0}).encode()
            online = json.dumps({"party": "mallory", "online": True, "ts": 0}).encode()
            await mallory.publish(f"tfl/{SESSION}/presence/alice", offline, qos=1, retain=True)
            await mallory.publish(f"tfl/{SESSION}/presence/mallory", online, qos=1, retain=True)
            await mallory.publish(f"tfl/{SESSION}/to/bob", b"junk", qos=1)  # allowed, rejected
            await wait_until(lambda: "mallory" in bob.online_peers(), 5, "mallory's own presence")
            await wait_until(lambda: bob.stats.rejected == 1, 5, "junk rejected by bob")

            await bob.send(["alice"], b"for alice only")
            assert await receive_within(alice) == b"for alice only"
            await alice.send(["bob", "mallory"], b"hello both")
            assert await receive_within(bob) == b"hello both"
            await wait_until(lambda: any(t.endswith("/to/mallory") for t, _ in got), 5,
                             "mallory's own inbox (the wildcard subscription is live)")
            await wait_until(lambda: alice.stats.transfers_acked == 1, 5, "bob's ack to alice")
            assert bob.stats.transfers_acked == 1  # and alice's acks reached bob
            await asyncio.sleep(0.2)
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
            assert alice.online_peers() >= {"bob"} and "alice" in bob.online_peers()
        topics = {t for t, _ in got}
        assert not {t for t in topics if t.endswith(("/to/alice", "/ack/alice"))}, topics
        assert (f"tfl/{SESSION}/presence/alice", offline) not in got  # forgery never stored
        bad = make_transport(url, "bob", keys, username="bob", password="wrong")
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"refused the connection"):
            await asyncio.wait_for(bad.connect(), 5)
        assert time.monotonic() - start < 2.0


# ------------------------------------------------------------------ TLS, MQTT 5


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, as PEM files."""
    from datetime import datetime, timedelta, timezone
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def certificate(subject: str, issuer: str, public: ec.EllipticCurvePublicKey,
                    serial: int) -> x509.CertificateBuilder:
        now = datetime.now(timezone.utc)
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(public).serial_number(serial)
                .not_valid_before(now - timedelta(minutes=1))
                .not_valid_after(now + timedelta(hours=1)))

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (certificate("tfl test CA", "tfl test CA", ca_key.public_key(), 1)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    loopback = x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))])
    server = (certificate("127.0.0.1", "tfl test CA", key.public_key(), 2)
              .add_extension(loopback, critical=False).sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_mqtts_with_a_ca_file(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    keys = Keyring("alice", "bob")
    with MosquittoBroker(tls=(ca, cert, key)) as tls_broker:
        assert tls_broker.url.startswith("mqtts://")
        config = BrokerConfig.from_url(tls_broker.url, ca_file=ca)
        alice, bob = (MqttTransport(p, SESSION, config, sign=keys.signer(p), verify=keys.verify,
                                    options=FAST) for p in ("alice", "bob"))
        async with alice, bob:
            await alice.send(["bob"], b"over TLS")
            assert await receive_within(bob) == b"over TLS"
        untrusted = dataclasses.replace(FAST, give_up_after=1.0)
        stranger = MqttTransport("carol", SESSION, tls_broker.url, sign=keys.signer("alice"),
                                 verify=keys.verify, options=untrusted)  # system CAs only
        with pytest.raises(TransportError, match=r"unreachable.*CERTIFICATE_VERIFY_FAILED"):
            await asyncio.wait_for(stranger.connect(), 5)


async def test_mqtt5_works_too(broker: MosquittoBroker) -> None:
    keys = Keyring("alice", "bob")
    options = dataclasses.replace(FAST, mqtt5=True)
    async with make_transport(broker.url, "alice", keys, options=options) as alice, \
            make_transport(broker.url, "bob", keys, options=options) as bob:
        await alice.send(["bob"], b"v5")
        assert await receive_within(bob) == b"v5"
        await wait_until(lambda: alice.stats.transfers_acked == 1, 5, "ack")


# ------------------------------------------------------------------ private broker


async def _exchange(url: str) -> None:
    keys = Keyring("alice", "bob")
    async with make_transport(url, "alice", keys) as alice, \
            make_transport(url, "bob", keys) as bob:
        await alice.send(["bob"], b"x" * (MiB + 1))
        assert await receive_within(bob) == b"x" * (MiB + 1)
        await wait_until(lambda: bob.online_peers() == {"alice"}, 5, "presence")


def _refused(url: str) -> bool:
    config = BrokerConfig.from_url(url)
    try:
        socket.create_connection((config.host, config.port), 1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_private_broker_runs_mosquitto_and_stops_it() -> None:
    async with private_broker(backend="mosquitto") as url:
        await _exchange(url)
    assert _refused(url)


async def test_private_broker_falls_back_to_amqtt(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import amqtt.broker  # noqa: F401  (a dev dependency: the fallback must really run)
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    with caplog.at_level(logging.WARNING, logger="transports.broker"):
        async with private_broker() as url:
            assert "falling back to an in-process amqtt broker" in caplog.text
            await _exchange(url)
    assert _refused(url)


async def test_no_broker_at_all_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)  # import now fails
    with pytest.raises(TransportError, match=r"apt-get install mosquitto.*threshold-fl\[broker\]"):
        async with private_broker():
            pass
    with pytest.raises(TransportError, match=r"mosquitto not found"):
        async with private_broker(backend="mosquitto"):
            pass


# ------------------------------------------------------------------ configuration errors


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:1883", "scheme must be mqtt:// or mqtts://"),
        ("mqtt://user:pw@h:1883", "not in the URL"),
        ("mqtt://h:1883/topic", "no path"),
        ("mqtt://h:99999", "port must be a number"),
        ("mqtt://h:port", "port must be a number"),
        ("mqtt://h:0", "port must be a number"),
        ("mqtt://:1883", "names no host"),
    ],
)
def test_bad_broker_urls(url: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        BrokerConfig.from_url(url)


def test_broker_urls_and_tls_files(tmp_path: Path) -> None:
    assert BrokerConfig.from_url("mqtt://localhost").port == 1883
    tls = BrokerConfig.from_url("mqtts://[::1]:8884")
    assert (tls.tls, tls.host, tls.port, tls.url) == (True, "::1", 8884, "mqtts://[::1]:8884")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert BrokerConfig.from_url("mqtts://h", ca_file=ca).ca_file == str(ca)
    with pytest.raises(ParameterError, match=r"use mqtts://"):
        BrokerConfig.from_url("mqtt://h", ca_file=ca)
    with pytest.raises(ParameterError, match=r"does not exist"):
        BrokerConfig.from_url("mqtts://h", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ParameterError, match=r"both cert_file and key_file"):
        BrokerConfig.from_url("mqtts://h", cert_file=ca)
    assert "pw" not in repr(BrokerConfig.from_url("mqtt://h", username="u", password="pw"))


@pytest.mark.parametrize(("party", "session"), [("a/b", "s1"), ("a", "s+1"), ("#", "s"),
                                                ("a\0", "s"), ("a", "")])
def test_ids_are_checked_for_topic_safety(party: str, session: str) -> None:
    with pytest.raises(ParameterError, match=r"invalid (party id|session)"):
        MqttTransport(party, session, "mqtt://h", sign=lambda d: b"s",
                      verify=lambda s, d, g: True)


async def test_use_before_connect_and_bad_options() -> None:
    t = MqttTransport("alice", "s1", "mqtt://h", sign=lambda d: b"s", verify=lambda s, d, g: True)
    with pytest.raises(TransportError, match=r"not connected"):
        await t.send(["bob"], b"x")
    with pytest.raises(TransportError, match=r"not connected"):
        await t.receive()
    with pytest.raises(ParameterError, match=r"window"):
        MqttOptions(window=0)


def test_the_broker_base_names_no_broker_of_its_own() -> None:
    # Only MosquittoBroker and AmqttBroker know how to start a broker.
    with pytest.raises(TypeError, match="_argv"):
        BrokerProcess(port=None, host="127.0.0.1")  # type: ignore[abstract]
