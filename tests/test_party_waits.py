"""A client started with another session's manifest (issue 13, item 1): it says at once
what it waits for, and leaves at its join deadline naming the likely cause, instead of
waiting silently for its whole patience (half an hour with the default timeouts)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mqtt_fixtures
from party_helpers import command, federation, output, wait_all

from protocols import Manifest
from transports.broker import MosquittoBroker

broker = mqtt_fixtures.broker  # the fixture (see mqtt_fixtures on why not imported)


def _start(tmp_path: Path, broker: MosquittoBroker, organisers: Path, stale: Path
           ) -> dict[str, subprocess.Popen[str]]:
    """The aggregator on the organiser's manifest and client c1 on *stale*."""
    processes = {}
    for name, argv in (("server", ["aggregator", "--manifest", str(organisers),
                                   "--identity", str(tmp_path / "server")]),
                       ("stale", ["client", "--manifest", str(stale),
                                  "--identity", str(tmp_path / "c1")])):
        with (tmp_path / f"{name}.out").open("w") as out:
            processes[name] = subprocess.Popen(command(*argv, "--broker", broker.url),
                                               stdout=out, stderr=subprocess.STDOUT, text=True)
    return processes


def test_a_client_with_a_stale_manifest_leaves_with_the_cause(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    organisers = federation(tmp_path, rounds=1, join_s=30)
    stale = federation(tmp_path, rounds=1, join_s=4, name="stale.json")  # a new session
    session = json.loads(stale.read_text())["session"]
    assert session != json.loads(organisers.read_text())["session"]
    processes = _start(tmp_path, broker, organisers, stale)
    stale_client = processes["stale"]
    try:
        # Well before any stage deadline of the client (its patience is 2 x (keys +
        # upload + 2 x decrypt) = 480 s here): the join deadline of its manifest.
        stale_client.wait(timeout=120)
    finally:
        wait_all(processes, 0)
    said = output(tmp_path, "stale")
    assert stale_client.returncode == 1, said
    assert f"connected to {broker.url} for session {session!r}" in said
    assert "waiting up to 4 s" in said  # said early, before giving up
    assert "gave up after 4 s: no aggregator 'server' has been present" in said
    assert "differs from the organiser's" in said


def test_a_client_with_an_edited_copy_of_the_manifest_is_refused_at_once(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    # Same session (so same topics) but one setting changed: its Hello reaches the
    # aggregator, which refuses it at once with both fingerprints, long before the join
    # deadline; the organiser's side says so too.
    organisers = federation(tmp_path, rounds=1, join_s=600)
    data = json.loads(organisers.read_text())
    data["rounds"] = 2
    stale = tmp_path / "edited.json"
    stale.write_text(json.dumps(data))
    fingerprints = [Manifest.load(path).fingerprint()[:16] for path in (organisers, stale)]
    assert fingerprints[0] != fingerprints[1]
    processes = _start(tmp_path, broker, organisers, stale)
    stale_client = processes["stale"]
    try:
        stale_client.wait(timeout=120)  # the join deadline is 600 s
    finally:
        processes["server"].terminate()
        wait_all(processes, 30)
    said = output(tmp_path, "stale")
    assert stale_client.returncode == 1, said
    assert "manifest mismatch" in said and "every party must run the same manifest" in said
    assert all(fingerprint in said for fingerprint in fingerprints), said
    server_said = output(tmp_path, "server")
    assert "refused 'c1'" in server_said and fingerprints[1] in server_said, server_said
