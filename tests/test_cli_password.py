"""Broker passwords for the party commands: ``--password-file`` and TFL_BROKER_PASSWORD
instead of a ``--password`` that every user sees in ``ps``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.app.party_cli import PASSWORD_ENV, broker_config, party_parser
from threshold_fl.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["--manifest", "m.json", "--identity", "parties/alice",
            "--broker", "mqtt://broker.example:1883"]


def parse(*options: str) -> argparse.Namespace:
    return party_parser("client", "test").parse_args([*REQUIRED, *options])


def password_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker-password"
    path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.mark.parametrize("text", ["s3cret pass\n", "s3cret pass\r\n", "s3cret pass",
                                  "s3cret pass\nsecond line\n"])
def test_the_password_file_gives_its_first_line(tmp_path: Path, text: str) -> None:
    args = parse("--username", "alice", "--password-file", str(password_file(tmp_path, text)))
    broker = broker_config(args, environ={})
    assert (broker.username, broker.password) == ("alice", "s3cret pass")
    assert (broker.host, broker.port) == ("broker.example", 1883)


def test_the_environment_variable_gives_the_password() -> None:
    broker = broker_config(parse("--username", "alice"), environ={PASSWORD_ENV: "from-env"})
    assert broker.password == "from-env"
    assert broker_config(parse(), environ={PASSWORD_ENV: ""}).password is None


def test_options_come_before_the_environment(tmp_path: Path) -> None:
    environ = {PASSWORD_ENV: "from-env"}
    path = password_file(tmp_path, "from-file\n")
    assert broker_config(parse("--username", "alice", "--password-file", str(path)),
                         environ=environ).password == "from-file"
    assert broker_config(parse("--username", "alice", "--password", "from-argv"),
                         environ=environ).password == "from-argv"
    assert broker_config(parse(), environ={}).password is None


def test_password_and_password_file_together_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = password_file(tmp_path, "x\n")
    with pytest.raises(SystemExit) as info:
        parse("--username", "alice", "--password", "x", "--password-file", str(path))
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing", "cannot read the password file .*missing: No such file"),
    (lambda tmp: tmp, "cannot read the password file .*: Is a directory"),
    (lambda tmp: password_file(tmp, ""), "the password file .* is empty"),
    (lambda tmp: password_file(tmp, "\nsecond line\n"), "the password file .* is empty"),
])
def test_a_bad_password_file_is_refused_clearly(tmp_path: Path, make: Callable[[Path], Path],
                                                message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ParameterError, match=message):
        broker_config(parse("--username", "alice", "--password-file", str(path)), environ={})


def test_a_password_without_a_username_names_its_source() -> None:
    with pytest.raises(ParameterError, match=f"{PASSWORD_ENV} gives a broker password but "
                                             "--username is missing"):
        broker_config(parse(), environ={PASSWORD_ENV: "from-env"})


@pytest.mark.parametrize("command", ["aggregator", "client", "key-authority"])
def test_every_party_command_refuses_a_bad_file_before_any_work(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The manifest does not exist either: the password file is checked first.
    code = cli_main([command, *REQUIRED, "--username", "alice",
                     "--password-file", str(tmp_path / "missing")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"threshold-fl {command}: cannot read the password file {tmp_path / 'missing'}: "
        "No such file or directory"]


@pytest.mark.parametrize("command", ["aggregator", "client", "key-authority"])
def test_help_warns_about_ps_and_names_the_alternatives(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--password-file PATH" in out
    assert ("--password PASSWORD broker password; visible to other users in ps: prefer "
            f"--password-file or the environment variable {PASSWORD_ENV}") in out


def test_readme_shows_the_password_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Running parties on separate machines"):]
    section = section[:section.index("\n### ", 1)]
    assert "--password-file" in section and PASSWORD_ENV in section
