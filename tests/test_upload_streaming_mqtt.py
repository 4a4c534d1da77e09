"""Uploads larger than the transport's max_payload stream in parts over a real mosquitto.

An aggregator and two clients (asyncio tasks, real OpenFHE, real MQTT transports) whose
transports refuse any message over ``MAX_PAYLOAD``; every client's update, fully
encrypted (mask fraction 1, so no sensitivity map is sent), is larger than that.  It
travels as several signed upload parts, each under the limit, the aggregator adds each
into its running sum as it arrives, and the round decrypts to the weighted average.
(Sensitivity maps stream through the same parts: tests/test_upload_parts.py.)  Below
the aggregate's size, the joint decryption streams in parts as well.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import mqtt_fixtures
import numpy as np
import pytest
from protocol_harness import identity

from protocols import MaskPolicy, Mode, Outgoing, Timeouts, make_manifest
from protocols.protection import DEFAULT_PART_BYTES
from threshold_fl.app.party import mqtt_transport
from threshold_fl.arrays import FloatArray
from threshold_fl.crypto.context import context_for
from threshold_fl.crypto.vectors import ciphertext_count
from threshold_fl.errors import ParameterError
from threshold_fl.node import Aggregator, FederatedClient
from transports.broker import BrokerConfig, MosquittoBroker
from transports.chunks import ReassemblyLimits
from transports.mqtt import MqttOptions

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)

LENGTH = 6 * 8192 + 100  # 7 ciphertexts: about 930 kB per fully encrypted upload
MAX_PAYLOAD = 600_000  # above c1, shares and the fused result (about 460 kB), below an upload
SMALL_PAYLOAD = 300_000  # below c1, shares and the fused result: the decryption streams
PART_BYTES = 200_000  # so an upload goes as 7 parts, one ciphertext each
AGGREGATOR = "aggregator"
SAMPLES = {"client1": 30, "client2": 10}


def vector(kind: str, name: str) -> FloatArray:
    seed = int.from_bytes(hashlib.sha256(f"{kind}/{name}".encode()).digest()[:8], "big")
    low = 0.0 if kind == "sensitivity" else -1.0
    return np.random.default_rng(seed).uniform(low, 1.0, LENGTH)


@dataclass
class Round:
    """What one round over the broker gave: each client's model and sent (kind, bytes),
    the aggregator's sent (kind, bytes), and the aggregator itself."""

    models: dict[str, FloatArray]
    sent: dict[str, list[tuple[str, int]]]
    aggregator: Aggregator
    rejected: int


async def _round(broker: MosquittoBroker, max_payload: int, aggregator_part_bytes: int
                 ) -> Round:
    manifest = make_manifest(
        session="upload-parts", aggregator=identity(AGGREGATOR).public,
        clients=[identity(name).public for name in SAMPLES], model_length=LENGTH,
        mode=Mode.THRESHOLD, rounds=1, mask=MaskPolicy(fraction=1.0, first_and_last=False),
        timeouts=Timeouts(join_s=30, keys_s=30, upload_s=60, decrypt_s=60))
    limits = ReassemblyLimits(max_payload=max_payload, max_buffered=2 * max_payload)
    options = MqttOptions(limits=limits, ack_timeout_s=10.0)
    config = BrokerConfig.from_url(broker.url)
    links = {name: mqtt_transport(manifest, identity(name), config, options)
             for name in (AGGREGATOR, *SAMPLES)}
    sent: dict[str, list[tuple[str, int]]] = {name: [] for name in (AGGREGATOR, *SAMPLES)}
    models: dict[str, FloatArray] = {}

    def recorder(name: str) -> Callable[[Outgoing], None]:
        def record(outgoing: Outgoing) -> None:
            sent[name].append((outgoing.kind, len(outgoing.data)))
        return record

    async def client(name: str) -> None:
        node = FederatedClient(manifest, identity(name), links[name], samples=SAMPLES[name],
                               train=lambda round_, model: vector("model", name),
                               sensitivity=lambda: vector("sensitivity", name),
                               part_bytes=PART_BYTES, on_send=recorder(name))
        async with node:
            async for result in node.rounds():
                models[name] = result.model

    async with links[AGGREGATOR], links["client1"], links["client2"]:
        with pytest.raises(ParameterError, match="exceeds max_payload"):  # the limit is real
            await links["client1"].send([AGGREGATOR], bytes(max_payload + 1))
        aggregator = Aggregator(manifest, identity(AGGREGATOR), links[AGGREGATOR],
                                part_bytes=aggregator_part_bytes, on_send=recorder(AGGREGATOR))
        serving = asyncio.create_task(aggregator.run())
        await asyncio.wait_for(asyncio.gather(serving, *(client(n) for n in SAMPLES)), 240)
        stats = links[AGGREGATOR].stats

    total = sum(SAMPLES.values())
    expected = sum(SAMPLES[n] / total * vector("model", n) for n in SAMPLES)
    bound = context_for(manifest.params).error_bound(len(SAMPLES)) + 1e-7
    for name in SAMPLES:
        assert np.abs(models[name] - expected).max() <= bound
        assert "SensitivityUpload" not in {kind for kind, _ in sent[name]}
    return Round(models, sent, aggregator, stats.rejected + serving.result().rejected)


async def test_uploads_over_max_payload_stream_in_parts(broker: MosquittoBroker) -> None:
    result = await _round(broker, MAX_PAYLOAD, DEFAULT_PART_BYTES)
    for name in SAMPLES:
        sizes = [size for kind, size in result.sent[name] if kind == "UpdateUpload"]
        assert len(sizes) == 7 and max(sizes) <= PART_BYTES < MAX_PAYLOAD < sum(sizes), sizes
    assert result.rejected == 0
    # The aggregator held one part's ciphertexts at most besides its running sum.
    uploads = result.aggregator.machine._uploads  # type: ignore[attr-defined]
    count = ciphertext_count(context_for(result.aggregator.machine.manifest.params), LENGTH)
    assert 0 < uploads.peak_staged <= -(-count // 5) < count


async def test_a_decryption_over_max_payload_streams_in_parts(broker: MosquittoBroker) -> None:
    """With max_payload below the aggregate's c1 (about 460 kB), the decryption goes in
    parts too: c1 to each member, the shares and the fused result, each under it."""
    result = await _round(broker, SMALL_PAYLOAD, PART_BYTES)
    assert result.rejected == 0
    sizes: dict[str, list[int]] = {}
    for messages in result.sent.values():
        for kind, size in messages:
            sizes.setdefault(kind, []).append(size)
    for kind in ("DecryptRequest", "DecryptionShare", "Fused"):
        assert max(sizes[kind]) <= PART_BYTES < SMALL_PAYLOAD, (kind, sizes[kind])
    # c1 of 7 ciphertexts in 4 parts, one request per part to each of the 2 members
    assert len(sizes["DecryptRequest"]) == 8 and len(sizes["Fused"]) == 4
    assert sum(sizes["DecryptRequest"]) // 2 > SMALL_PAYLOAD  # c1 whole would not fit
