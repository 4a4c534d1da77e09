"""Batched restarts (threshold_fl/ml/batched_attack.py) and the resumable Figure-9 sweep
(threshold_fl/app/privacy_sweep.py, sweep_report.py, ``threshold-fl attack sweep``).

Real attacks on the real colour LeNet and photo patches, at 16 pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from threshold_fl.app import cli, privacy_sweep
from threshold_fl.app.privacy_eval import dlg_model
from threshold_fl.app.privacy_sweep import FIGURE9_SETTINGS, QUICK, RESULTS, load_results
from threshold_fl.app.sweep_report import markdown, read_sweep
from threshold_fl.errors import ParameterError
from threshold_fl.ml import batched_attack
from threshold_fl.ml.attack import (
    AttackConfig,
    Attacker,
    invert_gradient,
    prepare_attack,
    victim_gradient,
)
from threshold_fl.ml.batched_attack import invert_gradient_batched
from threshold_fl.ml.data import ClientData
from threshold_fl.ml.flatten import layout_of
from threshold_fl.ml.mask import EncryptionMask
from threshold_fl.ml.photos import load_photos

SIDE = 16
SHAPE = (3, SIDE, SIDE)
SUCCESS_SSIM = 0.9


@pytest.fixture(scope="module")
def photos() -> ClientData:
    return load_photos(count=4, image_size=SIDE)


@pytest.fixture(scope="module")
def lenet() -> torch.nn.Module:
    return dlg_model(0, in_channels=3, classes=100, image_size=SIDE)


def _victim(lenet: torch.nn.Module, photos: ClientData, index: int
            ) -> tuple[np.ndarray, np.ndarray]:
    image = photos.images[index]
    return victim_gradient(lenet, image, int(photos.labels[index])), image.double().numpy()


# ----------------------------------------------------------------- batched restarts


def test_batched_ig_follows_the_unbatched_attack_exactly(lenet: torch.nn.Module,
                                                         photos: ClientData) -> None:
    gradient, truth = _victim(lenet, photos, 1)
    config = AttackConfig(attacker=Attacker.IG, restarts=3, iterations=30, seed=4)
    alone = invert_gradient(lenet, gradient, image_shape=SHAPE, config=config,
                            true_image=truth)
    batched = invert_gradient_batched(lenet, gradient, image_shape=SHAPE, config=config,
                                      true_image=truth)
    for one, many in zip(alone.candidates, batched.candidates, strict=True):
        assert np.array_equal(one.image, many.image)
        assert many.relative_loss == pytest.approx(one.relative_loss, rel=1e-3)
        assert (many.iterations, many.stop) == (30, "limit")
    assert batched.best.restart == alone.best.restart


def _rows(lenet: torch.nn.Module, gradient: np.ndarray, config: AttackConfig,
          hidden: EncryptionMask | None = None) -> torch.Tensor:
    prepared = prepare_attack(lenet, gradient, SHAPE, hidden, config, None)
    objective = batched_attack._BatchedObjective(prepared)
    starts = batched_attack._starts(prepared, config.restarts)
    together = batched_attack._run_lbfgs(objective, starts, config)[0]
    for row in range(config.restarts):
        alone = batched_attack._run_lbfgs(objective, starts[row:row + 1], config)[0]
        # Only floating-point noise of the batched convolutions separates them.
        assert torch.allclose(alone[0], together[row], atol=1e-3), row
    return together


def test_a_batched_lbfgs_row_runs_as_it_would_alone(lenet: torch.nn.Module,
                                                    photos: ClientData) -> None:
    gradient, _ = _victim(lenet, photos, 2)
    config = AttackConfig(attacker=Attacker.DLG_TV, restarts=3, iterations=8)
    rows = _rows(lenet, gradient, config)
    assert not torch.allclose(rows[0], rows[1])  # the restarts really differ
    # With the last layer hidden the soft label is a row's tail, optimised with it.
    fc = layout_of(lenet).slice_of("fc")
    hidden = EncryptionMask(gradient.size, np.arange(fc.start, fc.stop, dtype=np.int64))
    assert _rows(lenet, gradient, config, hidden).shape == (3, 3 * SIDE * SIDE + 100)


@pytest.mark.parametrize("attacker", [Attacker.DLG, Attacker.DLG_TV])
def test_batched_lbfgs_reconstructs_as_well_as_torch_lbfgs(
        attacker: Attacker, lenet: torch.nn.Module, photos: ClientData) -> None:
    gradient, truth = _victim(lenet, photos, 1)
    config = AttackConfig(attacker=attacker, restarts=2, iterations=100)
    reference = invert_gradient(lenet, gradient, image_shape=SHAPE, config=config,
                                true_image=truth)
    batched = invert_gradient_batched(lenet, gradient, image_shape=SHAPE, config=config,
                                      true_image=truth)
    assert reference.best.ssim is not None and batched.best.ssim is not None
    assert batched.best.ssim >= SUCCESS_SSIM
    assert batched.best.ssim >= reference.best.ssim - 0.02
    assert batched.attacker_choice.relative_loss <= 2 * reference.attacker_choice.relative_loss


def test_batched_attack_with_the_label_hidden_optimises_it(lenet: torch.nn.Module,
                                                           photos: ClientData) -> None:
    gradient, truth = _victim(lenet, photos, 2)
    fc = layout_of(lenet).slice_of("fc")
    hidden = EncryptionMask(gradient.size, np.arange(fc.start, fc.stop, dtype=np.int64))
    result = invert_gradient_batched(lenet, gradient, image_shape=SHAPE, hidden=hidden,
                                     true_image=truth,
                                     config=AttackConfig(restarts=2, iterations=150))
    assert result.label_source == "optimised"
    assert result.best.ssim is not None and result.best.ssim >= SUCCESS_SSIM
    assert result.best.label == int(photos.labels[2])


def test_a_wrong_target_gives_a_low_ssim_batched(lenet: torch.nn.Module,
                                                 photos: ClientData) -> None:
    gradient, _ = _victim(lenet, photos, 2)
    _, truth = _victim(lenet, photos, 1)
    result = invert_gradient_batched(lenet, gradient, image_shape=SHAPE, true_image=truth,
                                     config=AttackConfig(restarts=2, iterations=100))
    assert result.best.ssim is not None and result.best.ssim < 0.3


# ----------------------------------------------------------------- the sweep


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert cli.main(["attack", "sweep", "--quick", "--out", str(out)]) == 0
    return out


def _keys(out: Path) -> list[tuple[object, ...]]:
    return [(r["setting"], r["attacker"], r["image"], r["restart"])
            for r in load_results(out)]


def test_quick_sweep_covers_every_cell_and_is_sane(quick_sweep: Path) -> None:
    keys = _keys(quick_sweep)
    settings = [s.name for s in QUICK["settings"]]  # type: ignore[attr-defined]
    expected = {(s, a.value, i, r) for s in settings for a in Attacker
                for i in range(2) for r in range(2)}
    assert len(keys) == len(expected) and set(keys) == expected
    records = load_results(quick_sweep)
    # No hiding: DLG reconstructs every image.
    for image in range(2):
        best = max(r["scores"]["ssim"] for r in records  # type: ignore[index]
                   if r["setting"] == "none" and r["attacker"] == "dlg" and r["image"] == image)
        assert best >= SUCCESS_SSIM
    assert all(set(r["scores"]) == {"ssim", "ms_ssim", "uqi", "vif", "psnr", "mse"}
               for r in records)  # type: ignore[arg-type]
    # One picture per (setting, attacker, image): its best restart.
    assert sum("pixels" in r for r in records) == len(expected) // 2
    table = (quick_sweep / "figure9.md").read_text()
    for setting in settings:
        for attacker in [*(a.value for a in Attacker), "worst case"]:
            assert f"| {setting} | {attacker} | 2/2 |" in table
    assert "Cells (setting, attacker, image, restart) done: 36 of 36" in table
    assert (quick_sweep / "figure9.png").stat().st_size > 1000
    assert (quick_sweep / "reconstructions.png").stat().st_size > 1000


def test_a_rerun_skips_what_is_done(quick_sweep: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = (quick_sweep / RESULTS).read_text()
    assert cli.main(["attack", "sweep", "--quick", "--out", str(quick_sweep)]) == 0
    assert "18/18 (setting, attacker, image) groups of 2 restarts done, 0 to run" in (
        capsys.readouterr().err)
    assert (quick_sweep / RESULTS).read_text() == before


def test_a_line_cut_short_is_redone(quick_sweep: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cut"
    out.mkdir()
    for name in ("parameters.json", RESULTS):
        (out / name).write_bytes((quick_sweep / name).read_bytes())
    text = (out / RESULTS).read_text()
    (out / RESULTS).write_text(text[:-40])  # a kill in the middle of the last line
    # Reading (as a report does while the sweep runs) leaves the file alone.
    assert len(load_results(out)) == text.count("\n") - 1
    assert (out / RESULTS).read_text() == text[:-40]
    assert cli.main(["attack", "sweep", "--quick", "--out", str(out)]) == 0
    assert "17/18" in capsys.readouterr().err
    assert sorted(_keys(out)) == sorted(_keys(quick_sweep))  # redone once, no duplicate


def test_a_resume_with_other_parameters_is_refused(quick_sweep: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["attack", "sweep", "--quick", "--restarts", "3", "--out", str(quick_sweep)])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "restarts: the folder has 2, this run asks 3" in error
    assert "choose another --out" in error


def test_damaged_results_are_named(tmp_path: Path) -> None:
    (tmp_path / RESULTS).write_text('{"setting": "none"}\nnot json\n{"setting": "none"}\n')
    with pytest.raises(ParameterError, match="line 2 is not JSON"):
        load_results(tmp_path)


def test_a_kill_while_a_resume_drops_partial_groups_loses_no_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume rewrites results.jsonl without the groups a kill left incomplete: into a
    temporary file renamed over it, so a kill during the rewrite keeps every line."""
    records: list[dict[str, object]] = [
        {"setting": "none", "attacker": "dlg", "image": 0, "restart": restart}
        for restart in range(2)] + [{"setting": "none", "attacker": "dlg", "image": 1,
                                     "restart": 0}]  # its restart 1 never ran
    whole = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / RESULTS).write_text(whole)
    done = {("none", "dlg", 0)}

    def killed(source: object, target: object) -> None:
        raise KeyboardInterrupt  # the kill, once the new file is written
    with monkeypatch.context() as patch:
        patch.setattr(privacy_sweep.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            privacy_sweep._drop_partial(tmp_path, records, done)
    assert (tmp_path / RESULTS).read_text() == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESULTS]  # no temporary left
    privacy_sweep._drop_partial(tmp_path, records, done)  # not killed: the rewrite
    assert (tmp_path / RESULTS).read_text() == "".join(json.dumps(r) + "\n"
                                                       for r in records[:2])


