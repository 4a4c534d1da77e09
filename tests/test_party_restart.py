"""The broker restarted mid-session, with the parties running as separate OS processes.

The session either resumes (the transports reconnect and resend what was not acked) or
fails with a clear error; either way every process ends within a deadline.
"""

from __future__ import annotations

import time
from pathlib import Path

import mqtt_fixtures
import pytest
from party_helpers import (
    CLIENTS,
    Processes,
    federation,
    output,
    outputs_text,
    rows,
    start_parties,
    wait_all,
)

from transports.broker import MosquittoBroker

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)

ROUNDS = 10  # with TCP_NODELAY an MLP round takes 0.1-0.3 s: the outage must land mid-session
OUTAGE_S = 2.0  # the broker stays down this long: several reconnect attempts fail
MID_SESSION_S = 90  # bound on reaching the end of round 1
DEADLINE_S = 120  # bound on every process ending once the broker is back


def wait_for_round(tmp_path: Path, processes: Processes,
                   round_: int, timeout: float) -> None:
    """Until a client reported *round_*; fail early if a party exits before that."""
    deadline = time.monotonic() + timeout
    while not any(len(rows(tmp_path, c)) >= round_ for c in CLIENTS):
        ended = {n: p.returncode for n, p in processes.items() if p.poll() is not None}
        if ended or time.monotonic() > deadline:
            wait_all(processes, 0)
            pytest.fail(f"round {round_} not reached (ended early: {ended}):\n"
                        + outputs_text(tmp_path, processes))
        time.sleep(0.1)


def test_broker_restarted_mid_session_the_session_resumes_or_fails_clearly(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    manifest = federation(tmp_path, rounds=ROUNDS, upload_s=20.0, decrypt_s=15.0)
    processes = start_parties(tmp_path, broker.url, manifest)
    try:
        wait_for_round(tmp_path, processes, 1, MID_SESSION_S)
        broker.stop()
        reported = {client: len(rows(tmp_path, client)) for client in CLIENTS}
        time.sleep(OUTAGE_S)
        broker.start()  # the same port: MosquittoBroker keeps it across a restart
        hung = wait_all(processes, DEADLINE_S)
    finally:
        wait_all(processes, 0)  # a failed assertion above must not leave processes behind
    everything = outputs_text(tmp_path, processes)
    assert min(reported.values()) < ROUNDS, f"the session ended before the outage: {reported}"
    assert not hung, f"{hung} still running {DEADLINE_S} s after the restart:\n{everything}"
    failed = [name for name, p in processes.items() if p.returncode != 0]
    for name in failed:  # a failure must be a clean exit naming the broker problem
        text = output(tmp_path, name)
        last_line = text.strip().splitlines()[-1] if text.strip() else ""
        assert processes[name].returncode == 1, everything
        assert "Traceback" not in text, everything
        assert last_line.startswith("threshold-fl ") and "broker" in last_line, everything
    if not failed:
        assert_all_rounds_agree(tmp_path)
        assert f"finished {ROUNDS} round(s); dropped: none" in output(tmp_path, "server")


def assert_all_rounds_agree(tmp_path: Path) -> None:
    reports = {client: rows(tmp_path, client) for client in CLIENTS}
    assert all(len(report) == ROUNDS for report in reports.values()), reports
    losses = [reports[client][-1]["loss"] for client in CLIENTS]
    assert max(losses) - min(losses) < 1e-9, reports


def test_broker_gone_for_good_every_process_exits_with_a_clear_error(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    manifest = federation(tmp_path, rounds=ROUNDS, upload_s=20.0, decrypt_s=15.0)
    processes = start_parties(tmp_path, broker.url, manifest, everyone=["--give-up-after", "3"])
    try:
        wait_for_round(tmp_path, processes, 1, MID_SESSION_S)
        broker.stop()
        hung = wait_all(processes, DEADLINE_S)
    finally:
        wait_all(processes, 0)
    everything = outputs_text(tmp_path, processes)
    assert not hung, everything
    for name, process in processes.items():
        last_line = output(tmp_path, name).strip().splitlines()[-1]
        assert process.returncode == 1, everything
        assert "unreachable for 3 s (give_up_after)" in last_line, everything
        assert "Traceback" not in output(tmp_path, name), everything
