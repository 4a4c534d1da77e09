"""Fixtures and helpers for the MQTT tests: a real broker, real Ed25519 identities.

Import what a test module needs; pytest registers a fixture imported into a test
module.  Assign fixtures to a module-level name (``broker = mqtt_fixtures.broker``)
rather than ``from ... import`` them, so linters do not read the test argument as a
redefinition of an unused import.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import Callable, Iterator

import pytest

from threshold_fl.errors import AuthenticationError
from threshold_fl.identity import Identity
from transports.broker import (
    AmqttBroker,
    BrokerConfig,
    BrokerProcess,
    MosquittoBroker,
    amqtt_available,
    find_mosquitto,
)
from transports.frames import Signer, decode_chunk
from transports.mqtt import MqttOptions, MqttTransport

SESSION = "s1"

#: Fast timings for tests: quick retransmission, reconnection and presence.
FAST = MqttOptions(
    keepalive=2,
    ack_timeout_s=0.3,
    reconnect_initial_s=0.05,
    reconnect_max_s=0.3,
    give_up_after=10.0,
    operation_timeout_s=5.0,
    close_linger_s=0.5,
)

#: The broker implementations we support, as values of the ``broker`` fixture's
#: parameter: ``@pytest.mark.parametrize("broker", BROKERS, indirect=True)``.
BROKERS = ("mosquitto", "amqtt")


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    """A private anonymous broker on a free loopback port, removed after the test: a
    mosquitto, or the implementation named by an indirect parameter (:data:`BROKERS`),
    each in its own process."""
    kind = getattr(request, "param", "mosquitto")
    instance: BrokerProcess
    if kind == "mosquitto":
        if find_mosquitto() is None:  # make test installs it: missing is a set-up failure
            pytest.fail("mosquitto not installed: run 'make test' (it apt-gets mosquitto) "
                        "or apt-get install mosquitto")
        instance = MosquittoBroker()
    elif kind == "amqtt":
        if not amqtt_available():  # a dev dependency: missing is a set-up failure
            pytest.fail("amqtt not installed: pip install -e '.[dev]'")
        instance = AmqttBroker()
    else:
        raise ValueError(f"unknown broker {kind!r}; choose one of {BROKERS}")
    instance.start()
    try:
        yield instance
    finally:
        instance.cleanup()


class Keyring:
    """Deterministic Ed25519 identities for named parties; ``verify`` as transports want it."""

    def __init__(self, *parties: str) -> None:
        self.identities = {
            p: Identity.from_seed(p, hashlib.sha256(p.encode()).digest()) for p in parties
        }

    def signer(self, party: str) -> Signer:
        return self.identities[party].sign

    def verify(self, sender: str, data: bytes, signature: bytes) -> bool:
        identity = self.identities.get(sender)
        if identity is None:
            return False
        try:
            identity.public.verify(data, signature)
        except AuthenticationError:
            return False
        return True


def make_transport(
    url: str,
    party: str,
    keys: Keyring,
    *,
    options: MqttOptions = FAST,
    on_presence: Callable[[str, bool], None] | None = None,
    username: str | None = None,
    password: str | None = None,
) -> MqttTransport:
    config = BrokerConfig.from_url(url, username=username, password=password)
    return MqttTransport(party, SESSION, config, sign=keys.signer(party), verify=keys.verify,
                         options=options, on_presence=on_presence)


def rechunk(frame: bytes, *, transfer_id: bytes | None = None, data: bytes | None = None,
            fix_digest: bool = True) -> bytes:
    """A chunk frame with its transfer id and/or data replaced (header digest recomputed).

    What an attacker on the broker can do: splice a chunk into another transfer, or
    change its bytes and fix the unsigned per-chunk header digest.
    """
    c = decode_chunk(frame)
    new_data = c.data if data is None else data
    digest = hashlib.sha256(new_data).digest() if fix_digest else c.digest
    return (frame[:6] + (transfer_id or c.transfer_id)
            + struct.pack(">IIQ32s", c.seq, c.count, c.total, digest) + new_data)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; return the seconds it took, fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return loop.time() - start


async def receive_within(transport: MqttTransport, timeout: float = 5.0) -> bytes:
    """Receive, failing the test instead of hanging."""
    return await asyncio.wait_for(transport.receive(), timeout)
