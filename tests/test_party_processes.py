"""Separate OS processes over a real mosquitto: the aggregator and three clients, each
with its own identity files, started with the ``threshold-fl`` command."""

from __future__ import annotations

from pathlib import Path

import pytest
from mqtt_fixtures import broker  # noqa: F401  (pytest fixture)
from party_helpers import CLIENTS, federation, rows, run_parties

from transports.broker import MosquittoBroker


def test_three_client_processes_agree_on_every_global_model(
        tmp_path: Path, broker: MosquittoBroker) -> None:  # noqa: F811
    manifest = federation(tmp_path, rounds=2)
    processes = run_parties(tmp_path, broker.url, manifest)
    outputs = {name: process.stdout.read() if process.stdout else ""
               for name, process in processes.items()}
    assert all(p.returncode == 0 for p in processes.values()), outputs
    reports = {client: rows(tmp_path, client) for client in CLIENTS}
    assert all(len(report) == 2 for report in reports.values()), reports
    for round_index in range(2):
        accuracies = {reports[c][round_index]["accuracy"] for c in CLIENTS}
        losses = [reports[c][round_index]["loss"] for c in CLIENTS]
        assert len(accuracies) == 1  # one global model, decrypted by each client
        assert max(losses) - min(losses) < 1e-9
    assert reports["c1"][-1]["accuracy"] > 0.8
    assert "finished 2 round(s); dropped: none" in outputs["server"]


@pytest.mark.parametrize("stage", ["after-upload", "before-upload"])
def test_a_client_killed_in_round_one_does_not_stop_the_round(
        tmp_path: Path, broker: MosquittoBroker, stage: str) -> None:  # noqa: F811
    manifest = federation(tmp_path, rounds=2, upload_s=20.0, decrypt_s=15.0)
    processes = run_parties(tmp_path, broker.url, manifest,
                            {"c3": ["--drop-at", stage, "--drop-round", "1"]})
    outputs = {name: process.stdout.read() if process.stdout else ""
               for name, process in processes.items()}
    assert processes["c3"].returncode == -9  # SIGKILL, as scripted
    for name in ("server", "c1", "c2"):
        assert processes[name].returncode == 0, outputs
    assert rows(tmp_path, "c3") == []
    survivors = [rows(tmp_path, client) for client in ("c1", "c2")]
    assert all(len(report) == 2 for report in survivors), survivors
    assert survivors[0][-1]["loss"] == pytest.approx(survivors[1][-1]["loss"], abs=1e-9)
    assert "dropped: {'c3'" in outputs["server"]
