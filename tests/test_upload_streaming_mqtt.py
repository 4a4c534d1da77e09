"""Uploads larger than the transport's max_payload stream in parts over a real mosquitto.

An aggregator and two clients (asyncio tasks, real OpenFHE, real MQTT transports) whose
transports refuse any message over ``MAX_PAYLOAD``; every client's update, fully
encrypted (mask fraction 1, so no sensitivity map is sent), is larger than that.  It
travels as several signed upload parts, each under the limit, the aggregator adds each
into its running sum as it arrives, and the round decrypts to the weighted average.
(Sensitivity maps stream through the same parts: tests/test_upload_parts.py.)
"""

from __future__ import annotations

import asyncio
import hashlib

import mqtt_fixtures
import numpy as np
import pytest
from protocol_harness import identity

from protocols import MaskPolicy, Mode, Outgoing, Timeouts, make_manifest
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
PART_BYTES = 200_000  # so an upload goes as 7 parts, one ciphertext each
AGGREGATOR = "aggregator"
SAMPLES = {"client1": 30, "client2": 10}


def vector(kind: str, name: str) -> FloatArray:
    seed = int.from_bytes(hashlib.sha256(f"{kind}/{name}".encode()).digest()[:8], "big")
    low = 0.0 if kind == "sensitivity" else -1.0
    return np.random.default_rng(seed).uniform(low, 1.0, LENGTH)


async def test_uploads_over_max_payload_stream_in_parts(broker: MosquittoBroker) -> None:
    manifest = make_manifest(
        session="upload-parts", aggregator=identity(AGGREGATOR).public,
        clients=[identity(name).public for name in SAMPLES], model_length=LENGTH,
        mode=Mode.THRESHOLD, rounds=1, mask=MaskPolicy(fraction=1.0, first_and_last=False),
        timeouts=Timeouts(join_s=30, keys_s=30, upload_s=60, decrypt_s=60))
    limits = ReassemblyLimits(max_payload=MAX_PAYLOAD, max_buffered=2 * MAX_PAYLOAD)
    options = MqttOptions(limits=limits, ack_timeout_s=10.0)
    config = BrokerConfig.from_url(broker.url)
    links = {name: mqtt_transport(manifest, identity(name), config, options)
             for name in (AGGREGATOR, *SAMPLES)}
    sent: dict[str, list[tuple[str, int]]] = {name: [] for name in SAMPLES}
    models: dict[str, FloatArray] = {}

    async def client(name: str) -> None:
        def record(outgoing: Outgoing) -> None:
            sent[name].append((outgoing.kind, len(outgoing.data)))

        node = FederatedClient(manifest, identity(name), links[name], samples=SAMPLES[name],
                               train=lambda round_, model: vector("model", name),
                               sensitivity=lambda: vector("sensitivity", name),
                               part_bytes=PART_BYTES, on_send=record)
        async with node:
            async for result in node.rounds():
                models[name] = result.model

    async with links[AGGREGATOR], links["client1"], links["client2"]:
        with pytest.raises(ParameterError, match="exceeds max_payload"):  # the limit is real
            await links["client1"].send([AGGREGATOR], bytes(MAX_PAYLOAD + 1))
        aggregator = Aggregator(manifest, identity(AGGREGATOR), links[AGGREGATOR])
        serving = asyncio.create_task(aggregator.run())
        await asyncio.wait_for(asyncio.gather(serving, *(client(n) for n in SAMPLES)), 240)
        stats = links[AGGREGATOR].stats

    total = sum(SAMPLES.values())
    expected = sum(SAMPLES[n] / total * vector("model", n) for n in SAMPLES)
    bound = context_for(manifest.params).error_bound(len(SAMPLES)) + 1e-7
    for name in SAMPLES:
        assert np.abs(models[name] - expected).max() <= bound
        assert "SensitivityUpload" not in {kind for kind, _ in sent[name]}
        sizes = [size for kind, size in sent[name] if kind == "UpdateUpload"]
        assert len(sizes) == 7 and max(sizes) <= PART_BYTES < MAX_PAYLOAD < sum(sizes), sizes
    assert stats.rejected == 0 and serving.result().rejected == 0
    # The aggregator held one part's ciphertexts at most besides its running sum.
    uploads = aggregator.machine._uploads  # type: ignore[attr-defined]
    count = ciphertext_count(context_for(manifest.params), LENGTH)
    assert 0 < uploads.peak_staged <= -(-count // 5) < count
