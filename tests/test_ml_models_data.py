"""Models, the digits dataset, client splits, local training and the learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from threshold_fl.errors import ParameterError
from threshold_fl.ml.data import ClientData, load_digits, split_dirichlet, split_iid
from threshold_fl.ml.flatten import layout_of
from threshold_fl.ml.learner import LocalLearner
from threshold_fl.ml.mask import EncryptionMask
from threshold_fl.ml.models import MODELS, build_model, model_shape, parameter_count
from threshold_fl.ml.privacy import LaplaceNoise
from threshold_fl.ml.training import LocalTraining, evaluate, train_local


def test_the_paper_cnn_has_the_papers_parameter_count() -> None:
    assert parameter_count(build_model("cnn")) == 1_663_370


@pytest.mark.parametrize(("name", "count"), [("logreg", 650), ("mlp", 4_810),
                                             ("lenet", 9_466), ("transformer", 69_834)])
def test_documented_parameter_counts(name: str, count: int) -> None:
    assert parameter_count(build_model(name)) == count


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_are_seeded_and_leave_the_global_rng_alone(name: str) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, second = build_model(name, seed=5), build_model(name, seed=5)
    assert torch.rand(1) == expected_next
    other = build_model(name, seed=6)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters(),
                                                     strict=True))
    size = MODELS[name].image_size
    assert first(torch.zeros(3, 1, size, size)).shape == (3, 10)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("resnet", {}, "unknown model"),
    ("cnn", {"image_size": 2}, "image_size"),
    ("transformer", {"image_size": 10}, "divisible"),
    ("mlp", {"seed": "1"}, "seed"),
])
def test_bad_model_requests_are_refused(name: str, options: dict[str, object],
                                        message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        build_model(name, **options)  # type: ignore[arg-type]


def test_digits_are_real_scaled_and_split_by_class() -> None:
    data = load_digits()
    assert len(data.train) + len(data.test) == 1797
    assert data.train.images.shape[1:] == (1, 8, 8)
    assert float(data.train.images.min()) == 0.0 and float(data.train.images.max()) == 1.0
    train_counts = torch.bincount(data.train.labels, minlength=10)
    test_counts = torch.bincount(data.test.labels, minlength=10)
    assert torch.all(test_counts >= 35) and torch.all(train_counts >= 135)  # stratified
    again = load_digits()
    assert torch.equal(again.test.images, data.test.images)
    resized = load_digits(image_size=28)
    assert resized.train.images.shape[1:] == (1, 28, 28)
    assert torch.equal(resized.train.labels, data.train.labels)
    assert float(resized.train.images.max()) <= 1.0


def test_iid_split_is_a_seeded_partition() -> None:
    parts = split_iid(100, 3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert [len(p) for p in parts] == [34, 33, 33]
    assert all(np.array_equal(a, b) for a, b in zip(parts, split_iid(100, 3, seed=1),
                                                    strict=True))
    assert not np.array_equal(parts[0], split_iid(100, 3, seed=2)[0])
    with pytest.raises(ParameterError, match="cannot split"):
        split_iid(2, 3, seed=0)


def test_dirichlet_split_is_a_partition_skewed_by_alpha() -> None:
    labels = load_digits().train.labels.numpy()

    def skew(alpha: float) -> float:
        parts = split_dirichlet(labels, 4, alpha=alpha, seed=3)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
        assert min(len(p) for p in parts) >= 10
        shares = [np.bincount(labels[p], minlength=10) / len(p) for p in parts]
        return float(np.mean([np.abs(s - 0.1).sum() for s in shares]))

    assert skew(0.1) > 3 * skew(100.0)


@pytest.mark.parametrize(("options", "message"), [
    ({"alpha": 0.0}, "alpha"), ({"alpha": float("nan")}, "alpha"),
    ({"alpha": 1.0, "min_samples": 1000}, "cannot give"),
    ({"alpha": 1.0, "clients": 0}, "clients"),
])
def test_bad_dirichlet_requests_are_refused(options: dict[str, float], message: str) -> None:
    arguments = {"clients": 3, "seed": 0, **options}
    with pytest.raises(ParameterError, match=message):
        split_dirichlet(np.arange(300) % 10, **arguments)  # type: ignore[arg-type]


def test_local_training_learns_and_is_deterministic() -> None:
    data = load_digits()
    before = evaluate(build_model("logreg"), data.test)
    models = [build_model("logreg") for _ in range(2)]
    for model in models:
        train_local(model, data.train, LocalTraining(epochs=3, learning_rate=0.1), seed=4)
    after = evaluate(models[0], data.test)
    assert after.accuracy > 0.85 > before.accuracy + 0.5
    assert after.loss < before.loss
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", [{"epochs": 0}, {"batch_size": 1.5},
                                     {"learning_rate": -1.0}, {"momentum": 1.0}])
def test_bad_training_plans_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ParameterError):
        LocalTraining(**options)  # type: ignore[arg-type]


def test_learner_trains_from_the_global_model_and_noises_only_plain_coordinates() -> None:
    data = load_digits().train.subset(np.arange(120))
    learner = LocalLearner(build_model("logreg"), data, LocalTraining(), seed=1)
    plain = learner.train(1, None)
    assert not np.array_equal(plain, learner.initial)
    np.testing.assert_array_equal(learner.train(1, None), plain)  # same seed, same bits
    mask = EncryptionMask(learner.length, np.arange(0, learner.length, 2))
    noisy_learner = LocalLearner(build_model("logreg"), data, LocalTraining(), seed=1,
                                 noise=LaplaceNoise(scale=0.5, clip=10.0), noise_seed=9)
    with pytest.raises(ParameterError, match="mask"):
        noisy_learner.train(1, None)
    noisy = noisy_learner.train(1, None, mask)
    np.testing.assert_array_equal(noisy[mask.indices], plain[mask.indices])
    assert np.all(noisy[mask.plain_indices()] != plain[mask.plain_indices()])
    sensitivity = learner.sensitivity()
    assert sensitivity.shape == (learner.length,) and sensitivity.max() > 0


def test_client_data_checks_its_shapes() -> None:
    with pytest.raises(ParameterError, match="labels"):
        ClientData(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ParameterError, match="images"):
        ClientData(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.long))


def test_model_shape_is_the_flat_length_and_the_first_and_last_layers() -> None:
    shape = model_shape("cnn")
    layout = layout_of(build_model("cnn"))
    assert shape.length == layout.size == 1_663_370
    first, last = layout.tensors[0], layout.tensors[-1]
    assert shape.first_and_last[0][0] == first.offset == 0
    assert shape.first_and_last[-1][1] == last.offset + last.size == layout.size
    assert model_shape(build_model("cnn", seed=3)) == shape  # by module as by name
