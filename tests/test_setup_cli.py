"""``threshold-fl init-party`` and ``threshold-fl manifest`` on real files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from protocols import LocalPrivacy, Manifest, ModelSpec
from threshold_fl._checks import selective_warning
from threshold_fl.app.cli import main as cli_main
from threshold_fl.identity import Identity


def init(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    assert cli_main(["init-party", name, "--dir", str(directory)]) == 0
    return directory


def test_init_party_writes_a_private_key_and_refuses_to_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = init(tmp_path, "alice")
    secret = directory / "identity.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    identity = Identity.load(directory)
    assert identity.party_id == "alice"
    assert identity.public.fingerprint() in capsys.readouterr().out
    before = secret.read_bytes()
    assert cli_main(["init-party", "alice", "--dir", str(directory)]) == 1
    assert "--force" in capsys.readouterr().err
    assert secret.read_bytes() == before
    assert cli_main(["init-party", "alice", "--dir", str(directory), "--force"]) == 0
    assert secret.read_bytes() != before


def test_init_party_rejects_a_bad_party_id(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["init-party", "bad/id", "--dir", str(tmp_path / "x")]) == 1
    assert "party" in capsys.readouterr().err


def test_manifest_from_public_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server, *clients = (init(tmp_path, name) for name in ["server", "alice", "bob", "carol"])
    out = tmp_path / "manifest.json"
    argv = ["manifest", "--session", "lab-1", "--aggregator", str(server),
            "--model", "mlp", "--rounds", "4", "--fraction", "0.2", "--upload-s", "30",
            "--out", str(out)]
    for client in clients:
        argv += ["--client", str(client / "identity.pub.json")]
    assert cli_main(argv) == 0
    manifest = Manifest.load(out)
    assert manifest.session == "lab-1" and manifest.client_ids == ("alice", "bob", "carol")
    assert manifest.threshold == 2 and manifest.rounds == 4
    assert manifest.model_length == 4_810 and manifest.mask.fraction == 0.2
    assert manifest.always_encrypt == ((0, 4_160), (4_160, 4_810))  # hidden, output layers
    assert manifest.timeouts.upload_s == 30
    assert manifest.model == ModelSpec("mlp", 0)  # the clients read the model from here
    printed = capsys.readouterr()
    assert manifest.fingerprint() in printed.out
    assert "model mlp (4,810 parameters, data seed 0)" in printed.out
    warnings = [line for line in printed.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--fraction 0.2" in warnings[0]
    assert "docs/privacy.md" in warnings[0]


def test_manifest_encrypts_everything_by_default(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server, alice, bob = (init(tmp_path, name) for name in ["server", "alice", "bob"])
    out = tmp_path / "m.json"
    capsys.readouterr()
    assert cli_main(["manifest", "--aggregator", str(server), "--client", str(alice),
                     "--client", str(bob), "--model", "mlp", "--out", str(out)]) == 0
    assert Manifest.load(out).mask.fraction == 1.0
    assert "warning" not in capsys.readouterr().err


def test_manifest_carries_the_data_seed(tmp_path: Path) -> None:
    server, alice, bob = (init(tmp_path, name) for name in ["server", "alice", "bob"])
    out = tmp_path / "m.json"
    assert cli_main(["manifest", "--aggregator", str(server), "--client", str(alice),
                     "--client", str(bob), "--model", "logreg", "--data-seed", "7",
                     "--out", str(out)]) == 0
    assert Manifest.load(out).model == ModelSpec("logreg", 7)


@pytest.mark.parametrize(("extra", "message"), [
    (["--mode", "single-key"], "key authority"),
    (["--threshold", "5"], "threshold"),
    (["--client", "missing-dir"], "cannot read public identity"),
    (["--data-seed", "3"], "--data-seed goes with --model"),
])
def test_manifest_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   extra: list[str], message: str) -> None:
    server, alice, bob = (init(tmp_path, name) for name in ["server", "alice", "bob"])
    argv = ["manifest", "--aggregator", str(server), "--client", str(alice), "--client",
            str(bob), "--model-length", "10", "--out", str(tmp_path / "m.json"), *extra]
    assert cli_main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_manifest_rejects_a_tampered_public_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server, alice, bob = (init(tmp_path, name) for name in ["server", "alice", "bob"])
    public = bob / "identity.pub.json"
    data = json.loads(public.read_text())
    data["signing_public"] = "not base64!"
    public.write_text(json.dumps(data))
    argv = ["manifest", "--aggregator", str(server), "--client", str(alice), "--client",
            str(bob), "--model-length", "10", "--out", str(tmp_path / "m.json")]
    assert cli_main(argv) == 1
    assert str(public) in capsys.readouterr().err


@pytest.mark.parametrize(("fraction", "mode", "warned"), [
    (1.0, "threshold", False), (0.1, "plaintext", False),
    (0.1, "threshold", True), (0.999, "single-key", True),
])
def test_selective_warning_only_when_something_is_left_clear(
        fraction: float, mode: str, warned: bool) -> None:
    warning = selective_warning(fraction, mode)
    assert (warning is not None) == warned
    if warning is not None:
        assert "\n" not in warning and "docs/privacy.md" in warning
        assert f"--fraction {fraction:g}" in warning



def test_manifest_binds_local_dp_for_every_client(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    server, alice, bob = (init(tmp_path, name) for name in ["server", "alice", "bob"])
    out = tmp_path / "m.json"
    base = ["manifest", "--aggregator", str(server), "--client", str(alice), "--client",
            str(bob), "--model", "mlp", "--fraction", "0.1", "--out", str(out)]
    assert cli_main([*base, "--dp-scale", "1e-4", "--dp-clip", "0.01"]) == 0
    manifest = Manifest.load(out)
    assert manifest.privacy == LocalPrivacy(1e-4, 0.01)
    assert "local DP: Laplace b = 0.0001, clip C = 0.01" in capsys.readouterr().out
    assert cli_main([*base, "--dp-clip", "0.01"]) == 1
    assert "--dp-clip goes with --dp-scale" in capsys.readouterr().err
