"""docs/deployment.md's example mosquitto.conf, run: mosquitto starts on exactly that
text (port and file paths replaced), parties log in with client certificates whose
common name is their party id, and the ACL confines them to their own topics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mqtt_fixtures import FAST, SESSION, Keyring, receive_within

from threshold_fl.errors import TransportError
from transports.broker import BrokerConfig, acl_rules, find_mosquitto, free_port
from transports.mqtt import MqttTransport

DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
ETC = "/etc/mosquitto/tfl/"


def example_config() -> str:
    """The one ```conf block of docs/deployment.md."""
    blocks = re.findall(r"^```conf\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)
    assert len(blocks) == 1, "docs/deployment.md should hold exactly one ```conf block"
    return str(blocks[0])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(directory: Path, stem: str, cert: x509.Certificate,
         key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def make_pki(directory: Path, parties: tuple[str, ...]) -> dict[str, tuple[Path, Path]]:
    """A throwaway CA (``ca.pem``), a server certificate for 127.0.0.1 (``server``) and
    one client certificate per party with the party id as common name."""
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def issue(cn: str, key: ec.EllipticCurvePrivateKey, serial: int,
              extension: x509.ExtensionType | None = None) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(_name(cn))
                   .issuer_name(_name("tfl test CA")).public_key(key.public_key())
                   .serial_number(serial).not_valid_before(now - timedelta(minutes=1))
                   .not_valid_after(now + timedelta(hours=1)))
        if extension is not None:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    ca = (x509.CertificateBuilder().subject_name(_name("tfl test CA"))
          .issuer_name(_name("tfl test CA")).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(minutes=1))
          .not_valid_after(now + timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key = ec.generate_private_key(ec.SECP256R1())
    loopback = x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))])
    files = {"server": _pem(directory, "server", issue("127.0.0.1", server_key, 2, loopback),
                            server_key)}
    for serial, party in enumerate(parties, start=3):
        key = ec.generate_private_key(ec.SECP256R1())
        files[party] = _pem(directory, party, issue(party, key, serial), key)
    return files


@pytest.fixture
def doc_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """mosquitto on the documented configuration; yields its port and its directory."""
    exe = find_mosquitto()
    if exe is None:
        pytest.fail("mosquitto not installed: apt-get install mosquitto")
    make_pki(tmp_path, ("alice", "bob", "mallory"))
    (tmp_path / "tfl.acl").write_text(acl_rules(), encoding="utf-8")
    port = free_port()
    text = example_config()
    assert "listener 8883 0.0.0.0\n" in text and "log_dest stderr\n" in text
    text = (text.replace("listener 8883 0.0.0.0", f"listener {port} 127.0.0.1")
            .replace(ETC, f"{tmp_path}/")
            .replace("log_dest stderr", f"log_dest file {tmp_path / 'mosquitto.log'}"))
    if os.geteuid() == 0:  # else mosquitto switches to its own user, who cannot read tmp
        text += "user root\n"
    (tmp_path / "mosquitto.conf").write_text(text, encoding="utf-8")
    proc = subprocess.Popen([str(exe), "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.02)
        else:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"mosquitto did not start on the documented config:\n{out}")
        yield port, tmp_path
    finally:
        proc.terminate()
        proc.wait(5)


def party(name: str, port: int, directory: Path, *, cert: str | None = None,
          host: str = "127.0.0.1", give_up_after: float = 10.0) -> MqttTransport:
    """A transport for *name*, presenting the client certificate of *cert* (default: its
    own; "" for none)."""
    who = name if cert is None else cert
    files = {"cert_file": directory / f"{who}.pem", "key_file": directory / f"{who}.key"}
    config = BrokerConfig.from_url(f"mqtts://{host}:{port}", ca_file=directory / "ca.pem",
                                   **(files if who else {}))
    keys = Keyring("alice", "bob")
    options = dataclasses.replace(FAST, give_up_after=give_up_after,
                                  operation_timeout_s=min(5.0, 2 * give_up_after))
    return MqttTransport(name, SESSION, config, sign=keys.signer(name), verify=keys.verify,
                         options=options)


async def test_the_documented_config_runs_with_client_certificates_and_the_acl(
        doc_broker: tuple[int, Path]) -> None:
    port, directory = doc_broker
    alice, bob = party("alice", port, directory), party("bob", port, directory)
    # mallory's certificate, claiming to be bob: logged in as 'mallory' (the CN), with
    # 'mallory' as client id, so the real bob stays connected and she reads nothing.
    impostor = party("bob", port, directory, cert="mallory")
    async with alice, bob, impostor:
        await alice.send(["bob"], b"over TLS, as alice")
        assert await receive_within(bob) == b"over TLS, as alice"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(impostor.receive(), 1.0)
        assert bob.connected and bob.stats.reconnects == 0
    log = (directory / "mosquitto.log").read_text()
    for pattern in ("to/+", "ack/+", "presence/+"):  # the warnings the guide announces
        assert f"ACL pattern 'tfl/+/{pattern}' does not contain '%c' or '%u'" in log, log


@pytest.mark.parametrize(("cert", "host", "why", "logged"), [
    # require_certificate: no client certificate, no session
    ("", "127.0.0.1", "unreachable", "peer did not return a certificate"),
    # the server certificate names 127.0.0.1, not localhost: the client hangs up
    (None, "localhost", "CERTIFICATE_VERIFY_FAILED.*Hostname mismatch", "bad certificate"),
])
async def test_the_documented_config_refuses(doc_broker: tuple[int, Path], cert: str | None,
                                             host: str, why: str, logged: str) -> None:
    port, directory = doc_broker
    stranger = party("alice", port, directory, cert=cert, host=host, give_up_after=1.0)
    with pytest.raises(TransportError, match=why):
        await asyncio.wait_for(stranger.connect(), 10)
    assert logged in (directory / "mosquitto.log").read_text()
