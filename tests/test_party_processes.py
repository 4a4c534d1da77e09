"""Separate OS processes over a real mosquitto: the aggregator and three clients, each
with its own identity files, started with the ``threshold-fl`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mqtt_fixtures import broker  # noqa: F401  (pytest fixture)

from threshold_fl.cli import main as cli_main
from transports.broker import MosquittoBroker

CLIENTS = ("c1", "c2", "c3")
TIMEOUT_S = 150


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "threshold_fl.cli", *argv]


def federation(tmp_path: Path, *, rounds: int, upload_s: float = 60.0,
               decrypt_s: float = 60.0) -> Path:
    for party in ("server", *CLIENTS):
        assert cli_main(["init-party", party, "--dir", str(tmp_path / party)]) == 0
    manifest = tmp_path / "manifest.json"
    argv = ["manifest", "--aggregator", str(tmp_path / "server"), "--model", "mlp",
            "--rounds", str(rounds), "--fraction", "0.3", "--no-first-last",
            "--upload-s", str(upload_s), "--decrypt-s", str(decrypt_s), "--out", str(manifest)]
    for client in CLIENTS:
        argv += ["--client", str(tmp_path / client)]
    assert cli_main(argv) == 0
    return manifest


def run_parties(tmp_path: Path, url: str, manifest: Path,
                extra: dict[str, list[str]] | None = None) -> dict[str, subprocess.Popen[str]]:
    common = ["--manifest", str(manifest), "--broker", url]
    processes = {"server": subprocess.Popen(
        command("aggregator", *common, "--identity", str(tmp_path / "server")),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)}
    for client in CLIENTS:
        argv = ["client", *common, "--identity", str(tmp_path / client), "--model", "mlp",
                "--report", str(tmp_path / f"{client}.jsonl"), *(extra or {}).get(client, [])]
        processes[client] = subprocess.Popen(command(*argv), stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True)
    for process in processes.values():
        try:
            process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in processes.values():
                other.kill()
            pytest.fail("a party process hung")
    return processes


def rows(tmp_path: Path, client: str) -> list[dict[str, float]]:
    path = tmp_path / f"{client}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


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
