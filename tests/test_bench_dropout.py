"""``threshold-fl bench dropout --quick``: the demo's federation (real processes, a
private mosquitto, the MLP, 3 clients, 2 rounds) without and with a member of round 2's
decryption set killed (SIGKILL) on its DecryptRequest: about a minute on two cores.

Timing is printed by the suite, never asserted here: what is checked is that the run
with the dropout took a second decryption set and still decrypted the right model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocols import Manifest
from threshold_fl.app.cli import main as cli_main
from threshold_fl.app.client_plan import ClientPlan, client_learner
from threshold_fl.app.demo import DemoConfig
from threshold_fl.bench.dropout import QUICK, victim
from threshold_fl.crypto import context_for
from threshold_fl.identity import PartyId

MODEL, EPOCHS, ROUNDS = QUICK


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("dropout")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli_main(["bench", "dropout", "--quick", "--probe-repeats", "2",
                         "--fraction", "0.1", "--out", str(out)])
    assert code == 0, printed.getvalue()[-3000:]
    return out, json.loads((out / "dropout.json").read_text()), printed.getvalue()


def test_the_run_with_a_dropout_took_a_second_set(
        suite: tuple[Path, dict[str, Any], str]) -> None:
    out, data, printed = suite
    a, b = data["rows"]
    killed = DemoConfig().client_name(victim(DemoConfig(), ROUNDS))
    assert (a["run"], a["killed"], a["attempts"]) == ("A", None, 1)
    assert (b["run"], b["killed"], b["attempts"]) == ("B", killed, 2)
    assert a["round"] == b["round"] == ROUNDS
    assert a["contributors"] == b["contributors"] == 3  # the kill came after the uploads
    assert b["ratio"] == pytest.approx(b["decryption_s"] / a["decryption_s"])
    # one set: the last set is the whole step; two: the first set's wait comes before it
    assert a["last_set_s"] == pytest.approx(a["decryption_s"])
    assert 0 < b["last_set_s"] < b["decryption_s"]
    assert b["last_set_ratio"] == pytest.approx(b["last_set_s"] / a["decryption_s"])
    # from the aggregator's trace: the victim's request went, then its Will came
    assert a["to_victim_s"] is not None and a["heard_s"] is None
    assert 0 <= b["to_victim_s"] < b["heard_s"] < b["decryption_s"] - b["last_set_s"] + 1
    assert (a["fraction"], b["fraction"]) == (0.1, 0.1)
    assert "to its Last Will at the aggregator" in data["headline"]
    assert 0 < data["crash_detection_s"] < 30  # the probe's Will came (its wait is 60 s)
    assert "Last Will arrives" in data["headline"]
    assert data["settings"]["model"] == MODEL and data["machine"]["openfhe"]
    server = (out / "dropout-runs" / "B" / "threshold" / "logs" / "server.log").read_text()
    assert f"dropped '{killed}': went offline" in server  # its Last Will, not a deadline
    markdown = (out / "dropout.md").read_text()
    assert "Measured on" in markdown and "| 10% | B | client-3 | 2 |" in markdown
    assert "last set vs A" in markdown
    assert "goal: at most 2x" in printed


def _fedavg(manifest: Manifest, round_: int, start: np.ndarray | None) -> np.ndarray:
    trained, weights = [], []
    for party in manifest.client_ids:
        learner, _ = client_learner(manifest, PartyId(party), ClientPlan(epochs=EPOCHS))
        trained.append(learner.train(round_, start))
        weights.append(len(learner.data))
    return np.average(np.stack(trained), axis=0, weights=np.asarray(weights, dtype=float))


def test_the_second_set_decrypted_the_right_model(
        suite: tuple[Path, dict[str, Any], str]) -> None:
    """Each survivor's round-2 model is FedAvg of the three clients' local training from
    its round-1 model, recomputed here in the clear, within the CKKS error bound."""
    out, _, _ = suite
    run = out / "dropout-runs" / "B" / "threshold"
    manifest = Manifest.load(run / "manifest.json")
    killed = manifest.client_ids[victim(DemoConfig(), ROUNDS) - 1]
    bound = context_for(manifest.params).error_bound(len(manifest.clients)) + 1e-7
    survivors = [party for party in manifest.client_ids if party != killed]
    models = {party: np.load(run / "models" / party / f"global-round-{ROUNDS}.npy")
              for party in survivors}
    start = np.load(run / "models" / survivors[0] / f"global-round-{ROUNDS - 1}.npy")
    expected = _fedavg(manifest, ROUNDS, start)
    for party, model in models.items():
        assert np.max(np.abs(model - expected)) < bound, party
    assert not (run / "models" / killed / f"global-round-{ROUNDS}.npy").exists()
