"""Logs that nobody can flood: rate-limited refusals, and one warning per broker outage.

Unit tests of :mod:`transports.lograte` (time passed in, no clock), then the MQTT
transport against a real mosquitto flooded with forged frames, and a broker that is
not there: the counters count everything, the log says it once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import aiomqtt
import mqtt_fixtures
import pytest
from mqtt_fixtures import FAST, SESSION, Keyring, make_transport, receive_within, wait_until

from threshold_fl.app.cli import main as cli_main
from threshold_fl.errors import TransportError
from transports.broker import MosquittoBroker, free_port
from transports.frames import split
from transports.lograte import MAX_KEYS, OTHERS, Outage, RateLimitedLog, printable
from transports.mqtt import MqttTransport

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)

LOGGER = "test.lograte"
MQTT_LOGGER = "transports.mqtt"


def messages(caplog: pytest.LogCaptureFixture, logger: str = LOGGER,
             level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= level]


# ------------------------------------------------------------------ RateLimitedLog


def test_burst_then_counted_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log = RateLimitedLog(logging.getLogger(LOGGER), burst=3, period_s=60.0)
    written = [log.log("mallory", "bad signature", f"forged #{i}", now=float(i))
               for i in range(10)]
    assert written == [True] * 3 + [False] * 7
    assert log.log("mallory", "bad magic", "another reason", now=10.0)  # its own budget
    assert log.log("alice", "bad signature", "another sender", now=10.0)
    log.flush(59.0)  # the period is not over: nothing yet
    assert messages(caplog) == ["forged #0", "forged #1", "forged #2", "another reason",
                                "another sender"]
    log.flush(61.0)
    assert messages(caplog)[5:] == [
        "7 more bad signature from 'mallory' suppressed in the last 61 s"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    log.flush(200.0)  # counted once: nothing more to say
    assert len(messages(caplog)) == 6
    # A new period: the next three are written again.
    assert [log.log("mallory", "bad signature", "again", now=200.0) for _ in range(4)] == [
        True, True, True, False]


def test_a_log_call_flushes_ended_periods_and_final_flush_ends_all(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = RateLimitedLog(logging.getLogger(LOGGER), level=logging.INFO, burst=1, period_s=10.0)
    for now in (0.0, 1.0, 2.0):
        log.log("a", "late", "late message", now)
    log.log("b", "late", "first from b", 11.0)  # a's period ended: its count comes first
    log.log("b", "late", "second from b", 12.0)
    assert messages(caplog) == ["late message", "2 more late from 'a' suppressed in the last 11 s",
                                "first from b"]
    log.flush(13.0, final=True)  # shutting down: periods still running end too
    assert messages(caplog)[-1] == "1 more late from 'b' suppressed in the last 2 s"
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_invented_sender_names_are_capped_and_sanitised(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    log = RateLimitedLog(logging.getLogger(LOGGER), burst=1, period_s=60.0)
    for i in range(MAX_KEYS + 100):
        log.log(f"sender-{i}", "bad signature", "forged", now=1.0)
    log.log("sender-0", "bad signature", "forged", now=1.0)
    assert len(messages(caplog)) == MAX_KEYS + 1  # one per key, the overflow key included
    log.flush(100.0)
    summaries = messages(caplog)[MAX_KEYS + 1:]
    assert summaries == ["1 more bad signature from 'sender-0' suppressed in the last 99 s",
                         f"99 more bad signature from {OTHERS} suppressed in the last 99 s"]
    evil = "x" * 500 + "\n\x1b[31mFAKE LOG LINE"
    assert printable(evil) == repr("x" * 64) + "..."
    assert printable("a\nb") == "'a\\nb'" and "\n" not in printable("\n" * 100)


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimitedLog(logging.getLogger(LOGGER), burst=0)
    with pytest.raises(ValueError, match="period_s"):
        RateLimitedLog(logging.getLogger(LOGGER), period_s=0.0)


# ------------------------------------------------------------------ Outage


def test_outage_backs_off_warns_once_and_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    outage = Outage(logging.getLogger(LOGGER), "party 'a': broker mqtt://h:1", initial_s=0.5,
                    max_s=2.0, give_up_after=6.0, now=0.0)
    waits, now = [], 0.0
    while (wait := outage.failed("refused", now)) is not None:
        waits.append(wait)
        now += wait
    assert waits == [0.5, 1.0, 2.0, 2.0, 0.5]  # capped, and the last one up to the deadline
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 4  # one line per attempt
    assert messages(caplog)[0] == ("party 'a': broker mqtt://h:1: refused; retrying for up "
                                   "to 6 s (give_up_after)")
    caplog.clear()
    outage.connected(7.0)
    assert messages(caplog) == ["party 'a': broker mqtt://h:1: connected after 7.0 s and 5 "
                                "failed attempt(s)"]
    outage.connected(8.0)  # connected at the first attempt: nothing to say
    assert outage.failed("connection lost", 20.0) == 0.5  # a new outage: backoff reset
    assert messages(caplog, level=logging.WARNING) == [
        "party 'a': broker mqtt://h:1: connection lost; retrying for up to 6 s (give_up_after)"]


# ------------------------------------------------------------------ the MQTT transport


def _forged(keys: Keyring, n: int) -> bytes:
    """A manifest that claims to come from alice, signed by mallory."""
    return split(b"forged", sender="alice", recipient="bob", channel=SESSION,
                 transfer_id=n.to_bytes(16, "big"), sign=keys.signer("mallory")).manifest


async def test_a_flood_of_forged_frames_is_counted_not_logged(
        broker: MosquittoBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=MQTT_LOGGER)
    keys = Keyring("alice", "bob", "mallory")
    bob = make_transport(broker.url, "bob", keys)
    async with bob, aiomqtt.Client(broker.host, broker.port) as raw:
        for n in range(200):
            await raw.publish(f"tfl/{SESSION}/to/bob", _forged(keys, n), qos=1)
        await wait_until(lambda: bob.stats.rejected == 200, 10, "200 rejections")
        warnings = messages(caplog, MQTT_LOGGER, logging.WARNING)
        assert len(warnings) == FAST.log_burst  # 3: the rest is counted
        assert all("bad signature" in w and "'alice'" in w for w in warnings)
        async with make_transport(broker.url, "alice", keys) as alice:  # still serving
            await alice.send(["bob"], b"genuine")
            assert await receive_within(bob) == b"genuine"
    assert bob.stats.rejected == 200 and len(bob.stats.last_rejections) == 10
    summary = messages(caplog, MQTT_LOGGER, logging.WARNING)[3:]  # summed up at close
    assert len(summary) == 1 and summary[0].startswith(
        "party 'bob': 197 more bad signature from 'alice' suppressed in the last ")


def _accounted(found: list[str], kind: str, line: str) -> int:
    """Lines written about *kind* plus the counts their summaries report."""
    summed = [int(m.split()[2]) for m in found if f" more {kind} from " in m]
    return sum(line in m for m in found) + sum(summed)


async def test_counts_are_logged_when_the_period_ends_without_new_frames(
        broker: MosquittoBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=MQTT_LOGGER)
    options = dataclasses.replace(FAST, log_burst=2, log_period_s=0.2)
    bob = make_transport(broker.url, "bob", Keyring("bob"), options=options)
    evil = "e" * 300 + "\u202e'\"FAKE"  # right-to-left override, quotes
    async with bob, aiomqtt.Client(broker.host, broker.port) as raw:
        for _ in range(30):
            await raw.publish(f"tfl/{SESSION}/to/bob", b"garbage" * 10, qos=1)
            await raw.publish(f"tfl/{SESSION}/presence/{evil}", b"{", qos=1)
        await wait_until(lambda: bob.stats.rejected == 30, 10, "30 rejections")

        def summed_up() -> bool:  # every refusal written or counted, without a close
            found = messages(caplog, MQTT_LOGGER)
            return (_accounted(found, "bad magic", "rejected frame (bad magic)") == 30
                    and _accounted(found, "malformed presence", "ignoring malformed") == 30)

        await wait_until(summed_up, 10, "the flusher to sum the flood up")
        found = messages(caplog, MQTT_LOGGER)
        assert any(" more bad magic from 'unknown' suppressed" in m for m in found)
        assert any(" more malformed presence from 'eeee" in m for m in found)
        assert all("\u202e" not in m and len(m) < 300 for m in found)  # cut and escaped


# ------------------------------------------------------------------ an unreachable broker


async def test_an_unreachable_broker_warns_once_and_only_raises_the_error(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger=MQTT_LOGGER)
    attempts = 0
    new_client = MqttTransport._new_client

    def counted(transport: MqttTransport) -> aiomqtt.Client:
        nonlocal attempts
        attempts += 1
        return new_client(transport)

    monkeypatch.setattr(MqttTransport, "_new_client", counted)
    url = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens there
    options = dataclasses.replace(FAST, give_up_after=1.5, reconnect_initial_s=0.05,
                                  reconnect_max_s=0.2)
    alice = make_transport(url, "alice", Keyring("alice"), options=options)
    with pytest.raises(TransportError, match=r"unreachable for 1.5 s") as failure:
        await asyncio.wait_for(alice.connect(), 5)  # raised as before
    records = [r for r in caplog.records if r.name == MQTT_LOGGER]
    assert attempts >= 5  # it did retry
    assert len(records) <= attempts  # at most one line per attempt
    assert [r.levelno for r in records].count(logging.WARNING) == 1
    assert "retrying for up to 1.5 s" in records[0].getMessage()
    assert not [r for r in records if r.levelno > logging.WARNING]
    assert str(failure.value) not in caplog.text  # raised, not also logged: the caller says it


def test_the_party_command_says_the_final_error_once(tmp_path: Path) -> None:
    for party in ("server", "c1", "c2"):
        assert cli_main(["init-party", party, "--dir", str(tmp_path / party)]) == 0
    manifest = tmp_path / "manifest.json"
    assert cli_main(["manifest", "--aggregator", str(tmp_path / "server"), "--client",
                     str(tmp_path / "c1"), "--client", str(tmp_path / "c2"), "--model", "mlp",
                     "--rounds", "1", "--out", str(manifest)]) == 0
    url = f"mqtt://127.0.0.1:{free_port()}"
    run = subprocess.run(
        [sys.executable, "-m", "threshold_fl.app.cli", "aggregator", "--manifest", str(manifest),
         "--identity", str(tmp_path / "server"), "--broker", url, "--give-up-after", "1.5"],
        capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert sum("unreachable for 1.5 s" in line for line in lines) == 1, run.stderr
    assert sum("retrying" in line for line in lines) == 1, run.stderr  # one warning
