"""MqttTransport's set-up against real brokers (mosquitto, started per test on a free
loopback port, and amqtt): the deployment ACL, TLS and MQTT 5, the private broker, and
configuration errors.  The transport's behaviour in a session (exchange, loss, presence,
broker outages) is tested in test_mqtt_transport.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import sys
import time
from pathlib import Path

import aiomqtt
import mqtt_fixtures
import pytest
from mqtt_fixtures import (
    FAST,
    SESSION,
    Keyring,
    make_transport,
    receive_within,
    wait_until,
)

import transports.broker as broker_module
from threshold_fl.errors import ParameterError, TransportError
from transports.broker import (
    BrokerConfig,
    BrokerProcess,
    MosquittoBroker,
    acl_rules,
    mosquitto_config,
    private_broker,
    write_password_file,
)
from transports.mqtt import MqttOptions, MqttTransport

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "mosquitto"
MiB = 1 << 20


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
    # a deferred transfer must outlive the gap between its sender's probes
    with pytest.raises(ParameterError, match=r"max_ack_timeout_s=120.0 must be below "
                                             r"limits.expiry_s=120.0"):
        MqttOptions(max_ack_timeout_s=120.0)
    assert MqttOptions(max_ack_timeout_s=119.0).limits.expiry_s == 120.0


def test_the_broker_base_names_no_broker_of_its_own() -> None:
    # Only MosquittoBroker and AmqttBroker know how to start a broker.
    with pytest.raises(TypeError, match="_argv"):
        BrokerProcess(port=None, host="127.0.0.1")  # type: ignore[abstract]
