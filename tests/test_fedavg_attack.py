"""The FedAvg-aware inversion against real uploads of the colour LeNet (real torch training
by the protocol's own learner, real photographs)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml.attack import AttackConfig, Attacker
from threshold_fl.ml.data import ClientData
from threshold_fl.ml.fedavg_attack import (
    UploadThreat,
    infer_labels,
    invert_upload,
    match_images,
    simulate_update,
)
from threshold_fl.ml.flatten import flatten_state, layout_of
from threshold_fl.ml.learner import LocalLearner, round_seed
from threshold_fl.ml.mask import EncryptionMask, first_and_last_layers, select_top_fraction
from threshold_fl.ml.models import build_model
from threshold_fl.ml.photos import load_photos
from threshold_fl.ml.privacy import LaplaceNoise
from threshold_fl.ml.training import LocalTraining

SHAPE = (3, 32, 32)


def colour_lenet(seed: int = 0) -> torch.nn.Module:
    return build_model("lenet", image_size=32, in_channels=3, classes=100, seed=seed)


def real_update(model: torch.nn.Module, data: ClientData, plan: LocalTraining, *,
                seed: int = 5, noise: LaplaceNoise | None = None,
                mask: EncryptionMask | None = None) -> FloatArray:
    """What the protocol's learner uploads in round 1, minus the start model."""
    start, _ = flatten_state(model)
    learner = LocalLearner(copy.deepcopy(model), data, plan, seed=seed, noise=noise)
    uploaded = learner.train(1, start, mask)
    update: FloatArray = uploaded - start
    return update


def test_simulation_reproduces_the_learners_upload_with_momentum_and_known_order() -> None:
    data, model = load_photos(count=4), colour_lenet()
    plan = LocalTraining(epochs=2, batch_size=2)  # 4 steps, two batches an epoch
    update = real_update(model, data, plan, seed=5)
    threat = UploadThreat(plan, 4, seed=round_seed(5, 1))
    simulated = simulate_update(model, data.images, data.labels, threat, create_graph=False)
    assert np.abs(update).max() > 1e-3  # the round really moved the model
    np.testing.assert_allclose(simulated.detach().double().numpy(), update, atol=1e-6)
    wrong = UploadThreat(plan, 4, seed=round_seed(5, 2))  # another round's shuffle
    other = simulate_update(model, data.images, data.labels, wrong, create_graph=False)
    assert np.abs(other.detach().double().numpy() - update).max() > 1e-4


def test_simulation_clips_like_local_dp() -> None:
    data, model = load_photos(count=1), colour_lenet()
    threat = UploadThreat(LocalTraining(), 1, clip=1e-3)
    update = simulate_update(model, data.images, data.labels, threat, create_graph=False)
    assert float(update.abs().max()) == pytest.approx(1e-3)


def test_unknown_order_needs_one_batch() -> None:
    with pytest.raises(ParameterError, match="seed"):
        UploadThreat(LocalTraining(batch_size=2), 4)
    with pytest.raises(ParameterError, match="clip"):
        UploadThreat(LocalTraining(), 1, clip=0.0)


def sanity_attack(attacker_model: torch.nn.Module) -> float:
    """DLG on a 1-image, 1-step upload of the colour LeNet at the protocol's initial model."""
    data, victim_model = load_photos(count=1), colour_lenet(0)
    plan = LocalTraining(epochs=1)
    update = real_update(victim_model, data, plan)
    result = invert_upload(attacker_model, update, UploadThreat(plan, 1), image_shape=SHAPE,
                           config=AttackConfig(Attacker.DLG, restarts=1, iterations=300),
                           true_images=data.images.double().numpy())
    assert result.labels_inferred and result.best.labels == (int(data.labels[0]),)
    assert result.best.ssim is not None
    return result.best.ssim[0]


def test_no_hiding_one_image_one_step_is_recovered() -> None:
    assert sanity_attack(colour_lenet(0)) >= 0.9


def test_a_wrong_start_model_does_not_recover_the_image() -> None:
    assert sanity_attack(colour_lenet(1)) < 0.5


def test_full_encryption_leaves_no_signal() -> None:
    data, model = load_photos(count=1), colour_lenet()
    update = real_update(model, data, LocalTraining(epochs=1))
    with pytest.raises(ParameterError, match="nothing to match"):
        invert_upload(model, update, UploadThreat(LocalTraining(epochs=1), 1),
                      image_shape=SHAPE, hidden=EncryptionMask.full(update.size))


def test_labels_are_inferred_from_the_visible_last_layer_only() -> None:
    data, model = load_photos(count=3), colour_lenet()
    update = real_update(model, data, LocalTraining())
    visible = np.ones(update.size, dtype=bool)
    labels = infer_labels(model, update, visible, 3)
    assert labels is not None and labels.tolist() == sorted(data.labels.tolist())
    start, stop = first_and_last_layers(layout_of(model))[-1]
    visible[start:stop] = False
    assert infer_labels(model, update, visible, 3) is None


def test_hidden_coordinates_do_not_reach_the_attack() -> None:
    data, model = load_photos(count=1), colour_lenet()
    plan = LocalTraining(epochs=1)
    update = real_update(model, data, plan)
    layers = first_and_last_layers(layout_of(model))
    mask = select_top_fraction(np.abs(update), 0.1, always_include=layers)
    config = AttackConfig(Attacker.DLG, restarts=1, iterations=5)
    tampered = update.copy()
    tampered[mask.indices] = 1e3  # what the attacker cannot see may be anything
    first, second = (invert_upload(model, u, UploadThreat(plan, 1), image_shape=SHAPE,
                                   hidden=mask, config=config) for u in (update, tampered))
    assert not first.labels_inferred  # the last layer is hidden: soft labels
    np.testing.assert_array_equal(first.best.images, second.best.images)


def test_images_are_matched_by_the_hungarian_assignment() -> None:
    truth = load_photos(count=3).images.double().numpy()
    order, paired = match_images(truth[[2, 0, 1]], truth)
    assert order.tolist() == [1, 2, 0]
    np.testing.assert_allclose(paired, 1.0)


def test_cli_quick_preset_writes_both_tables(tmp_path: Path) -> None:
    from threshold_fl.app.privacy_uploads import main

    train = Path(__file__).parent.parent / "docs/privacy/defences/train-selective.json"
    assert main(["--quick", "--attacker", "dlg", "--iterations", "3", "--out", str(tmp_path),
                 "--train-reports", str(train)]) == 0
    table = (tmp_path / "uploads.md").read_text()
    assert "| initial | full encryption | none: nothing visible |" in table
    (row,) = [line for line in table.splitlines()
              if line.startswith("| top-0.1 + first/last layers | 0.")]
    (run,) = json.loads(train.read_text())  # the matching training run: its accuracy
    assert f" rounds | {run['final_accuracy']:.2%} | " in row
    data = json.loads((tmp_path / "uploads.json").read_text())
    assert {row["defence"] for row in data["rows"]} >= {"none", "full encryption"}


def test_a_malformed_training_report_is_named(tmp_path: Path) -> None:
    from threshold_fl.app.privacy_uploads_report import read_train_reports

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"config": {}, "rounds": [{}]}]))
    with pytest.raises(ParameterError, match=r"bad.json run 0.*'final_accuracy'"):
        read_train_reports([bad])


def test_cli_rejects_bad_noise_scales(capsys: pytest.CaptureFixture[str]) -> None:
    from threshold_fl.app.privacy_uploads import main

    with pytest.raises(SystemExit):
        main(["--quick", "--dp-scales", "0,1e-3"])
    assert "positive numbers" in capsys.readouterr().err
