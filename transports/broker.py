"""MQTT brokers for tests, demos and deployments.

- :func:`private_broker`: ``async with private_broker() as url:`` runs a private
  mosquitto on a free loopback port (own temporary config, no persistence) and stops
  it afterwards; without mosquitto it falls back, and says so, to an in-process amqtt
  broker (``pip install 'threshold-fl[broker]'``).
- :class:`MosquittoBroker`: the same mosquitto as a synchronous object that can be
  stopped and restarted on the same port (what tests need to cut a connection);
  :class:`AmqttBroker`: amqtt likewise, in its own process (the second broker the
  multi-process tests run against).
- :func:`acl_rules`, :func:`mosquitto_config`, :func:`write_password_file`: the
  deployment configuration of ``deploy/mosquitto`` (password file and an ACL that
  confines each party, logged in with its party id as username, to its own topics).
- :func:`topic` and :class:`BrokerConfig`: the topic layout those ACLs rely on, and
  where and how to reach a broker (URL, credentials, TLS files).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar
from urllib.parse import urlsplit

from threshold_fl.errors import ParameterError, TransportError
from transports.frames import MAX_CHUNK_SIZE, validate_id

__all__ = [
    "SBIN_DIRS", "DEFAULT_MAX_PACKET_SIZE", "INSTALL_HINT",
    "find_mosquitto", "find_mosquitto_passwd", "free_port",
    "acl_rules", "mosquitto_config", "write_password_file", "write_deploy_config",
    "BrokerProcess", "MosquittoBroker", "AmqttBroker", "amqtt_config", "amqtt_available",
    "private_broker",
    "TOPIC_ROOT", "topic", "BrokerConfig",
]

_LOG = logging.getLogger(__name__)
#: Where distributions put mosquitto, often not on a user's PATH.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")
#: Largest MQTT packet the brokers we configure accept: a 4 MiB chunk plus headroom.
#: Bigger packets are refused by the broker, which is why payloads travel as chunks.
DEFAULT_MAX_PACKET_SIZE = MAX_CHUNK_SIZE + (1 << 20)
INSTALL_HINT = (
    "install mosquitto (`apt-get install mosquitto`) or the in-process fallback "
    "(`pip install 'threshold-fl[broker]'`, which brings amqtt)"
)


# --------------------------------------------------------------------------- topics, URLs

#: Every topic lives under ``tfl/<session>/``: see :mod:`transports.mqtt` for the layout.
TOPIC_ROOT = "tfl"
_SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}


def topic(session: str, kind: str, party: str) -> str:
    """``tfl/<session>/<kind>/<party>``, after validating both ids for topic safety."""
    return f"{TOPIC_ROOT}/{validate_id('session', session)}/{kind}/{validate_id('party id', party)}"


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to reach the broker; build it with :meth:`from_url`."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> BrokerConfig:
        """Parse ``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS) and check the files."""
        tls, host, port = _parse_url(url)
        files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        given = {k: str(v) for k, v in files.items() if v is not None}
        if given and not tls:
            raise ParameterError(f"{sorted(given)} given for plain {url!r}: use mqtts:// for TLS")
        for name, path in given.items():
            if not Path(path).is_file():
                raise ParameterError(f"{name} {path!r} does not exist or is not a file")
        if (cert_file is None) != (key_file is None):
            raise ParameterError("a client certificate needs both cert_file and key_file")
        if password is not None and username is None:
            raise ParameterError("a password was given without a username")
        return cls(host, port, tls, username, password, given.get("ca_file"),
                   given.get("cert_file"), given.get("key_file"))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def _parse_url(url: str) -> tuple[bool, str, int]:
    if not isinstance(url, str):
        raise ParameterError(f"broker URL must be a string, got {url!r}")
    parts = urlsplit(url.strip())
    if parts.scheme not in _SCHEMES:
        raise ParameterError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if "@" in parts.netloc:
        raise ParameterError(
            f"broker URL {url!r}: pass username/password separately, not in the URL "
            "(URLs end up in logs)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ParameterError(f"broker URL {url!r}: no path, query or fragment allowed")
    tls, default_port = _SCHEMES[parts.scheme]
    try:
        port = default_port if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ParameterError(f"broker URL {url!r}: port must be a number in 1-65535")
    if not parts.hostname:
        raise ParameterError(f"broker URL {url!r} names no host")
    return tls, parts.hostname, port


# --------------------------------------------------------------------------- finding mosquitto


def _find(name: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    return Path(found) if found else None


def find_mosquitto() -> Path | None:
    """The mosquitto executable on PATH or in /usr/sbin, /usr/local/sbin; None if absent."""
    return _find("mosquitto")


def find_mosquitto_passwd() -> Path | None:
    """The mosquitto_passwd tool (same search as :func:`find_mosquitto`)."""
    return _find("mosquitto_passwd")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it; another process may race us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- configuration


def acl_rules(session: str | None = None) -> str:
    """The mosquitto ACL confining each party (username = party id) to its own topics.

    A party reads only its inbox and its acks, writes into any party's inbox and ack
    topic (sending and acknowledging need that), and writes only its own presence (its
    Last Will included) while reading everyone's.  ``session`` pins the rules to one
    session; by default they hold for any.
    """
    s = "+" if session is None else validate_id("session", session)
    root = f"{TOPIC_ROOT}/{s}"
    return "\n".join((
        "# threshold-fl: each client logs in with its party id as username (%u).",
        "# Pattern lines apply to every authenticated client; nothing else is allowed.",
        "# Own inbox and acks: read.  Nobody else's inbox can be read or subscribed.",
        f"pattern read {root}/to/%u",
        f"pattern read {root}/ack/%u",
        "# Any party's inbox and ack topic: write (to send, and to acknowledge).",
        f"pattern write {root}/to/+",
        f"pattern write {root}/ack/+",
        "# Own presence (and Last Will): write.  Everyone's presence: read.",
        f"pattern write {root}/presence/%u",
        f"pattern read {root}/presence/+",
        "",
    ))


def mosquitto_config(
    *,
    port: int,
    host: str = "127.0.0.1",
    password_file: str | Path | None = None,
    acl_file: str | Path | None = None,
    log_file: str | Path | None = None,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    user: str | None = None,
    tls: tuple[str | Path, str | Path, str | Path] | None = None,
) -> str:
    """A mosquitto 2.x config: one listener, no persistence, bounded packet size.

    With ``password_file`` anonymous clients are refused and, so that no party can
    evict another by reusing its client id, the username becomes the client id.
    ``user``: the account mosquitto switches to when started as root (its default,
    ``mosquitto``, cannot read files private to whoever started it).  ``tls``: CA,
    server certificate and key files make the listener speak TLS only (``mqtts://``).
    """
    if not 0 < port < 65536:
        raise ParameterError(f"port must lie in 1-65535, got {port!r}")
    lines = [
        "# threshold-fl broker configuration (mosquitto 2.x)",
        "per_listener_settings false",
        f"listener {port} {host}",
        *([f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"] if tls else []),
        "persistence false",
        f"max_packet_size {max_packet_size}",
        # Frames are acked end to end; the broker's own queue per client stays modest.
        "max_queued_messages 1000",
        # Without it Nagle's algorithm holds each small packet to a client (a PUBACK, an
        # ack frame) until the client's delayed ACK, about 40 ms: one per QoS 1 publish.
        "set_tcp_nodelay true",
    ]
    if password_file is None:
        lines.append("allow_anonymous true")
    else:
        lines += ["allow_anonymous false", f"password_file {password_file}",
                  "use_username_as_clientid true"]
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    if user is not None:
        lines.append(f"user {user}")
    lines.append(f"log_dest file {log_file}" if log_file else "log_dest stderr")
    lines += [f"log_type {t}" for t in ("error", "warning", "notice", "information")]
    return "\n".join(lines) + "\n"


def write_password_file(path: str | Path, credentials: Mapping[str, str]) -> Path:
    """Create a mosquitto password file with ``mosquitto_passwd -b`` (hashed passwords)."""
    tool = find_mosquitto_passwd()
    if tool is None:
        raise TransportError(f"mosquitto_passwd not found; {INSTALL_HINT}")
    path = Path(path)
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for user, password in credentials.items():
        validate_id("party id", user)
        subprocess.run([str(tool), "-b", str(path), user, password], check=True,
                       capture_output=True, timeout=30)
    return path


def write_deploy_config(
    directory: str | Path,
    credentials: Mapping[str, str],
    *,
    session: str | None = None,
    port: int = 1883,
    host: str = "0.0.0.0",
) -> Path:
    """Write ``mosquitto.conf``, ``tfl.acl`` and ``tfl.passwd`` for ``credentials``.

    ``credentials`` maps each party id (the MQTT username) to its password.  Returns the
    path of ``mosquitto.conf``; run ``mosquitto -c`` on it.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    passwd = write_password_file(out / "tfl.passwd", credentials)
    acl = out / "tfl.acl"
    acl.write_text(acl_rules(session), encoding="utf-8")
    conf = out / "mosquitto.conf"
    conf.write_text(mosquitto_config(port=port, host=host, password_file=passwd.resolve(),
                                     acl_file=acl.resolve()), encoding="utf-8")
    return conf


# --------------------------------------------------------------------------- broker processes


class BrokerProcess(abc.ABC):
    """A broker subprocess on a loopback port, restartable on the same port.

    Subclasses say how to write its configuration and start it (:meth:`_argv`), so
    this base cannot be made on its own.
    """

    name = "broker"

    def __init__(self, *, port: int | None, host: str) -> None:
        self.host = host
        self._fixed_port, self.port = port is not None, port or free_port(host)
        self._dir = Path(tempfile.mkdtemp(prefix=f"tfl-{self.name}-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def _address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (to measure its CPU time, say)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self._dir / f"{self.name}.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """Write the configuration for the current port; the command that starts it."""

    def _output(self) -> int | IO[bytes]:
        """Where the process's stdout and stderr go."""
        return subprocess.DEVNULL

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until the port accepts connections.

        A port picked by us that another process took meanwhile is replaced, but only
        on the first start: a restart must come back on the same port.
        """
        for _ in range(3):
            if self._try_start(timeout):
                self._fixed_port = True
                return
            if self._fixed_port:
                break
            self.port = free_port(self.host)
        raise TransportError(f"{self.name} did not start on {self.url}:\n"
                             f"{self.log_text()[-2000:]}")

    def _try_start(self, timeout: float) -> bool:
        output = self._output()
        try:
            self._proc = subprocess.Popen(self._argv(), stdout=output, stderr=output)
        finally:
            if not isinstance(output, int):
                output.close()  # the child holds its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(self._address, 0.2):
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self: _B) -> _B:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


_B = TypeVar("_B", bound=BrokerProcess)


class MosquittoBroker(BrokerProcess):
    """A mosquitto subprocess on a loopback port, restartable on the same port.

    ``password_file``, ``acl_file`` and ``tls`` are as for :func:`mosquitto_config`.
    """

    name = "mosquitto"

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        password_file: str | Path | None = None,
        acl_file: str | Path | None = None,
        executable: str | Path | None = None,
        tls: tuple[str | Path, str | Path, str | Path] | None = None,
    ) -> None:
        exe = Path(executable) if executable else find_mosquitto()
        if exe is None:
            raise TransportError(f"mosquitto not found on PATH or in {SBIN_DIRS}; {INSTALL_HINT}")
        super().__init__(port=port, host=host)
        self.executable = exe
        self._password_file, self._acl_file, self._tls = password_file, acl_file, tls

    @property
    def url(self) -> str:
        return f"{'mqtts' if self._tls else 'mqtt'}://{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        conf = self._dir / "mosquitto.conf"
        conf.write_text(mosquitto_config(
            port=self.port, host=self.host, password_file=self._password_file,
            acl_file=self._acl_file, log_file=self.log_path, tls=self._tls,
            # A private broker runs as whoever started it: as root, mosquitto would
            # otherwise switch to its own user and fail to read the caller's files.
            user="root" if os.geteuid() == 0 else None), encoding="utf-8")
        return [str(self.executable), "-c", str(conf)]


def amqtt_config(*, port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """An amqtt broker configuration: one plain listener, anonymous clients."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }


def amqtt_available() -> bool:
    """Whether the optional amqtt broker (``threshold-fl[broker]``) is installed."""
    return importlib.util.find_spec("amqtt") is not None


class AmqttBroker(BrokerProcess):
    """An amqtt broker in its own process (amqtt's own command line under this Python),
    anonymous, on a loopback port, restartable on the same port: the second broker
    implementation the multi-process tests run against.

    Where amqtt 0.12 differs from mosquitto (measured; docs/deployment.md): it never
    drops a client that stays connected but silent, since its keepalive timeout is a
    no-op, so a frozen party is not seen offline (no Last Will) until it dies or a stage
    deadline passes; and it has no packet size limit nor bounded per-client queues.
    A killed party's Last Will fires at once, as on mosquitto.
    """

    name = "amqtt"

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        if not amqtt_available():
            raise TransportError(f"amqtt is not installed; {INSTALL_HINT}")
        super().__init__(port=port, host=host)

    def _argv(self) -> list[str]:
        conf = self._dir / "amqtt.yaml"  # JSON is YAML
        conf.write_text(json.dumps(amqtt_config(port=self.port, host=self.host), indent=1),
                        encoding="utf-8")
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]

    def _output(self) -> int | IO[bytes]:
        return self.log_path.open("ab")


# --------------------------------------------------------------------------- private broker


@contextlib.asynccontextmanager
async def private_broker(
    *, backend: Literal["auto", "mosquitto", "amqtt"] = "auto", host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Yield the URL of a private broker on a free port of ``host``; stop it on exit.

    ``auto`` prefers mosquitto and falls back to amqtt with a warning; name a backend
    to insist on it.  Neither available: :class:`TransportError` saying what to install.
    """
    if backend not in ("auto", "mosquitto", "amqtt"):
        raise ParameterError(f"backend must be 'auto', 'mosquitto' or 'amqtt', got {backend!r}")
    exe = find_mosquitto() if backend != "amqtt" else None
    if exe is not None:
        broker = MosquittoBroker(host=host, executable=exe)
        await asyncio.to_thread(broker.start)
        try:
            yield broker.url
        finally:
            await asyncio.to_thread(broker.cleanup)
        return
    if backend == "mosquitto":
        raise TransportError(f"mosquitto not found on PATH or in {SBIN_DIRS}; {INSTALL_HINT}")
    if backend == "auto":
        _LOG.warning("mosquitto not found on PATH or in %s: falling back to an in-process "
                     "amqtt broker (fine for tests and demos; use mosquitto for real runs)",
                     SBIN_DIRS)
    async with _amqtt_broker(host) as url:
        yield url


@contextlib.asynccontextmanager
async def _amqtt_broker(host: str) -> AsyncIterator[str]:
    try:  # optional dependency, imported by name so the package never needs it
        amqtt_broker: Any = importlib.import_module("amqtt.broker")
    except ImportError:
        raise TransportError(f"no MQTT broker available: {INSTALL_HINT}") from None
    port = free_port(host)
    broker = amqtt_broker.Broker(amqtt_config(port=port, host=host))
    await broker.start()
    try:
        yield f"mqtt://{host}:{port}"
    finally:
        await broker.shutdown()
