"""Separate OS processes over a real mosquitto: the aggregator and three clients, each
with its own identity files, started with the ``threshold-fl`` command.  The round with
a client killed runs over amqtt as well, so nothing depends on one broker's quirks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_fixtures import broker  # noqa: F401  (pytest fixture)
from party_helpers import (
    CLIENTS,
    TIMEOUT_S,
    federation,
    output,
    rows,
    run_parties,
    start_parties,
    wait_all,
)

from protocols import LocalPrivacy, Manifest
from threshold_fl.app.cli import main as cli_main
from threshold_fl.app.client_plan import ClientPlan, client_learner
from threshold_fl.app.rounds import RoundRow
from threshold_fl.crypto import context_for
from threshold_fl.errors import ParameterError
from threshold_fl.identity import PartyId
from threshold_fl.ml.privacy import LaplaceNoise
from transports.broker import BrokerProcess, MosquittoBroker


def plaintext_fedavg(manifest: Manifest, round_: int, start: np.ndarray | None) -> np.ndarray:
    """FedAvg of the three clients' local training from *start*, in the clear: what the
    encrypted round must reproduce up to the CKKS error."""
    trained, weights = [], []
    for client in CLIENTS:
        learner, _ = client_learner(manifest, PartyId(client), ClientPlan())
        trained.append(learner.train(round_, start))
        weights.append(len(learner.data))
    return np.average(np.stack(trained), axis=0, weights=np.asarray(weights, dtype=float))


def test_three_client_processes_match_plaintext_fedavg(
        tmp_path: Path, broker: MosquittoBroker) -> None:  # noqa: F811
    manifest_path = federation(tmp_path, rounds=2)
    models = tmp_path / "c1-models"
    processes = run_parties(tmp_path, broker.url, manifest_path,
                            {"c1": ["--save-models", str(models)]},
                            server=["--report", str(tmp_path / "server.jsonl")])
    outputs = {name: output(tmp_path, name) for name in processes}
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
    # Each round's decrypted global model is FedAvg of that round's local training,
    # recomputed here in the clear from the previous decrypted global model.
    manifest = Manifest.load(manifest_path)
    bound = context_for(manifest.params).error_bound(len(CLIENTS)) + 1e-7
    previous = None
    for round_ in (1, 2):
        decrypted = np.load(models / f"global-round-{round_}.npy")
        expected = plaintext_fedavg(manifest, round_, previous)
        assert np.max(np.abs(decrypted - expected)) < bound
        previous = decrypted
    # the rows carry per-stage seconds and the aggregator's rows count contributors
    assert set(reports["c1"][0]["stage_s"]) == {"train", "encrypt", "decrypt"}
    server_rows = [RoundRow.from_json(line)
                   for line in (tmp_path / "server.jsonl").read_text().splitlines()]
    assert [(row.round, row.contributors) for row in server_rows] == [(1, 3), (2, 3)]
    assert all(row.stage_s["aggregate"] > 0 for row in server_rows)


@pytest.mark.parametrize(("broker", "stage"), [
    ("mosquitto", "after-upload"),
    ("mosquitto", "before-upload"),
    # on the lead's public share, before making its own: key agreement restarts without it
    ("mosquitto", "keys"),
    # The second broker we support, once: the decryption goes on without c3 only once
    # its Last Will says it is gone (or at the 15 s deadline, which the test refuses).
    ("amqtt", "after-upload"),
], indirect=["broker"])
def test_a_client_killed_in_round_one_does_not_stop_the_round(
        tmp_path: Path, broker: BrokerProcess, stage: str) -> None:  # noqa: F811
    manifest = federation(tmp_path, rounds=2, upload_s=20.0, decrypt_s=15.0)
    processes = run_parties(tmp_path, broker.url, manifest,
                            {"c3": ["--drop-at", stage, "--drop-round", "1"]})
    outputs = {name: output(tmp_path, name) for name in processes}
    assert processes["c3"].returncode == -9  # SIGKILL, as scripted
    for name in ("server", "c1", "c2"):
        assert processes[name].returncode == 0, outputs
    assert rows(tmp_path, "c3") == []
    survivors = [rows(tmp_path, client) for client in ("c1", "c2")]
    assert all(len(report) == 2 for report in survivors), survivors
    assert survivors[0][-1]["loss"] == pytest.approx(survivors[1][-1]["loss"], abs=1e-9)
    # seen offline through its Last Will, not at a stage deadline
    assert "dropped: {'c3': 'went offline" in outputs["server"], outputs["server"]


@pytest.mark.parametrize(("command_name", "party", "actual"), [
    ("key-authority", "server", "aggregator"),
    ("aggregator", "c1", "client"),
    ("client", "server", "aggregator"),
])
def test_a_party_started_with_the_wrong_command_is_told_which_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command_name: str, party: str,
        actual: str) -> None:
    manifest = federation(tmp_path, rounds=1)
    capsys.readouterr()
    argv = [command_name, "--manifest", str(manifest), "--identity", str(tmp_path / party),
            "--broker", "mqtt://127.0.0.1:1"]  # refused before any connection
    assert cli_main(argv) == 1
    assert (f"is the {actual} in this manifest, not a {command_name}; start it with "
            f"'threshold-fl {actual}'") in capsys.readouterr().err


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda data: data.pop("model"), "the manifest names no model"),
    (lambda data: data["model"].update(name="nosuch"), "unknown model 'nosuch'; choose one of"),
])
def test_a_client_refuses_a_manifest_without_a_model_it_knows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        edit: Callable[[dict[str, Any]], object], problem: str) -> None:
    manifest = federation(tmp_path, rounds=1)
    data = json.loads(manifest.read_text())
    edit(data)
    manifest.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli_main(["client", "--manifest", str(manifest), "--identity", str(tmp_path / "c1"),
                     "--broker", "mqtt://127.0.0.1:1"]) == 1  # refused before connecting
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err


def test_a_member_frozen_on_its_decrypt_request_is_replaced_when_its_will_arrives(
        tmp_path: Path, broker: MosquittoBroker) -> None:  # noqa: F811
    """c3, in round 1's decryption set (c2, c3), stops (SIGSTOP) on its DecryptRequest:
    its connection stays open, so the broker publishes its Last Will only after 1.5
    keepalives.  Until then the aggregator waits for its share and says so; then it asks
    (c1, c2) at once, long before the decryption deadline, and drops c3 after the grace."""
    manifest = federation(tmp_path, rounds=1, decrypt_s=120.0)
    processes = start_parties(tmp_path, broker.url, manifest,
                              {"c3": ["--drop-at", "decrypt-frozen", "--drop-round", "1"]},
                              server=["--report", str(tmp_path / "server.jsonl")])
    try:
        hung = wait_all({name: processes[name] for name in ("server", "c1", "c2")}, TIMEOUT_S)
    finally:
        processes["c3"].kill()
        processes["c3"].wait()
    outputs = {name: output(tmp_path, name) for name in processes}
    assert not hung and all(processes[n].returncode == 0 for n in ("server", "c1", "c2")), outputs
    server = outputs["server"]
    assert ("round 1 round decryption: waiting for 1 of 2 decryption shares (attempt 1): 'c3'; "
            "another set as soon as a missing member's connection is reported lost") in server
    assert "dropped 'c3': went offline" in server  # its Last Will, not the deadline
    (row,) = [RoundRow.from_json(line)
              for line in (tmp_path / "server.jsonl").read_text().splitlines()]
    assert row.attempts == 2 and row.contributors == 3
    survivors = [rows(tmp_path, client) for client in ("c1", "c2")]
    assert survivors[0][-1]["loss"] == pytest.approx(survivors[1][-1]["loss"], abs=1e-9)


def test_a_client_applies_the_manifests_local_dp_and_refuses_its_own_on_top(
        tmp_path: Path) -> None:
    manifest = Manifest.load(federation(tmp_path, rounds=1))
    noised = dataclasses.replace(manifest, privacy=LocalPrivacy(1e-4, 0.01))
    learner, _ = client_learner(noised, PartyId("c1"), ClientPlan())
    assert learner.noise == LaplaceNoise(1e-4, 0.01)
    assert client_learner(manifest, PartyId("c1"), ClientPlan())[0].noise is None
    with pytest.raises(ParameterError, match="the manifest sets local DP"):
        client_learner(noised, PartyId("c1"), ClientPlan(dp_scale=1e-3))
