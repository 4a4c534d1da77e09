"""Helpers for tests that run parties as separate OS processes with the ``threshold-fl``
command: identities and a manifest made with the command, the parties started against a
broker, and their per-round JSON-lines reports read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from threshold_fl.app.cli import main as cli_main

CLIENTS = ("c1", "c2", "c3")
TIMEOUT_S = 150


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "threshold_fl.app.cli", *argv]


def federation(tmp_path: Path, *, rounds: int, upload_s: float = 60.0,
               decrypt_s: float = 60.0, join_s: float = 60.0,
               name: str = "manifest.json") -> Path:
    """Identities (made once) and a manifest *name* under *tmp_path*: each call draws a
    new session, as a re-run of 'threshold-fl manifest' does."""
    for party in ("server", *CLIENTS):
        if not (tmp_path / party).exists():
            assert cli_main(["init-party", party, "--dir", str(tmp_path / party)]) == 0
    manifest = tmp_path / name
    argv = ["manifest", "--aggregator", str(tmp_path / "server"), "--model", "mlp",
            "--rounds", str(rounds), "--fraction", "0.3", "--no-first-last",
            "--upload-s", str(upload_s), "--decrypt-s", str(decrypt_s),
            "--join-s", str(join_s), "--out", str(manifest)]
    for client in CLIENTS:
        argv += ["--client", str(tmp_path / client)]
    assert cli_main(argv) == 0
    return manifest


Processes = dict[str, "subprocess.Popen[str]"]


def start_parties(tmp_path: Path, url: str, manifest: Path,
                  extra: dict[str, list[str]] | None = None, *, server: Sequence[str] = (),
                  everyone: Sequence[str] = ()) -> Processes:
    """Start the aggregator (with *server* options) and the clients (with their *extra*
    options), all with *everyone*'s, without waiting.  Each one's stdout and stderr go to
    ``<party>.out``: a file, not a pipe, so no process blocks on a full pipe while the
    test waits, and unbuffered, so the output up to a hang is kept."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = ["--manifest", str(manifest), "--broker", url, *everyone]
    argvs = {"server": ["aggregator", *common, "--identity", str(tmp_path / "server"),
                        *server]}
    for client in CLIENTS:
        argvs[client] = ["client", *common, "--identity", str(tmp_path / client),
                         "--report", str(tmp_path / f"{client}.jsonl"),
                         *(extra or {}).get(client, [])]
    processes = {}
    for name, argv in argvs.items():
        with (tmp_path / f"{name}.out").open("w") as out:
            processes[name] = subprocess.Popen(command(*argv), stdout=out,
                                               stderr=subprocess.STDOUT, text=True, env=env)
    return processes


def wait_all(processes: Processes, timeout: float) -> list[str]:
    """Wait for every process until a shared deadline; kill and name those still running."""
    deadline = time.monotonic() + timeout
    hung = []
    for name, process in processes.items():
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung.append(name)
    for name in hung:
        processes[name].kill()
        processes[name].wait()
    return hung


def run_parties(tmp_path: Path, url: str, manifest: Path,
                extra: dict[str, list[str]] | None = None, *, server: Sequence[str] = ()
                ) -> Processes:
    """:func:`start_parties`, then wait for all of them; fail the test if any hangs."""
    processes = start_parties(tmp_path, url, manifest, extra, server=server)
    hung = wait_all(processes, TIMEOUT_S)
    if hung:
        pytest.fail(f"{hung} hung:\n{outputs_text(tmp_path, processes)}")
    return processes


def output(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.out").read_text(errors="replace")


def outputs_text(tmp_path: Path, processes: Processes) -> str:
    return "\n".join(f"--- {name} (exit {p.returncode})\n{output(tmp_path, name)}"
                     for name, p in processes.items())


def rows(tmp_path: Path, client: str) -> list[dict[str, float]]:
    path = tmp_path / f"{client}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
