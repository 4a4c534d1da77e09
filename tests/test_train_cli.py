"""``threshold-fl train``: a real (small) federated run, its table, its JSON, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from threshold_fl.app.cli import main as cli_main


def test_train_prints_one_row_per_round_and_writes_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"
    code = cli_main(["train", "--model", "logreg", "--mode", "threshold", "--rounds", "2",
                     "--epochs", "2", "--lr", "0.1", "--baseline", "--json", str(report)])
    printed = capsys.readouterr()
    out = printed.out
    assert code == 0
    assert "warning" not in printed.err  # the default encrypts everything
    rows = [line.split() for line in out.splitlines() if line.startswith("federation ")]
    assert [row[1] for row in rows] == ["1", "2", "1", "2"]  # threshold, then the baseline
    assert "plaintext FedAvg, same seed" in out and "gap" in out
    data = json.loads(report.read_text())
    assert [entry["config"]["mode"] for entry in data] == ["threshold", "plaintext"]
    threshold, plain = data
    assert len(threshold["rounds"]) == 2 and threshold["mode"] == "threshold"
    assert threshold["final_accuracy"] > 0.8
    assert abs(threshold["final_accuracy"] - plain["final_accuracy"]) <= 0.01
    assert threshold["bytes_sent"] > plain["bytes_sent"]
    assert threshold["config"]["fraction"] == 1.0
    assert threshold["rounds"][-1]["encrypted_fraction"] == 1.0


@pytest.mark.parametrize(("argv", "message"), [
    (["--rounds", "0"], "--rounds"),
    (["--fraction", "2"], "--fraction"),
    (["--model", "vgg"], "--model"),
    (["--clients", "x"], "--clients"),
])
def test_train_rejects_bad_arguments(argv: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
