"""The ``threshold-fl`` command (threshold_fl/app/cli.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

import threshold_fl
from threshold_fl.app import cli


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"threshold-fl {threshold_fl.__version__}"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert "demo" in out and "bench" in out


def test_unknown_arguments_are_an_error() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--frobnicate"])
    assert info.value.code == 2


def _example(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_threshold_round_example_is_within_the_bound(capsys: pytest.CaptureFixture[str]) -> None:
    assert _example("threshold_round").main(["--clients", "2", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "within the bound: yes" in out and "decryption noise flooding" in out


def test_threshold_round_example_rejects_bad_options() -> None:
    with pytest.raises(SystemExit) as info:
        _example("threshold_round").main(["--clients", "0"])
    assert info.value.code == 2


def test_bench_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "bench.json"
    assert cli.main(["bench", "crypto", "--sizes", "100", "--parties", "2",
                     "--output", str(output)]) == 0
    data = json.loads(output.read_text())
    modes = {row["mode"] for row in data["rounds"]}
    assert modes == {"single-key", "threshold"}
    assert all(row["max_error"] < row["error_bound"] for row in data["rounds"])
    assert set(data["noise"]) == {"fixed", "flooding"}
    assert "threshold" in capsys.readouterr().out
