"""A 200 MB encrypted model update end to end, over a real mosquitto.

One threshold-mode session of two rounds (an aggregator and two clients as asyncio tasks
in this process, real OpenFHE, real MQTT transports signing and checking transfers
against the manifest): every coordinate is encrypted (mask fraction 1, so there is no
mask agreement), and the model is long enough that ONE client's encrypted update is over
200 MB of ciphertext on the wire.  It must be chunked, transferred, reassembled byte for
byte and verified by the aggregator, aggregated, and jointly decrypted to the weighted
plaintext average.

Meanwhile a raw MQTT client, playing the untrusted broker, reads the aggregator's inbox
and injects into it, while round 2's update is in flight: one of its chunks with a bit flipped
(and the unsigned header digest fixed up), a chunk of the same client's round-1 update
spliced into it, and a transfer manifest claiming to be that client but signed with
another key.  All three are rejected and reported by the aggregator's transport, and the
round completes correctly all the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import resource
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt
import mqtt_fixtures
import numpy as np
import pytest
from protocol_harness import identity

from protocols import MaskPolicy, Mode, RoundCompleted, Timeouts, make_manifest
from protocols.codec import decode_message
from protocols.events import Event
from protocols.manifest import Manifest
from protocols.messages import SensitivityUpload, UpdateUpload
from threshold_fl.app.party import mqtt_transport
from threshold_fl.arrays import FloatArray
from threshold_fl.crypto.context import context_for
from threshold_fl.identity import Identity
from threshold_fl.node import Aggregator, FederatedClient
from transports.broker import BrokerConfig, MosquittoBroker, topic
from transports.frames import (
    KIND_CHUNK,
    KIND_MANIFEST,
    decode_chunk,
    decode_transfer_manifest,
    frame_kind,
    split,
)
from transports.mqtt import MqttOptions, MqttStats, MqttTransport

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)


MB = 10**6
MiB = 1 << 20
#: 1,600 ciphertexts of 8,192 values (ring dimension 8,192, two values per slot, one limb
#: as clients upload them) at about 132,000 serialised bytes each: over 200 MiB of
#: ciphertext per encrypted vector.
LENGTH = 1600 * 8192
AGGREGATOR = "aggregator"
NAMES = ("client1", "client2")
SAMPLES = {"client1": 30, "client2": 10}  # FedAvg weights 3/4 and 1/4
VICTIM = "client1"  # whose update the attacker tampers with
SESSION = "large-update"
#: Default timers, with room for a 2-core machine busy encrypting 400 MB: a frame is
#: resent after 10 s unacked (duplicates are harmless, but needless).
OPTIONS = MqttOptions(keepalive=20, ack_timeout_s=10.0)
TIMEOUTS = Timeouts(join_s=60, keys_s=60, upload_s=300, decrypt_s=300)
GIVE_UP_S = 400  # the whole session; a hang fails the test instead of blocking the suite


def local_model(name: str) -> FloatArray:
    """The client's 'trained' model: deterministic, small magnitudes."""
    seed = int.from_bytes(hashlib.sha256(f"model/{name}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed).uniform(-1.0, 1.0, LENGTH)


def sensitivity_map(name: str) -> FloatArray:
    seed = int.from_bytes(hashlib.sha256(f"sensitivity/{name}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed).uniform(0.0, 1.0, LENGTH)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------- recording links


@dataclass(frozen=True)
class Sent:
    """A message a client handed to its MQTT transport."""

    kind: str
    size: int  # the signed message: what the transport carried as one transfer
    ciphertext_bytes: int  # of which serialised CKKS frames
    digest: str
    frames: int  # MQTT frames that went out while it was sent (manifest + chunks)


@dataclass
class RecordingLink:
    """Forwards to an MqttTransport and notes what large messages went through it.

    The node sees a plain Transport; the bytes still travel over the real MqttTransport.
    """

    inner: MqttTransport
    manifest: Manifest
    threshold: int = MiB  # smaller messages are not looked at
    before: Callable[[str], Awaitable[None]] | None = None  # given each large one's kind
    sent: list[Sent] = field(default_factory=list)
    received: list[str] = field(default_factory=list)  # digests of large messages

    @property
    def party_id(self) -> str:
        return self.inner.party_id

    async def send(self, recipients: Sequence[str], data: bytes) -> None:
        big = len(data) >= self.threshold
        record = await asyncio.to_thread(self._inspect, data) if big else None
        if record is not None and self.before is not None:
            await self.before(record[0])
        before = self.inner.stats.frames_sent
        await self.inner.send(recipients, data)
        if record is not None:
            kind, ciphertext, digest = record
            frames = self.inner.stats.frames_sent - before
            self.sent.append(Sent(kind, len(data), ciphertext, digest, frames))

    def _inspect(self, data: bytes) -> tuple[str, int, str]:
        message = decode_message(data, self.manifest.directory)
        body = message.body
        ciphertext = (sum(len(frame) for frame in body.protected)
                      if isinstance(body, SensitivityUpload | UpdateUpload) else 0)
        return type(body).__name__, ciphertext, sha256_hex(data)

    async def receive(self) -> bytes:
        data = await self.inner.receive()
        if len(data) >= self.threshold:
            self.received.append(await asyncio.to_thread(sha256_hex, data))
        return data

    async def close(self) -> None:
        await self.inner.close()


# ----------------------------------------------------------------- the untrusted broker


def chunk_frame(prefix: bytes, transfer_id: bytes, seq: int, count: int, total: int,
                data: bytes) -> bytes:
    """A chunk frame as an attacker writes it: any header, digest matching the data."""
    return (prefix[:6] + transfer_id + struct.pack(">IIQ32s", seq, count, total,
                                                  hashlib.sha256(data).digest()) + data)


class Attacker:
    """A raw MQTT client reading and writing the aggregator's inbox, as the broker can.

    It keeps a chunk of the victim's first large transfer (its round-1 update), then
    lies low until the victim is about to send its round-2 update, every earlier transfer
    of the victim acked (so the next large transfer it sees from the victim is that
    update); once the update is in flight it injects a tampered chunk of it, that old chunk spliced
    into it, and a forged manifest.
    """

    def __init__(self, broker: MosquittoBroker, session: str) -> None:
        self.broker = broker
        self.inbox = topic(session, "to", AGGREGATOR)
        self.session = session
        self.listening = asyncio.Event()  # subscribed: the federation may start
        self.armed = asyncio.Event()  # the victim is about to send its update
        self.ready = asyncio.Event()  # subscribed again: the victim may upload
        self.injected: list[str] = []

    async def run(self) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port,
                                  identifier="eavesdropper") as raw:
            await raw.subscribe(self.inbox, qos=1)
            self.listening.set()
            old = await self._old_chunk(raw)
            await raw.unsubscribe(self.inbox)
            await self.armed.wait()
            await raw.subscribe(self.inbox, qos=1)
            self.ready.set()
            await self._attack(raw, old)
            await raw.unsubscribe(self.inbox)

    async def _old_chunk(self, raw: aiomqtt.Client) -> bytes:
        """A full-size chunk of the victim's first large transfer."""
        large: set[bytes] = set()
        async for message in raw.messages:
            frame = bytes(message.payload)
            kind = frame_kind(frame)
            if kind == KIND_MANIFEST:
                m = decode_transfer_manifest(frame)
                if m.sender == VICTIM and m.count > 1:
                    large.add(m.transfer_id)
            elif kind == KIND_CHUNK:
                c = decode_chunk(frame)
                if c.transfer_id in large and c.seq < c.count - 1:
                    return frame
        raise AssertionError("the attacker's connection ended")

    async def _attack(self, raw: aiomqtt.Client, old: bytes) -> None:
        update: bytes | None = None
        async for message in raw.messages:
            frame = bytes(message.payload)
            kind = frame_kind(frame)
            if kind == KIND_MANIFEST and update is None:
                m = decode_transfer_manifest(frame)
                if m.sender == VICTIM and m.count > 1:
                    update = m.transfer_id  # the first large one since armed: the update
            elif kind == KIND_CHUNK and update is not None:
                c = decode_chunk(frame)
                if c.transfer_id != update or c.seq >= c.count - 1:
                    continue
                flipped = c.data[:-1] + bytes([c.data[-1] ^ 1])
                spliced = decode_chunk(old).data  # same size: a full chunk
                mallory = Identity.from_seed(VICTIM, hashlib.sha256(b"mallory").digest())
                forged = split(b"forged update", sender=VICTIM, recipient=AGGREGATOR,
                               channel=self.session, transfer_id=bytes(range(16)),
                               sign=mallory.sign).manifest
                attack = {
                    "tampered chunk": chunk_frame(frame, update, c.seq, c.count, c.total,
                                                  flipped),
                    "chunk from another transfer": chunk_frame(frame, update, c.seq, c.count,
                                                               c.total, spliced),
                    "manifest with a bad signature": forged,
                }
                for what, bad in attack.items():
                    await raw.publish(self.inbox, bad, qos=1)
                    self.injected.append(what)
                return
        raise AssertionError("the attacker's connection ended")


# ----------------------------------------------------------------- the session


@dataclass
class Outcome:
    aggregator_events: list[Event]
    aggregator_rejected: int
    aggregator_stats: MqttStats
    client_stats: dict[str, MqttStats]
    links: dict[str, RecordingLink]
    models: dict[str, FloatArray]
    uploads: dict[str, FloatArray]
    seconds: float


async def run_session(broker: MosquittoBroker, manifest: Manifest,
                      attacker: Attacker) -> Outcome:
    config = BrokerConfig.from_url(broker.url)
    links = {name: RecordingLink(mqtt_transport(manifest, identity(name), config, OPTIONS),
                                 manifest)
             for name in (AGGREGATOR, *NAMES)}
    uploads: dict[str, FloatArray] = {}
    models: dict[str, FloatArray] = {}

    async def before_victim_sends(kind: str) -> None:
        updates = [s for s in links[VICTIM].sent if s.kind == "UpdateUpload"]
        if kind == "UpdateUpload" and updates:  # the attacker listens before round 2's
            victim = links[VICTIM].inner
            await mqtt_fixtures.wait_until(
                lambda: victim.stats.transfers_acked == victim.stats.messages_sent, 60,
                f"{VICTIM}'s earlier transfers to be acked")
            attacker.armed.set()
            await attacker.ready.wait()

    links[VICTIM].before = before_victim_sends

    async def client(name: str) -> None:
        async def train(round_: int, model: FloatArray | None) -> FloatArray:
            uploads[name] = await asyncio.to_thread(local_model, name)
            return uploads[name]

        async def sensitivity() -> FloatArray:
            return await asyncio.to_thread(sensitivity_map, name)

        node = FederatedClient(manifest, identity(name), links[name], samples=SAMPLES[name],
                               train=train, sensitivity=sensitivity)
        async with node:
            async for result in node.rounds():
                models[name] = result.model
        assert node.mask is not None and node.mask.count == LENGTH  # everything encrypted

    spy = asyncio.create_task(attacker.run())
    try:
        await asyncio.wait_for(attacker.listening.wait(), 30)
        started = time.perf_counter()
        async with links[AGGREGATOR].inner, links["client1"].inner, links["client2"].inner:
            aggregator = Aggregator(manifest, identity(AGGREGATOR), links[AGGREGATOR])
            serving = asyncio.create_task(aggregator.run())
            await asyncio.wait_for(asyncio.gather(serving, *(client(name) for name in NAMES)),
                                   GIVE_UP_S)
            summary = serving.result()
            await asyncio.wait_for(spy, 30)
            await mqtt_fixtures.wait_until(
                lambda: all(links[n].inner.stats.transfers_acked
                            == links[n].inner.stats.messages_sent for n in NAMES),
                30, "the clients' last acks")
            seconds = time.perf_counter() - started
            stats = {name: links[name].inner.stats for name in (AGGREGATOR, *NAMES)}
    finally:
        spy.cancel()
        await asyncio.gather(spy, return_exceptions=True)
    return Outcome(summary.events, summary.rejected, stats[AGGREGATOR],
                   {name: stats[name] for name in NAMES}, links, models, uploads, seconds)


@pytest.mark.slow  # about 80 s and 4 GB on a 2-core machine
async def test_a_200_mb_encrypted_update_is_chunked_verified_and_aggregated(
    broker: MosquittoBroker,
) -> None:
    manifest = make_manifest(
        session=SESSION, aggregator=identity(AGGREGATOR).public,
        clients=[identity(name).public for name in NAMES], model_length=LENGTH,
        mode=Mode.THRESHOLD, rounds=2, mask=MaskPolicy(fraction=1.0, first_and_last=False),
        timeouts=TIMEOUTS,
    )
    attacker = Attacker(broker, manifest.session)
    outcome = await run_session(broker, manifest, attacker)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # The victim's updates: each one signed message of over 200 MB of ciphertext, many
    # chunks; no sensitivity map went before them (fraction 1: no mask agreement).
    kinds = [s.kind for name in NAMES for s in outcome.links[name].sent]
    assert "SensitivityUpload" not in kinds
    updates = [s for s in outcome.links[VICTIM].sent if s.kind == "UpdateUpload"]
    assert len(updates) == 2
    update = updates[1]
    chunks = math.ceil(update.size / OPTIONS.chunk_size)
    agg, victim = outcome.aggregator_stats, outcome.client_stats[VICTIM]
    large = [(s.kind, round(s.size / MB, 1)) for s in outcome.links[VICTIM].sent]
    print(f"\n{LENGTH:,} values; {VICTIM}'s update: {update.size / MB:.1f} MB, "
          f"{update.ciphertext_bytes / LENGTH:.2f} B/value of ciphertext, {chunks} chunks "
          f"of {OPTIONS.chunk_size // MiB} MiB, {update.frames} frames sent")
    print(f"large messages from {VICTIM} (MB): {large}")
    print(f"aggregator received {agg.messages_received} messages, "
          f"{agg.bytes_received / MB:.0f} MB in {agg.frames_received} frames, rejected "
          f"{agg.rejected}; retransmits {agg.retransmits} (aggregator), {victim.retransmits} "
          f"({VICTIM})")
    print(f"session {outcome.seconds:.1f} s; peak RSS of this process "
          f"{peak_rss / 2**30:.2f} GiB")
    assert update.ciphertext_bytes >= 200 * MiB  # 200 MB however MB is read
    assert update.frames >= chunks + 1 >= 200  # the signed manifest, then its chunks
    for name in NAMES:
        stats = outcome.client_stats[name]
        assert stats.transfers_failed == 0 and stats.rejected == 0

    # The aggregator reassembled exactly these bytes, verified them and aggregated both.
    for name in NAMES:
        for sent in outcome.links[name].sent:
            if sent.kind in ("SensitivityUpload", "UpdateUpload"):
                assert sent.digest in outcome.links[AGGREGATOR].received, (name, sent.kind)
    assert outcome.aggregator_rejected == 0  # no forged or stale message reached the protocol
    completed = [e for e in outcome.aggregator_events if isinstance(e, RoundCompleted)]
    assert [(e.round, sorted(e.contributors)) for e in completed] == [(1, list(NAMES)),
                                                                      (2, list(NAMES))]

    # Every client decrypted the weighted plaintext average, within the CKKS bound.
    total = sum(SAMPLES.values())
    expected = sum(SAMPLES[n] / total * outcome.uploads[n] for n in NAMES)
    bound = context_for(manifest.params).error_bound(len(NAMES)) + 1e-7
    for name in NAMES:
        error = float(np.abs(outcome.models[name] - expected).max())
        print(f"{name}: max abs error {error:.2e} (bound {bound:.2e})")
        assert error <= bound
    np.testing.assert_array_equal(outcome.models["client1"], outcome.models["client2"])

    # The attack on the update in flight was rejected and reported by the transport.
    assert attacker.injected == ["tampered chunk", "chunk from another transfer",
                                 "manifest with a bad signature"]
    stats = outcome.aggregator_stats
    reasons = Counter(r.split("(", 1)[1].split(")", 1)[0] for r in stats.last_rejections)
    assert stats.rejected == 3
    assert reasons == {"digest mismatch": 2, "bad signature": 1}, stats.last_rejections
    assert sum("spliced in from another transfer" in r for r in stats.last_rejections) == 2
    assert any(f"claimed by {VICTIM!r} does not verify" in r for r in stats.last_rejections)
