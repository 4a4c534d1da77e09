"""``make demo`` / ``threshold-fl demo``: a federation as separate OS processes over a
private mosquitto, with small settings (the MLP, two rounds)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from threshold_fl.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "mlp", "--rounds", "2"]


def report(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "report.json").read_text())
    return data


def test_make_demo_runs_threshold_and_the_plaintext_baseline(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_ARGS={' '.join(SMALL)} --out {out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=400, env={**os.environ, "CI": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final accuracy (threshold)" in result.stdout
    assert "plaintext FedAvg, same seed" in result.stdout
    assert "HE overhead" in result.stdout
    data = report(out)
    runs = data["runs"]
    assert isinstance(runs, list) and [run["mode"] for run in runs] == ["threshold", "plaintext"]
    for run in runs:
        assert [row["round"] for row in run["rounds"]] == [1, 2]
        assert set(run["parties"]) == {"server", "client-1", "client-2", "client-3"}
        assert run["final_accuracy"] > 0.8
    threshold, plaintext = runs
    assert threshold["rounds"][0]["encrypted_fraction"] > 0
    assert plaintext["rounds"][0]["encrypted_fraction"] == 0
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert abs(summary["accuracy_gap_points"]) <= 2.0
    assert summary["bytes_overhead"] > 1.0  # ciphertexts are bigger than floats
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for mode in ("threshold", "plaintext"):
        assert (out / mode / "logs" / "server.log").stat().st_size > 0


def test_demo_survives_a_client_killed_after_its_upload(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    out = tmp_path / "report"
    code = cli_main(["demo", *SMALL, "--drop-client", "3", "--at", "after-upload",
                     "--no-baseline", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    (run,) = report(out)["runs"]  # type: ignore[misc]
    assert "client-3" not in run["parties"]  # it died before reporting anything
    contributors = [row["contributors"] for row in run["parties"]["server"]]
    assert contributors == [3, 2]  # its round-1 upload counts (key recovery), then gone
    assert "client 3 vanished at after-upload" in capsys.readouterr().out


def test_demo_in_single_key_mode_runs_the_key_authority_process(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert cli_main(["demo", *SMALL, "--mode", "single-key", "--no-baseline",
                     "--out", str(out)]) == 0
    (run,) = report(out)["runs"]  # type: ignore[misc]
    assert run["mode"] == "single-key" and run["final_accuracy"] > 0.8
    assert [row["contributors"] for row in run["parties"]["server"]] == [3, 3]
    assert (out / "single-key" / "logs" / "authority.log").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--drop-client", "4"], "--drop-client must be in 1..3"),
    (["--clients", "2", "--drop-client", "1"], "cannot reach the decryption threshold"),
    (["--drop-round", "3"], "after the last round"),
])
def test_demo_refuses_impossible_dropouts(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["demo", *SMALL, *argv, "--out", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_demo_rejects_out_of_range_options() -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["demo", "--clients", "1"])
    assert info.value.code == 2
