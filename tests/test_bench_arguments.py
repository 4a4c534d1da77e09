"""Every bench suite refuses bad options with its own name in the message and exit
code 2, before measuring anything."""

from __future__ import annotations

import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.crypto import MAX_VECTOR_LENGTH

BAD_OPTIONS: dict[str, list[list[str]]] = {
    "clients": [["--clients-list", "1"], ["--clients-list", "1001"], ["--length", "0"],
                ["--length", str(MAX_VECTOR_LENGTH + 1)], ["--pool", "0"],
                ["--decrypt-ciphertexts", "-1"], ["--threads", "x"], ["--part", "all"],
                ["--protocol-clients", "1"], ["--protocol-rounds", "0"],
                ["--protocol-model", "resnet"]],
    "dropout": [["--clients", "2"], ["--rounds", "1"], ["--repeats", "0"], ["--fraction", "2"],
                ["--model", "nonsense"]],
    "e2e": [["--clients", "1"], ["--rounds", "0"], ["--fraction", "2"], ["--modes", "everything"],
            ["--model", "nonsense"]],
    "models": [["--lengths", "0"], ["--lengths", "300000000"], ["--clients", "1"],
               ["--threads", "-1"], ["--seed", "x"]],
    "params": [["--batch-sizes", "1000"], ["--scaling-bits", "60"], ["--ring-dimension", "1234"],
               ["--noise", "none"], ["--clients", "1"], ["--epochs", "0"], ["--model", "resnet"]],
    "peers": [["--lengths", "0"], ["--clients", "1"], ["--seed", "-1"]],
    "selective": [["--percents", "101"], ["--percents", "-1"], ["--length", "0"],
                  ["--clients", "1"], ["--large", "--length", "10"]],
    "threshold": [["--clients", "1"], ["--length", "0"], ["--configurations", "two-key"],
                  ["--seed", "-1"]],
}


@pytest.mark.parametrize(("suite", "options"), [
    (suite, options) for suite, cases in BAD_OPTIONS.items() for options in cases])
def test_bad_options_are_refused(suite: str, options: list[str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", suite, *options])
    assert info.value.code == 2
    assert f"threshold-fl bench {suite}: error:" in capsys.readouterr().err


def test_an_unknown_suite_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", "everything"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
