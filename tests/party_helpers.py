"""Helpers for tests that run parties as separate OS processes with the ``threshold-fl``
command: identities and a manifest made with the command, the parties started against a
broker, and their per-round JSON-lines reports read back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from threshold_fl.cli import main as cli_main

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
                extra: dict[str, list[str]] | None = None, *, server: Sequence[str] = ()
                ) -> dict[str, subprocess.Popen[str]]:
    """Run the aggregator (with *server* options) and the clients (with their *extra*
    options) to the end; fail the test if any of them hangs."""
    common = ["--manifest", str(manifest), "--broker", url]
    processes = {"server": subprocess.Popen(
        command("aggregator", *common, "--identity", str(tmp_path / "server"), *server),
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
