"""Gradient inversion (threshold_fl/ml/attack.py), SSIM/MSE (threshold_fl/ml/image_metrics.py)
and the privacy evaluation (threshold_fl/app/privacy_eval.py, ``threshold-fl attack``).

Everything runs the real attack on the real LeNet and digits, at small sizes.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from threshold_fl.app import cli
from threshold_fl.app.privacy_eval import (
    DEFAULT_SETTINGS,
    EvalConfig,
    Evaluation,
    Setting,
    dlg_model,
    evaluate,
    parse_setting,
    worst_case,
)
from threshold_fl.app.privacy_report import write_outputs
from threshold_fl.errors import ParameterError
from threshold_fl.ml.attack import (
    AttackConfig,
    Attacker,
    GradientTarget,
    MatchingObjective,
    infer_label,
    invert_gradient,
    torch_threads,
    total_variation,
    victim_gradient,
)
from threshold_fl.ml.data import Dataset, load_digits
from threshold_fl.ml.flatten import layout_of
from threshold_fl.ml.image_metrics import K1, K2, mse, ssim
from threshold_fl.ml.mask import EncryptionMask, select_random_fraction
from threshold_fl.ml.models import build_model

SHAPE = (1, 16, 16)
Image = npt.NDArray[np.float64]
#: The unprotected attack must reach this SSIM; a broken attack stays far below.
SUCCESS_SSIM = 0.9


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(image_size=16, seed=0)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return dlg_model(0)


def _digit(digits: Dataset, label: int) -> tuple[torch.Tensor, Image]:
    index = int(np.flatnonzero(digits.test.labels.numpy() == label)[0])
    image = digits.test.images[index]
    return image, image.double().numpy()


# ----------------------------------------------------------------- SSIM and MSE


def _reference_ssim(a: Image, b: Image) -> float:
    """The SSIM formula written out per window position, for a 7x7 window."""
    offsets = np.arange(7) - 3.0
    line = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(line, line) / np.outer(line, line).sum()
    c1, c2 = K1**2, K2**2
    values = []
    for i in range(a.shape[0] - 6):
        for j in range(a.shape[1] - 6):
            x, y = a[i:i + 7, j:j + 7], b[i:i + 7, j:j + 7]
            mx, my = (window * x).sum(), (window * y).sum()
            vx, vy = (window * (x - mx) ** 2).sum(), (window * (y - my) ** 2).sum()
            cov = (window * (x - mx) * (y - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2)
                          / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_of_identical_images_is_one(rng: np.random.Generator) -> None:
    image = rng.random((16, 16))
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("a", "b", "data_range"), [(0.3, 0.7, 1.0), (0.0, 1.0, 1.0),
                                                    (40.0, 200.0, 255.0)])
def test_ssim_of_constant_images_is_the_analytic_value(a: float, b: float,
                                                       data_range: float) -> None:
    c1 = (K1 * data_range) ** 2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    value = ssim(np.full((12, 12), a), np.full((12, 12), b), data_range=data_range)
    assert value == pytest.approx(expected, rel=1e-9)


def test_ssim_matches_the_formula_written_out(rng: np.random.Generator) -> None:
    a = rng.random((11, 10))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(_reference_ssim(a, b), rel=1e-10)


def test_ssim_is_symmetric(rng: np.random.Generator) -> None:
    a, b = rng.random((16, 16)), rng.random((16, 16))
    assert ssim(a, b) == pytest.approx(ssim(b, a), rel=1e-12)
    assert ssim(a, b) < 0.5  # unrelated noise images are not similar


def test_ssim_decreases_as_noise_grows(digits: Dataset, rng: np.random.Generator) -> None:
    _, image = _digit(digits, 3)
    noise = rng.normal(size=image.shape)
    values = [ssim(image, np.clip(image + level * noise, 0, 1)) for level in
              (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)]
    assert values[0] == pytest.approx(1.0)
    assert all(later < earlier for earlier, later in itertools.pairwise(values))
    assert values[-1] < 0.3


def test_ssim_works_on_images_smaller_than_the_window(rng: np.random.Generator) -> None:
    for shape in [(5, 5), (2, 3), (1, 1)]:
        image = rng.random(shape)
        assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(np.zeros((4, 4)), np.ones((4, 4))) < 0.01


@pytest.mark.parametrize(("a", "b", "message"), [
    (np.zeros((4, 4)), np.zeros((4, 5)), "same shape"),
    (np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 4)), "2-D"),
    (np.zeros((4, 4)), np.full((4, 4), np.nan), "NaN"),
    (np.zeros((0, 4)), np.zeros((0, 4)), "non-empty"),
    ([[0.0]], np.zeros((1, 1)), "numpy array"),
])
def test_bad_images_are_rejected(a: object, b: object, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        ssim(a, b)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=message):
        mse(a, b)  # type: ignore[arg-type]


@pytest.mark.parametrize("data_range", [0.0, -1.0, math.inf, math.nan])
def test_ssim_rejects_a_bad_data_range(data_range: float) -> None:
    with pytest.raises(ParameterError, match="data_range"):
        ssim(np.zeros((4, 4)), np.zeros((4, 4)), data_range=data_range)


def test_mse() -> None:
    assert mse(np.zeros((3, 3)), np.ones((3, 3))) == 1.0
    a = np.arange(12.0).reshape(3, 4)
    assert mse(a, a) == 0.0
    assert mse(a, a + 0.5) == pytest.approx(0.25)
    assert mse(a, a + 2) == mse(a + 2, a)


# ----------------------------------------------------------------- the attack


def test_unprotected_attack_reconstructs_a_real_digit(model: torch.nn.Module,
                                                      digits: Dataset) -> None:
    image, truth = _digit(digits, 4)
    gradient = victim_gradient(model, image, 4)
    result = invert_gradient(model, gradient, image_shape=SHAPE, true_image=truth,
                             config=AttackConfig(restarts=2, iterations=100))
    assert result.label_source == "inferred"
    assert result.best.ssim is not None and result.best.ssim >= SUCCESS_SSIM
    assert result.attacker_choice.ssim is not None and result.attacker_choice.ssim >= 0.9
    assert result.best.mse is not None and result.best.mse < 0.01
    assert all(c.label == 4 for c in result.candidates)
    assert result.visible == gradient.size and len(result.candidates) == 2
    assert all(p.grad is None for p in model.parameters())  # the model is left alone


def test_hidden_last_layer_falls_back_to_a_soft_label(model: torch.nn.Module,
                                                      digits: Dataset) -> None:
    image, truth = _digit(digits, 7)
    gradient = victim_gradient(model, image, 7)
    fc = layout_of(model).slice_of("fc")
    hidden = EncryptionMask(gradient.size, np.arange(fc.start, fc.stop, dtype=np.int64))
    result = invert_gradient(model, gradient, image_shape=SHAPE, hidden=hidden,
                             true_image=truth, config=AttackConfig(restarts=1, iterations=100))
    assert result.label_source == "optimised"
    assert result.best.ssim is not None and result.best.ssim >= SUCCESS_SSIM
    assert result.best.label == 7


def test_a_wrong_target_gradient_gives_a_low_ssim(model: torch.nn.Module,
                                                  digits: Dataset) -> None:
    _, truth = _digit(digits, 1)
    other, other_truth = _digit(digits, 0)
    assert ssim(truth, other_truth) < 0.3  # the two digits really differ
    gradient = victim_gradient(model, other, 0)  # not the victim's gradient
    result = invert_gradient(model, gradient, image_shape=SHAPE, true_image=truth,
                             config=AttackConfig(restarts=2, iterations=60))
    assert result.best.ssim is not None and result.best.ssim < 0.4
    # It did reconstruct the image the gradient came from: the attack itself works.
    assert ssim(result.attacker_choice.image, other_truth) >= SUCCESS_SSIM


def test_all_hidden_is_rejected(model: torch.nn.Module, digits: Dataset) -> None:
    image, _ = _digit(digits, 2)
    gradient = victim_gradient(model, image, 2)
    with pytest.raises(ParameterError, match="every gradient coordinate is hidden"):
        invert_gradient(model, gradient, image_shape=SHAPE,
                        hidden=EncryptionMask.full(gradient.size))


@pytest.mark.parametrize("attacker", list(Attacker))
def test_hidden_coordinates_do_not_influence_the_reconstruction(
        attacker: Attacker, model: torch.nn.Module, digits: Dataset,
        rng: np.random.Generator) -> None:
    image, truth = _digit(digits, 5)
    gradient = victim_gradient(model, image, 5)
    hidden = select_random_fraction(gradient.size, 0.3, seed=3)
    garbage = gradient.copy()
    garbage[hidden.indices] = rng.normal(0, 1e3, hidden.count)
    garbage[hidden.indices[:5]] = np.nan
    config = AttackConfig(attacker=attacker, restarts=1, iterations=20, seed=9)

    def attack(target: Image) -> tuple[Image, float]:
        result = invert_gradient(model, target, image_shape=SHAPE, hidden=hidden,
                                 config=config, true_image=truth)
        return result.best.image, result.best.matching_loss

    reference, loss = attack(gradient)
    same, same_loss = attack(garbage)
    assert np.array_equal(reference, same) and loss == same_loss
    # Control: a change to one *visible* coordinate does change the result.
    visible_change = gradient.copy()
    visible_change[hidden.plain_indices()[0]] += 1.0
    changed, _ = attack(visible_change)
    assert not np.array_equal(reference, changed)


def test_restarts_are_seeded(model: torch.nn.Module, digits: Dataset) -> None:
    image, _ = _digit(digits, 8)
    gradient = victim_gradient(model, image, 8)

    def images(seed: int) -> list[Image]:
        result = invert_gradient(model, gradient, image_shape=SHAPE,
                                 config=AttackConfig(restarts=2, iterations=3, seed=seed))
        return [c.image for c in result.candidates]

    first, again, other = images(0), images(0), images(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])  # restarts start from different points
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_infer_label_reads_the_last_layer_signs(model: torch.nn.Module,
                                                digits: Dataset) -> None:
    image, _ = _digit(digits, 6)
    gradient = victim_gradient(model, image, 6)
    visible = np.ones(gradient.size, dtype=bool)
    assert infer_label(model, gradient, visible) == 6
    fc = layout_of(model).slice_of("fc")
    visible[fc] = False
    assert infer_label(model, gradient, visible) is None


@pytest.mark.parametrize("overrides", [{"restarts": 0}, {"iterations": 0}, {"seed": -1},
                                       {"seed": 2**32}, {"threads": 0},
                                       {"infer_label": 1}, {"attacker": "dlg"},
                                       {"tv_weight": 1e-3},  # plain DLG has no prior
                                       {"attacker": Attacker.IG, "tv_weight": -1.0},
                                       {"attacker": Attacker.IG, "tv_weight": math.nan},
                                       {"learning_rate": 0.0}])
def test_attack_config_is_validated(overrides: dict[str, object]) -> None:
    with pytest.raises(ParameterError):
        AttackConfig(**overrides)  # type: ignore[arg-type]


def test_invert_gradient_rejects_bad_arguments(model: torch.nn.Module) -> None:
    size = sum(p.numel() for p in model.parameters())
    with pytest.raises(ParameterError, match="values, the model"):
        invert_gradient(model, np.zeros(size - 1), image_shape=SHAPE)
    with pytest.raises(ParameterError, match="does not accept images"):
        invert_gradient(model, np.zeros(size), image_shape=(3, 16, 16))
    with pytest.raises(ParameterError, match="image_shape"):
        invert_gradient(model, np.zeros(size), image_shape=(16, 16))  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="true_image"):
        invert_gradient(model, np.zeros(size), image_shape=SHAPE, true_image=np.zeros((16, 16)))
    with pytest.raises(ParameterError, match="EncryptionMask of length"):
        invert_gradient(model, np.zeros(size), image_shape=SHAPE,
                        hidden=EncryptionMask.empty(size + 1))
    with pytest.raises(ParameterError, match="NaN"):
        invert_gradient(model, np.full(size, np.nan), image_shape=SHAPE)


def test_total_variation_has_its_analytic_values() -> None:
    assert float(total_variation(torch.full((1, 3, 5, 5), 0.7))) == 0.0
    # A 0/1 checkerboard: every neighbour differs by 1, in both directions.
    board = (torch.arange(6).view(6, 1) + torch.arange(6).view(1, 6)) % 2
    assert float(total_variation(board.float().view(1, 1, 6, 6))) == pytest.approx(2.0)
    # Vertical stripes: only horizontal neighbours differ.
    stripes = (torch.arange(4) % 2).float().expand(4, 4).reshape(1, 1, 4, 4)
    assert float(total_variation(stripes)) == pytest.approx(1.0)


def test_convergence_evidence_tells_tolerance_from_the_limit(digits: Dataset) -> None:
    # Logistic regression is inverted exactly: L-BFGS stops early, by tolerance.
    logreg = build_model("logreg")
    image = digits.test.images[0]
    small = torch.nn.functional.interpolate(image.unsqueeze(0), size=(8, 8), mode="area")[0]
    gradient = victim_gradient(logreg, small, int(digits.test.labels[0]))
    energy = float(np.dot(gradient, gradient))
    result = invert_gradient(logreg, gradient, image_shape=(1, 8, 8),
                             config=AttackConfig(restarts=1, iterations=200))
    exact = result.best
    assert exact.stop == "tolerance" and exact.iterations < 200
    assert exact.relative_loss == pytest.approx(exact.matching_loss / energy, rel=1e-9)
    assert exact.relative_loss < 1e-9
    # The LeNet with a handful of iterations runs out of budget: "limit", and it says so.
    lenet = dlg_model(0)
    victim = digits.test.images[1]
    gradient = victim_gradient(lenet, victim, int(digits.test.labels[1]))
    for attacker in Attacker:
        stalled = invert_gradient(lenet, gradient, image_shape=SHAPE, config=AttackConfig(
            attacker=attacker, restarts=1, iterations=5)).best
        assert stalled.stop == "limit" and stalled.relative_loss > 1e-3
        assert stalled.iterations <= 5
        if attacker is Attacker.IG:  # cosine: the relative loss is 1 - cos itself
            assert stalled.relative_loss == stalled.matching_loss <= 2.0
            assert stalled.iterations == 5
        else:
            energy = float(np.dot(gradient, gradient))
            assert stalled.relative_loss == pytest.approx(stalled.matching_loss / energy)


def test_the_cosine_relative_loss_is_never_negative(digits: Dataset) -> None:
    # At the true image IG's distance 1 - cos(g, g) is 0, but float32 rounding puts cos
    # above 1 for some images (docs/privacy/uploads printed a rel. loss of -2.4e-07)
    logreg = build_model("logreg", image_size=16)
    raw = []
    for image, label in zip(digits.test.images[:8], digits.test.labels[:8].tolist(),
                            strict=True):
        gradient = victim_gradient(logreg, image, label)
        target = GradientTarget(torch.from_numpy(gradient).float(),
                                torch.arange(len(gradient)), float(np.dot(gradient, gradient)))
        objective = MatchingObjective(logreg, target, AttackConfig(attacker=Attacker.IG))
        raw.append(float(objective.data(image.unsqueeze(0), label).detach()))
        assert objective.relative(raw[-1]) == max(raw[-1], 0.0)
    assert min(raw) < 0 < max(raw) < 1e-5  # the rounding is real, and both ways
    assert objective.relative(0.25) == 0.25  # a real distance is kept as it is


def test_torch_threads_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# ----------------------------------------------------------------- the evaluation


def test_dlg_model_uses_dlg_initialisation() -> None:
    model = dlg_model(0)
    values = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert float(values.min()) >= -0.5 and float(values.max()) <= 0.5
    # PyTorch's default init would keep the FC weights within 1/sqrt(192) = 0.07.
    assert float(dict(model.named_parameters())["fc.weight"].detach().abs().max()) > 0.45
    assert torch.equal(values, torch.cat([p.detach().reshape(-1)
                                          for p in dlg_model(0).parameters()]))


def test_evaluation_config_is_validated() -> None:
    with pytest.raises(ParameterError, match="images"):
        EvalConfig(images=11)  # only 10 distinct classes
    with pytest.raises(ParameterError, match="restarts"):
        EvalConfig(restarts=0)
    with pytest.raises(ParameterError, match="at least one setting"):
        EvalConfig(settings=())
    with pytest.raises(ParameterError, match="fraction"):
        Setting("too much", "random", 1.5)
    with pytest.raises(ParameterError, match="kind"):
        Setting("unknown", "everything", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="dataset"):
        EvalConfig(dataset="cifar")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="each once"):
        EvalConfig(attackers=(Attacker.DLG, Attacker.DLG))
    with pytest.raises(ParameterError, match="each once"):
        EvalConfig(attackers=())
    with pytest.raises(ParameterError, match="image_size"):
        EvalConfig(dataset="photos", image_size=4)
    with pytest.raises(ParameterError, match="images"):
        EvalConfig(dataset="photos", images=33)  # 32 patches exist
    assert EvalConfig(dataset="photos", images=32).shape.classes == 100


@pytest.fixture(scope="module")
def quick_run() -> tuple[Evaluation, list[str]]:
    lines: list[str] = []
    return evaluate(EvalConfig.quick(), progress=lines.append), lines


def test_quick_evaluation_writes_all_outputs(quick_run: tuple[Evaluation, list[str]],
                                             tmp_path: Path) -> None:
    evaluation, lines = quick_run
    names = [s.name for s in DEFAULT_SETTINGS]
    assert lines[0] == ("[attack] 2 victims, LeNet 1x16x16, 9,466 parameters, "
                        "attackers dlg")
    assert len(lines) == 1 + len(names) and all("s (total" in line for line in lines[1:])
    assert all("rel. loss" in line and "limit" in line for line in lines[1:])
    table, data, figure = write_outputs(evaluation, tmp_path / "out")
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]] == names
    parsed = json.loads(data.read_text())
    assert [row["setting"]["name"] for row in parsed["rows"]] == names
    assert parsed["parameters"] == 9466 and len(parsed["victims"]) == 2
    assert len({v["label"] for v in parsed["victims"]}) == 2  # distinct classes
    assert figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    fractions = {row["setting"]["name"]: np.mean([i["hidden_fraction"] for i in row["images"]])
                 for row in parsed["rows"]}
    assert fractions["none"] == 0.0
    assert fractions["top-0.1"] == pytest.approx(0.1, abs=1e-3)
    assert fractions["random-0.5"] == pytest.approx(0.5, abs=1e-3)
    # The first and last layers (312 + 1,930 coordinates) are added to the top 10%.
    layers = (312 + 1930) / 9466
    assert layers <= fractions["top-0.1 + first/last layers"] <= 0.1 + layers
    unprotected = evaluation.outcomes[0]
    assert min(unprotected.ssim) >= SUCCESS_SSIM
    first = parsed["rows"][0]["images"][0]
    assert first["stop"] in ("tolerance", "limit") and 1 <= first["iterations"] <= 40
    assert first["scores"]["vif"] is None  # 16 pixels: too small for VIF
    assert first["scores"]["ssim"] == pytest.approx(unprotected.images[0].ssim)


@pytest.fixture(scope="module")
def colour_run() -> tuple[Evaluation, list[str]]:
    lines: list[str] = []
    config = EvalConfig.quick(dataset="photos", image_size=16, images=2, restarts=1,
                              iterations=30, attackers=tuple(Attacker),
                              settings=DEFAULT_SETTINGS[:3])
    return evaluate(config, progress=lines.append), lines


def test_colour_evaluation_reports_every_attacker_and_the_worst_case(
        colour_run: tuple[Evaluation, list[str]], tmp_path: Path) -> None:
    evaluation, lines = colour_run
    assert evaluation.config.shape.channels == 3 and evaluation.config.shape.classes == 100
    assert [v.image.shape for v in evaluation.victims] == [(3, 16, 16)] * 2
    assert [v.name for v in evaluation.victims] == ["astronaut #0", "chelsea #0"]
    attackers = [a.value for a in Attacker] + ["worst case"]
    assert [o.attacker for o in evaluation.outcomes] == attackers * 3
    assert len(lines) == 1 + 4 * 3
    for start in range(0, len(evaluation.outcomes), 4):
        rows = evaluation.outcomes[start:start + 4]
        worst = rows[3]
        for number in range(2):
            assert worst.images[number].ssim == max(r.images[number].ssim for r in rows[:3])
    table, data, _ = write_outputs(evaluation, tmp_path / "colour")
    text = table.read_text()
    assert "LeNet 3x16x16, 100 classes" in text and "| none | worst case |" in text
    parsed = json.loads(data.read_text())
    assert parsed["config"]["attackers"] == ["dlg", "dlg-tv", "ig"]
    assert all(set(i["scores"]) == {"ssim", "ms_ssim", "uqi", "vif", "psnr", "mse"}
               for row in parsed["rows"] for i in row["images"])


@pytest.mark.parametrize(("text", "expected"), [
    ("none", Setting("none", "none")),
    ("top-0.1", Setting("top-0.1", "top", 0.1)),
    ("top-0.97", Setting("top-0.97", "top", 0.97)),
    ("top-0.1+layers", Setting("top-0.1 + first/last layers", "top+layers", 0.1)),
    ("random-0.425", Setting("random-0.425", "random", 0.425)),
])
def test_settings_parse_from_their_short_form(text: str, expected: Setting) -> None:
    assert parse_setting(text) == expected


@pytest.mark.parametrize("text", ["", "none-0.1", "top", "top-x", "random-0.1+layers",
                                  "all-0.5", "random--1"])
def test_bad_settings_are_refused(text: str) -> None:
    with pytest.raises(ParameterError, match="is not none, top-P"):
        parse_setting(text)


def test_a_random_mask_does_not_depend_on_the_settings_order() -> None:
    alone, listed = (EvalConfig(images=1, restarts=1, iterations=2, local_samples=2,
                                settings=settings)
                     for settings in ((parse_setting("random-0.3"),),
                                      (parse_setting("none"), parse_setting("random-0.1"),
                                       parse_setting("random-0.3"))))
    first, second = evaluate(alone, progress=None), evaluate(listed, progress=None)
    same = first.outcomes[0].images[0].image
    assert np.array_equal(same, second.outcomes[2].images[0].image)
    # Control: another fraction is another mask, and so another reconstruction.
    assert not np.array_equal(same, second.outcomes[1].images[0].image)


def test_worst_case_needs_one_setting(quick_run: tuple[Evaluation, list[str]]) -> None:
    evaluation, _ = quick_run
    with pytest.raises(ParameterError, match="one setting"):
        worst_case(evaluation.outcomes[:2])


def test_cli_attack_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = cli.main(["attack", "--quick", "--images", "1", "--restarts", "1", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "| top-0.1 + first/last layers | dlg |" in captured.out
    assert captured.err.count("[attack]") == 1 + len(DEFAULT_SETTINGS)
    assert {p.name for p in out.iterdir()} == {"privacy.md", "privacy.json",
                                               "reconstructions.png"}


def test_cli_attack_photos_with_every_attacker(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["attack", "--dataset", "photos", "--image-size", "16", "--attacker",
                     "all", "--images", "1", "--restarts", "1", "--iterations", "2",
                     "--tv-weight", "0.001", "--settings", "none,top-0.97,random-0.425",
                     "--out", str(tmp_path)])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.err.count("[attack]") == 1 + 4 * 3
    assert "| random-0.425 | worst case |" in captured.out
    parsed = json.loads((tmp_path / "privacy.json").read_text())
    assert parsed["config"]["tv_weight"] == 0.001 and parsed["parameters"] == 27_436


@pytest.mark.parametrize(("arguments", "message"), [
    (["--images", "0"], "must be in [1, 32]"),
    (["--images", "11"], "images must be an int in [1, 10]"),
    (["--attacker", "gan"], "is not an attacker"),
    (["--dataset", "cifar"], "invalid choice"),
    (["--classes", "5"], "classes must be an int in [10, 1000]"),
    (["--settings", "top-1.5"], "is not none, top-P"),
    (["--restarts", "two"], "is not a valid int"),
    (["--seed", "-1"], "must be in [0, "),
])
def test_cli_attack_rejects_bad_arguments(arguments: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["attack", *arguments])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