PARAMETERS_OK: dict[str, object] = {
    "image_size": 16, "classes": 10, "images": 1, "restarts": 1,
    "settings": [{"name": "none", "kind": "none", "fraction": 0.0}],
    "attackers": {"dlg": {"iterations": 5}}}
RECORD_OK: dict[str, object] = {
    "setting": "none", "attacker": "dlg", "image": 0, "victim": "cat", "restart": 0,
    "hidden_fraction": 0.0, "relative_loss": 1e-3, "stop": "limit", "attacker_pick": True,
    "seconds": 1.0, "scores": {"ssim": 0.9, "ms_ssim": 0.8, "uqi": 0.7, "vif": None,
                               "psnr": "inf", "mse": 0.0}}


@pytest.mark.parametrize(("file", "text", "error"), [
    ("parameters.json", "{not json", r"cannot read .*parameters.json: Expecting"),
    ("parameters.json", b"\xff\xfe", r"cannot read .*parameters.json: 'utf-8' codec"),
    ("parameters.json", {k: v for k, v in PARAMETERS_OK.items() if k != "images"},
     r"parameters.json: no 'images'; it was edited or damaged"),
    ("parameters.json", {**PARAMETERS_OK, "restarts": "2"},
     r"parameters.json: 'restarts' is '2', not a positive integer"),
    ("parameters.json", {**PARAMETERS_OK, "settings": [{"name": "none"}]},
     r"'settings' is not a list of settings with name, kind and fraction"),
    (RESULTS, {k: v for k, v in RECORD_OK.items() if k != "victim"},
     r"results.jsonl result line 1: no 'victim'; remove that line to redo its cell"),
    (RESULTS, {**RECORD_OK, "scores": {"ssim": 0.9}},
     r"result line 1: scores\['ms_ssim'\] is 'missing', not a number"),
    (RESULTS, {**RECORD_OK, "scores": [0.9]}, r"result line 1: 'scores' is not a JSON object"),
])
def test_a_damaged_sweep_folder_is_named_by_the_report(
        tmp_path: Path, file: str, text: object, error: str) -> None:
    (tmp_path / "parameters.json").write_text(json.dumps(PARAMETERS_OK))
    (tmp_path / RESULTS).write_text(json.dumps(RECORD_OK) + "\n")
    assert "| none | dlg | 1/1 |" in markdown(*read_sweep(tmp_path))  # the files as written
    data = text if isinstance(text, str | bytes) else json.dumps(text) + "\n"
    (tmp_path / file).write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(ParameterError, match=error):
        read_sweep(tmp_path)


