"""I/O layer of threshold-fl: moving bytes between parties.

Home of the MQTT transport (aiomqtt), an in-memory transport for tests, chunking of
large payloads and signed envelopes.  A transport knows bytes, topics and party
identities only.

Every transport offers the :class:`Transport` interface (:mod:`transports.base`):
opaque, already-signed bytes, delivered best effort (possibly dropped, duplicated,
delayed or reordered).  :class:`MemoryHub` / :class:`MemoryTransport`
(:mod:`transports.memory`) run a whole federation in one event loop, with faults
scripted by a :class:`FaultPlan`.

:class:`MqttTransport` (:mod:`transports.mqtt`) runs the same interface over an MQTT
broker: every message is a signed chunked transfer (:mod:`transports.frames`), acked
end to end, with reconnection and presence.  :func:`private_broker`
(:mod:`transports.broker`) starts a throwaway broker for tests and demos.

Layering (checked by ``tests/test_layering.py``): code here imports neither
``protocols`` nor the crypto backend (``threshold_fl.crypto``, ``openfhe``).  Only
the composition layer in ``threshold_fl`` wires protocols to transports.
"""

from transports.base import Transport
from transports.broker import BrokerConfig, MosquittoBroker, find_mosquitto, private_broker
from transports.chunks import Reassembler, ReassemblyLimits
from transports.frames import ChunkPlan, Transfer, split
from transports.memory import (
    Envelope,
    Fault,
    FaultPlan,
    HubStats,
    MemoryHub,
    MemoryTransport,
    PartyTraffic,
)
from transports.mqtt import MqttOptions, MqttStats, MqttTransport

__all__ = [
    "Transport",
    "MemoryHub",
    "MemoryTransport",
    "FaultPlan",
    "Fault",
    "Envelope",
    "HubStats",
    "PartyTraffic",
    "MqttTransport",
    "MqttOptions",
    "MqttStats",
    "BrokerConfig",
    "private_broker",
    "MosquittoBroker",
    "find_mosquitto",
    "ChunkPlan",
    "Transfer",
    "split",
    "Reassembler",
    "ReassemblyLimits",
]
