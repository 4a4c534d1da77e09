"""Two network namespaces joined by a veth pair, shaped with ``tc``, and a broker in one.

:class:`NamespacePair` makes ``tfl-nl-<pid>-broker`` and ``tfl-nl-<pid>-parties``, a veth
pair between them with private addresses (:data:`BROKER_ADDRESS`, :data:`PARTY_ADDRESS`)
and loopback up in each: nothing in the machine's own namespace changes.  All the
federation's traffic then crosses the veth, whose two ends can be shaped with a token
bucket (``tc qdisc ... tbf``, :meth:`NamespacePair.shape`), one per direction: the
broker's link, carrying every party's traffic.  (``netem``, for delay, is not in every
kernel; this one has none.)  :meth:`NamespacePair.broker` runs a private mosquitto in
the broker's namespace, :meth:`NamespacePair.relay` a delaying relay in front of it
(:mod:`threshold_fl.bench.relay`): latency without netem.

Needs root, ``ip`` and ``tc``.  The pair is removed on exit, failure included, and
:func:`remove_stale` removes pairs left by processes that are gone (a SIGKILLed run).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from threshold_fl.bench.processes import stop
from threshold_fl.errors import ThresholdFLError, TransportError
from transports.broker import find_mosquitto, mosquitto_config

__all__ = ["BROKER_ADDRESS", "DEFAULT_CONGESTION", "PARTY_ADDRESS", "PREFIX", "NamespacePair",
           "NetworkSetupError", "QdiscCounters", "namespaces_usable", "remove_stale"]

PREFIX = "tfl-nl-"
BROKER_ADDRESS = "10.231.0.1"
PARTY_ADDRESS = "10.231.0.2"
BROKER_PORT = 1883
RELAY_PORT = 1884
_STALE = re.compile(rf"^{re.escape(PREFIX)}(\d+)[a-z]*-(broker|parties)$")
_STALE_DEV = re.compile(r"^\d+: (tnl(\d+)[a-z]{0,4}[bp])[@:]", re.MULTILINE)
_PAIRS = itertools.count()  # this process's pairs, for their veths' names
_RELAY_START_S = 15.0
#: Loss-based, as Linux's default (cubic) is; cubic itself is not in this machine's
#: tcp_allowed_congestion_control, which is all a namespace may choose from.  A namespace
#: inherits the machine's choice otherwise, here BBR (docs/benchmarks.md, "Shaped link").
DEFAULT_CONGESTION = "reno"
_CC_SYSCTL = "net.ipv4.tcp_congestion_control"


class NetworkSetupError(ThresholdFLError):
    """A namespace, link or shaping command failed; the message names the command."""


def _run(argv: Sequence[str], *, check: bool = True) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetworkSetupError(f"`{' '.join(argv)}` failed: {error}") from None
    if check and done.returncode != 0:
        raise NetworkSetupError(f"`{' '.join(argv)}` exited with {done.returncode}: "
                                f"{done.stderr.strip()} (this needs root, iproute2 and tc)")
    return done.stdout


def namespaces_usable() -> str | None:
    """None if this process can make namespaces and shape a link in one, else why not."""
    if os.geteuid() != 0:
        return "not root: network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"`{tool}` (iproute2) is not installed"
    if find_mosquitto() is None:
        return "mosquitto is not installed"
    try:
        with NamespacePair(tag="probe") as pair:
            pair.shape(100e6)
    except NetworkSetupError as error:
        return f"cannot shape a link in a namespace: {error}"
    return None


def remove_stale() -> list[str]:
    """Delete namespaces of ours whose process is gone, and veths of ours that such a
    process left in this namespace (killed between making and moving them); their
    names."""
    removed = []
    for line in _run(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.strip() else ""
        found = _STALE.match(name)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            _run(["ip", "netns", "delete", name], check=False)
            removed.append(name)
    for found in _STALE_DEV.finditer(_run(["ip", "-o", "link", "show"])):
        if not Path(f"/proc/{found.group(2)}").exists():
            _run(["ip", "link", "delete", found.group(1)], check=False)
            removed.append(found.group(1))
    return removed


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@dataclass(frozen=True)
class QdiscCounters:
    """What a tbf qdisc let through and dropped (``tc -s qdisc show``)."""

    sent_bytes: int
    dropped: int


class NamespacePair:
    """The broker's and the parties' namespaces and the veth between them."""

    def __init__(self, tag: str = "") -> None:
        if not re.fullmatch(r"[a-z]{0,8}", tag):
            raise NetworkSetupError(f"namespace tag must be 0-8 lowercase letters, got {tag!r}")
        pid = os.getpid()
        self.broker_ns = f"{PREFIX}{pid}{tag}-broker"
        self.party_ns = f"{PREFIX}{pid}{tag}-parties"
        # Interface names have at most 15 characters, too few for the tag: this
        # process's count of pairs, in letters, tells its pairs apart instead.
        suffix = f"{pid}{_letters(next(_PAIRS))}"
        self.broker_dev, self.party_dev = f"tnl{suffix}b", f"tnl{suffix}p"
        self.rate_bit_s: float | None = None

    def __enter__(self) -> NamespacePair:
        try:
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.remove()

    def _create(self) -> None:
        for namespace in (self.broker_ns, self.party_ns):
            _run(["ip", "netns", "add", namespace])
        _run(["ip", "link", "add", self.broker_dev, "type", "veth", "peer", "name",
              self.party_dev])
        for dev, namespace, address in ((self.broker_dev, self.broker_ns, BROKER_ADDRESS),
                                        (self.party_dev, self.party_ns, PARTY_ADDRESS)):
            _run(["ip", "link", "set", dev, "netns", namespace])
            _run(["ip", "-n", namespace, "addr", "add", f"{address}/30", "dev", dev])
            _run(["ip", "-n", namespace, "link", "set", dev, "up"])
            _run(["ip", "-n", namespace, "link", "set", "lo", "up"])

    def remove(self) -> None:
        """Delete both namespaces (the veth goes with them) and the veth if it never
        left this namespace; idempotent."""
        for namespace in (self.broker_ns, self.party_ns):
            _run(["ip", "netns", "delete", namespace], check=False)
        _run(["ip", "link", "delete", self.broker_dev], check=False)

    def _ends(self) -> tuple[tuple[str, str], ...]:
        return ((self.broker_ns, self.broker_dev), (self.party_ns, self.party_dev))

    def shape(self, rate_bit_s: float | None) -> None:
        """A token bucket of *rate_bit_s* on both ends (each direction); None: none."""
        for namespace, dev in self._ends():
            _run(["tc", "-n", namespace, "qdisc", "del", "dev", dev, "root"], check=False)
            if rate_bit_s is not None:
                # A small bucket (1 ms of traffic, at least two full frames), so that
                # a message after a pause is not let through at veth speed, as no real
                # link would; the queue 50 ms, so PUBACKs wait little behind it.
                burst = max(2 * 1514, int(rate_bit_s / 8 * 0.001))
                _run(["tc", "-n", namespace, "qdisc", "add", "dev", dev, "root", "tbf",
                      "rate", f"{int(rate_bit_s)}bit", "burst", str(burst), "latency", "50ms"])
        self.rate_bit_s = rate_bit_s

    def congestion_control(self, name: str) -> str:
        """Set TCP congestion control *name* in both namespaces ("system": leave the one
        they inherited); returns the one in use."""
        if name != "system":
            # Outside the machine's own namespace only the allowed ones can be chosen.
            allowed = _run(["sysctl", "-n", "net.ipv4.tcp_allowed_congestion_control"]).split()
            if name not in allowed:
                raise NetworkSetupError(
                    f"TCP congestion control {name!r} cannot be chosen in a namespace here: "
                    f"net.ipv4.tcp_allowed_congestion_control is {' '.join(allowed)}")
            for namespace in (self.broker_ns, self.party_ns):
                _run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w",
                      f"{_CC_SYSCTL}={name}"])
        found = {_run(["ip", "netns", "exec", namespace, "sysctl", "-n", _CC_SYSCTL]).strip()
                 for namespace in (self.broker_ns, self.party_ns)}
        if len(found) != 1:
            raise NetworkSetupError(f"the two namespaces use different TCP congestion "
                                    f"control: {sorted(found)}")
        return found.pop()

    def counters(self) -> dict[str, QdiscCounters]:
        """Per direction ("up": parties to broker, "down": back), what the tbf passed."""
        found = {}
        for direction, (namespace, dev) in zip(("down", "up"), self._ends(), strict=True):
            text = _run(["tc", "-s", "-n", namespace, "qdisc", "show", "dev", dev])
            sent = re.search(r"Sent (\d+) bytes \d+ pkt \(dropped (\d+)", text)
            if sent is None:
                raise NetworkSetupError(f"no counters in `tc -s qdisc show dev {dev}`: {text!r}")
            found[direction] = QdiscCounters(int(sent.group(1)), int(sent.group(2)))
        return found

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """*argv* run in the parties' namespace."""
        return ["ip", "netns", "exec", self.party_ns, *argv]

    @contextlib.contextmanager
    def relay(self, delay_s: float) -> Iterator[str]:
        """A delaying relay (:mod:`threshold_fl.bench.relay`) in front of the broker, in
        its namespace: *delay_s* each way.  Yields the URL the parties then use."""
        argv = ["ip", "netns", "exec", self.broker_ns, sys.executable, "-m",
                "threshold_fl.bench.relay", "--listen", f"{BROKER_ADDRESS}:{RELAY_PORT}",
                "--to", f"{BROKER_ADDRESS}:{BROKER_PORT}", "--delay-ms", f"{delay_s * 1e3:g}"]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        try:
            assert process.stdout is not None
            with selectors.DefaultSelector() as selector:  # it says so once it listens
                selector.register(process.stdout, selectors.EVENT_READ)
                if not selector.select(_RELAY_START_S):
                    raise NetworkSetupError(f"the delaying relay said nothing within "
                                            f"{_RELAY_START_S:g} s of starting")
            line = process.stdout.readline()  # its line, or "" if it exited
            if not line.startswith("relay:"):
                raise NetworkSetupError(f"the delaying relay did not start: {line.strip()!r}")
            yield f"mqtt://{BROKER_ADDRESS}:{RELAY_PORT}"
        finally:
            stop(process)

    @contextlib.contextmanager
    def broker(self, timeout_s: float = 15.0) -> Iterator[str]:
        """A private mosquitto in the broker's namespace; yields its URL."""
        executable = find_mosquitto()
        if executable is None:
            raise TransportError("mosquitto is not installed (apt-get install mosquitto)")
        with contextlib.ExitStack() as cleanup:
            folder = Path(cleanup.enter_context(
                tempfile.TemporaryDirectory(prefix="tfl-netns-broker-",
                                            ignore_cleanup_errors=True)))
            log = folder / "mosquitto.log"
            conf = folder / "mosquitto.conf"
            conf.write_text(mosquitto_config(port=BROKER_PORT, host=BROKER_ADDRESS,
                                             log_file=log, user="root"), encoding="utf-8")
            process = subprocess.Popen(["ip", "netns", "exec", self.broker_ns,
                                        str(executable), "-c", str(conf)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cleanup.callback(stop, process)  # stopped before its folder goes
            deadline = time.monotonic() + timeout_s
            while " running" not in _text(log):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise NetworkSetupError(f"mosquitto did not start in {self.broker_ns}; "
                                            f"its log: {_text(log)[-500:] or 'empty'}")
                time.sleep(0.05)
            yield f"mqtt://{BROKER_ADDRESS}:{BROKER_PORT}"


def _letters(number: int) -> str:
    """0 -> "a", 25 -> "z", 26 -> "ba": *number* in base 26, in letters."""
    digits = ""
    while True:
        number, digit = divmod(number, 26)
        digits = chr(ord("a") + digit) + digits
        if not number:
            return digits