def test_report_only_needs_a_sweep_folder(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["attack", "sweep", "--report-only", "--out", str(tmp_path)])
    assert "has no parameters.json" in capsys.readouterr().err


def test_the_full_sweep_has_issue_17s_settings() -> None:
    names = [s.name for s in FIGURE9_SETTINGS]
    assert names == ["none", "top-0.01", "top-0.05", "top-0.1", "top-0.2", "top-0.3",
                     "top-0.5", "top-0.1 + first/last layers", "random-0.1", "random-0.2",
                     "random-0.425", "random-0.5", "random-0.7", "random-0.9"]


def test_a_partial_sweep_reports_only_what_ran(quick_sweep: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "parameters.json").write_bytes((quick_sweep / "parameters.json").read_bytes())
    lines = (quick_sweep / RESULTS).read_text().splitlines()
    kept = [line for line in lines if '"attacker": "dlg"' in line and '"image": 0' in line]
    (tmp_path / RESULTS).write_text("".join(line + "\n" for line in kept))
    assert cli.main(["attack", "sweep", "--report-only", "--out", str(tmp_path)]) == 0
    assert "reconstructions.png" in capsys.readouterr().out
    table = (tmp_path / "figure9.md").read_text()
    assert f"done: {len(kept)} of 36" in table
    assert "| none | dlg | 1/2 |" in table and "| none | dlg-tv | 0/2 | - |" in table
    assert "| none | worst case | 0/2 | - |" in table  # not every attacker has run


def test_the_committed_sweep_is_complete_and_its_report_is_what_its_data_give() -> None:
    """docs/privacy.md quotes docs/privacy/figure9: every cell of issue 17's sweep ran once,
    and the committed table is the one the committed results give."""
    folder = Path(__file__).resolve().parent.parent / "docs" / "privacy" / "figure9"
    parameters, records = read_sweep(folder)
    settings = [str(s["name"]) for s in parameters["settings"]]  # type: ignore[attr-defined]
    assert settings == [s.name for s in FIGURE9_SETTINGS]
    attackers = sorted(parameters["attackers"])  # type: ignore[call-overload]
    assert attackers == sorted(a.value for a in Attacker)
    cells = {(r["setting"], r["attacker"], r["image"], r["restart"]) for r in records}
    images, restarts = int(str(parameters["images"])), int(str(parameters["restarts"]))
    assert images >= 10 and restarts >= 10
    assert len(cells) == len(records) == len(settings) * len(attackers) * images * restarts
    assert (folder / "figure9.md").read_text() == markdown(parameters, records)
