"""Every command that takes ``--model`` refuses an unknown name up front: one argparse
error line naming the bad value and the valid names, exit status 2, no traceback; and
its ``--help`` lists the valid names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.ml.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(MODELS)

# Each command with the other options it requires, so that only --model can be wrong.
COMMANDS: dict[str, list[str]] = {
    "manifest": ["manifest", "--aggregator", "parties/server", "--client", "parties/alice"],
    "demo": ["demo"],
    "train": ["train"],
    "bench params": ["bench", "params"],
    "bench e2e": ["bench", "e2e"],
}


def _assert_names_the_choices(text: str) -> None:
    assert all(name in text for name in NAMES), text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unknown_model_is_one_argparse_error(command: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main([*COMMANDS[command], "--model", "nosuch"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"threshold-fl {command}: error: argument --model" in err
    assert "'nosuch'" in err
    _assert_names_the_choices(err.splitlines()[-1])
    assert "Traceback" not in err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_the_model_names(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main([*COMMANDS[command][:2 if command.startswith("bench") else 1], "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--model MODEL" in out
    _assert_names_the_choices(" ".join(out.split()))  # help wraps lines


def _command() -> list[str]:
    script = Path(sys.executable).parent / "threshold-fl"  # the installed entry point
    return [str(script)] if script.exists() else [sys.executable, "-m", "threshold_fl.app.cli"]


def test_manifest_with_an_unknown_model_exits_2_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run([*_command(), *COMMANDS["manifest"], "--model", "nosuch"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("threshold-fl manifest: error: argument --model: invalid choice: "
                           "'nosuch'")
    _assert_names_the_choices(last)


def test_the_model_option_does_not_import_torch_until_a_model_is_named() -> None:
    # manifest --model-length builds the same parser; it should stay quick.
    code = ("import sys\n"
            "from threshold_fl.app.setup_cli import _manifest_parser\n"
            "_manifest_parser().parse_args(['--aggregator', 'a', '--client', 'c',"
            " '--model-length', '10'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
