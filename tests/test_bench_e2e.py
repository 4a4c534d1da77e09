"""``threshold-fl bench e2e``: the multi-process MQTT demo once per mode (real processes,
a private mosquitto, the MLP, 2 clients, 2 rounds: about 45 s on two cores)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.app.rounds import RoundRow, RunReport
from threshold_fl.bench.e2e import MODES, totals_of

CLIENTS, ROUNDS, MLP_PARAMETERS = 2, 2, 4810


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One real run of every mode; its folder, e2e.json and what it printed."""
    out = tmp_path_factory.mktemp("e2e")
    printed = io.StringIO()  # capsys is per test; this fixture serves the module
    with contextlib.redirect_stdout(printed):
        code = cli_main(["bench", "e2e", "--model", "mlp", "--clients", str(CLIENTS),
                         "--rounds", str(ROUNDS), "--out", str(out)])
    assert code == 0, printed.getvalue()[-3000:]
    return out, json.loads((out / "e2e.json").read_text()), printed.getvalue()


def test_every_mode_has_one_row_per_round_and_the_files_are_written(
        suite: tuple[Path, dict[str, Any], str]) -> None:
    out, data, printed = suite
    assert [(row["mode"], row["round"]) for row in data["rows"]] == [
        (mode, round_) for mode in MODES for round_ in range(1, ROUNDS + 1)]
    assert data["settings"] == {"clients": CLIENTS, "rounds": ROUNDS, "model": "mlp",
                                "fraction": 0.1, "first_and_last": True, "epochs": 2,
                                "seed": 0, "modes": list(MODES)}
    assert data["machine"]["cores"] >= 1 and data["machine"]["openfhe"]
    markdown = (out / "e2e.md").read_text()
    assert "Measured on" in markdown and "| single-key | 2 |" in markdown
    assert "MqttStats.bytes_sent" in markdown  # says what the bytes are
    assert (out / "e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for mode in MODES:  # the demo's own run folders, one per mode, plaintext once
        assert (out / "e2e-runs" / mode / "logs" / "server.log").stat().st_size > 0
        assert f"e2e: {mode}: starting" in printed
    assert (out / "e2e-runs" / "single-key" / "logs" / "authority.log").exists()
    assert not (out / "e2e-runs" / "threshold" / "plaintext").exists()
    assert "Against plaintext FedAvg" in printed


def test_rows_hold_every_stage_and_plausible_accuracy(
        suite: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = suite
    for row in data["rows"]:
        # every stage is reported, each as the slowest party's own compute time
        assert all(row[stage] >= 0 for stage in ("encrypt_s", "aggregate_s", "decrypt_s"))
        assert row["train_s"] > 0, row  # every round trains
        assert 0.5 < row["accuracy"] <= 1.0, row  # the digits, after one or two rounds
        assert row["contributors"] == CLIENTS
        # the MLP's first and last layers are all of it: everything encrypted
        assert row["encrypted_fraction"] == (0.0 if row["mode"] == "plaintext" else 1.0)
    finals = {total["mode"]: total["final_accuracy"] for total in data["totals"]}
    for mode in ("threshold", "single-key"):  # CKKS error is far below what moves accuracy
        assert abs(finals[mode] - finals["plaintext"]) <= 0.02, finals
    # the demo's own test leaves single-key mode to this run (the one with its authority)
    assert finals["single-key"] > 0.8, finals


def test_encrypted_modes_cost_more_bytes_than_plaintext(
        suite: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = suite
    totals = {total["mode"]: total for total in data["totals"]}
    for mode in ("threshold", "single-key"):
        assert totals[mode]["bytes_sent_ratio"] > 1 and totals[mode]["bytes_received_ratio"] > 1
        assert totals[mode]["bytes_sent_ratio"] == pytest.approx(
            totals[mode]["bytes_sent"] / totals["plaintext"]["bytes_sent"])
    assert totals["plaintext"]["bytes_sent_ratio"] is None  # the baseline itself
    plaintext = totals["plaintext"]
    # every round each client uploads its model and receives the global one, at least a
    # float32 per parameter each way
    assert plaintext["bytes_sent"] >= ROUNDS * CLIENTS * 2 * 4 * MLP_PARAMETERS
    # what one party sends another receives: equal but for the last messages of the
    # session; in single-key mode the key authority (no report) sends the keys
    for mode in ("threshold", "plaintext"):
        assert totals[mode]["bytes_received"] == pytest.approx(totals[mode]["bytes_sent"],
                                                               rel=0.02)
    assert totals["single-key"]["bytes_received"] > totals["single-key"]["bytes_sent"]
    for mode, total in totals.items():
        rows = [row for row in data["rows"] if row["mode"] == mode]
        assert total["bytes_sent"] == sum(row["bytes_sent"] for row in rows)
        assert total["protocol_s"] == pytest.approx(sum(row["seconds"] for row in rows))
        assert total["wall_clock_s"] > total["protocol_s"]  # start-up comes on top


def _run(mode: str, sent: int, seconds: float) -> RunReport:
    row = RoundRow("federation", 1, seconds, sent, sent, {"train": 0.1}, accuracy=0.9)
    return RunReport(mode, 10, seconds + 5, (row,), {})


def test_ratios_are_to_plaintext_and_absent_without_it() -> None:
    threshold, plaintext = totals_of([_run("threshold", 3000, 4.0), _run("plaintext", 1000, 2.0)])
    assert threshold.bytes_sent_ratio == 3.0 and threshold.protocol_s_ratio == 2.0
    assert threshold.wall_clock_ratio == pytest.approx(9 / 7)
    assert plaintext.bytes_sent_ratio is None
    (alone,) = totals_of([_run("single-key", 3000, 4.0)])
    assert alone.bytes_sent_ratio is None and alone.protocol_s_ratio is None
