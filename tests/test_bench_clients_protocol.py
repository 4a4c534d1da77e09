"""The whole-protocol part of the clients suite (``bench clients --quick``): N = 3 and 5
real FederatedClient nodes and the Aggregator over the in-memory hub, real OpenFHE,
real torch training, one round; every party's bytes counted per stage and round."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.bench.clients_protocol import GOAL, ProtocolRow, growth, row_of, verdict
from threshold_fl.bench.protocol_run import (
    AGGREGATOR,
    ProtocolRunFailed,
    _Recorder,
    label_message,
    run_protocol,
)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quick")
    assert cli_main(["bench", "clients", "--quick", "--out", str(out)]) == 0
    return out


def test_quick_preset_measures_every_client_of_a_completed_round(quick: Path) -> None:
    data = json.loads((quick / "clients-protocol.json").read_text())
    rows = data["rows"]
    assert [row["clients"] for row in rows] == [3, 5]
    for row in rows:
        assert row["rounds"] == 1 and row["threshold"] == row["clients"] // 2 + 1
        # selective encryption really selects: the first and last layers and the top
        # 10 % of the sensitivity map, not the whole model
        assert 0.1 * row["parameters"] < row["encrypted_values"] < row["parameters"]
        # the decrypted model of every client matched plaintext FedAvg (the run raises
        # otherwise), within the crypto bound reported here
        assert 0 < row["max_error"] <= row["error_bound"] < 1e-2
        # members download c1 and upload a share; the others do neither
        assert row["members_per_round"] == row["threshold"] and row["others_with_c1"] == 0
        assert row["member_kinds"]["DecryptRequest"] > 0
        assert row["member_kinds"]["DecryptionShare"] > 0
        assert "DecryptRequest" not in row["other_kinds"]
        assert "DecryptionShare" not in row["other_kinds"]
        for group in ("member", "other"):
            assert row[f"{group}_sent_mean"] > 0 and row[f"{group}_received_mean"] > 0
            assert row[f"{group}_total_max"] >= (row[f"{group}_sent_mean"]
                                                 + row[f"{group}_received_mean"]) - 1
        # a member moves more than another client: c1 in, a share out
        assert row["member_received_mean"] > row["other_received_mean"]
        assert row["member_sent_mean"] > row["other_sent_mean"]
        # the aggregator hears every upload and every member's share
        assert row["aggregator_round_received"] > row["clients"] * row["other_sent_mean"]
        assert row["setup_received_mean"] > 0 and row["key_s"] > 0 and row["round_s"] > 0
    # key agreement relays every public share and sealed key share: set-up grows with N
    assert rows[1]["setup_received_mean"] > rows[0]["setup_received_mean"]
    assert data["goal"] == GOAL and isinstance(data["goal_holds"], bool)
    markdown = (quick / "clients-protocol.md").read_text()
    assert "Per-round bytes of a client, N = 3 to 5" in markdown and "Measured on" in markdown
    assert (quick / "clients-protocol.png").read_bytes()[:4] == b"\x89PNG"
    assert not (quick / "clients.json").exists()  # --quick runs the protocol part only


def test_bytes_per_client_are_the_messages_each_party_sent_and_received() -> None:
    run = run_protocol(3, 2, model="logreg")
    traffic, clients = run.traffic, run.clients
    everyone = [*clients, AGGREGATOR]
    # everything goes through the aggregator: what clients send, it receives, and back
    for round_ in (1, 2):
        assert (sum(traffic.round(c, round_).sent_bytes for c in clients)
                == traffic.round(AGGREGATOR, round_).received_bytes)
        assert (sum(traffic.round(c, round_).received_bytes for c in clients)
                == traffic.round(AGGREGATOR, round_).sent_bytes)
        assert len(traffic.members(round_, clients)) == 2
    # set-up, the rounds and the end account for every byte of the run
    total = sum(traffic.total(p, "").sent_bytes for p in everyone)
    parts = sum(traffic.setup(p).sent_bytes + traffic.round(p, 1).sent_bytes
                + traffic.round(p, 2).sent_bytes + traffic.total(p, "end:").sent_bytes
                for p in everyone)
    assert total == parts > 0
    row = row_of(run, "logreg")
    assert row.rounds == 2 and row.encrypted_values == row.parameters == 650  # one layer


def test_labels_name_stage_round_and_type() -> None:
    assert label_message(b"not a message") == "other"
    run = run_protocol(3, 1, model="logreg")
    labels = set().union(*(set(t) for t in run.traffic.by_party.values()))
    assert {"setup:setup:Hello", "setup:keys:PublicShare", "setup:mask:Fused",
            "round:1:UpdateUpload", "round:1:DecryptRequest", "end:Finished"} <= labels


def _row(clients: int, member: int, other: int) -> ProtocolRow:
    values: dict[str, object] = {f.name: 0 for f in fields(ProtocolRow)
                                 if not f.name.endswith("kinds")}
    values.update(clients=clients, member_total_max=member, other_total_max=other,
                  model="lenet")
    return ProtocolRow(**values)  # type: ignore[arg-type]


def test_the_goal_is_judged_on_the_heaviest_client_of_each_group() -> None:
    assert verdict([_row(3, 100, 50), _row(50, 109, 54)]).holds
    judged = verdict([_row(3, 100, 50), _row(50, 100, 56)])
    assert not judged.holds and judged.other_ratio == pytest.approx(1.12)
    assert growth({"A": 10.0, "B": 5.0}, {"A": 12.0, "B": 5.0, "C": 1.0}) == [
        ("A", 2.0), ("C", 1.0)]


def test_the_fedavg_check_sees_a_wrong_global_model() -> None:
    recorder = _Recorder(0.0)
    recorder.samples = {"a": 1, "b": 3}
    recorder.contributors = {1: ("a", "b")}
    recorder.trained[1] = {"a": np.array([1.0, 0.0]), "b": np.array([5.0, 4.0])}
    fedavg = np.array([4.0, 3.0])  # weights 1/4 and 3/4
    recorder.results["a"][1] = fedavg
    recorder.results["b"][1] = fedavg + np.array([0.0, 1e-3])
    assert recorder.max_error(["a", "b"]) == pytest.approx((1e-3, 4.0))
    del recorder.results["b"][1]
    with pytest.raises(ProtocolRunFailed, match="b has no global model of round 1"):
        recorder.max_error(["a", "b"])
