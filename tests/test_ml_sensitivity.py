"""Sensitivity maps against a slow, literal reference on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from threshold_fl.errors import ParameterError
from threshold_fl.ml.flatten import flatten_state, layout_of
from threshold_fl.ml.models import MODELS, build_model
from threshold_fl.ml.sensitivity import sensitivity_map

CLASSES = 3


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, CLASSES))


def tiny_data(count: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, 4, generator=generator)
    return inputs, torch.randint(0, CLASSES, (count,), generator=generator)


def soft_cross_entropy(logits: torch.Tensor, soft_labels: torch.Tensor) -> torch.Tensor:
    return -(soft_labels * torch.log_softmax(logits, dim=-1)).sum()


def literal_reference(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                      loss: object = soft_cross_entropy) -> np.ndarray:
    """The definition, one scalar at a time: for every sample and every parameter
    coordinate, differentiate d loss / d w_m with respect to the float one-hot label."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for image, label in zip(inputs, labels, strict=True):
        soft = nn.functional.one_hot(label, CLASSES).double().float().requires_grad_(True)
        value = loss(model(image.unsqueeze(0)), soft.unsqueeze(0))  # type: ignore[operator]
        gradients = torch.autograd.grad(value, params, create_graph=True)
        for index, gradient in enumerate(gradients):
            flat = gradient.reshape(-1)
            norms = torch.zeros(flat.numel())
            for m in range(flat.numel()):
                (by_label,) = torch.autograd.grad(flat[m], soft, retain_graph=True)
                norms[m] = by_label.norm()
            total[index] += norms.reshape(gradient.shape)
    return np.concatenate([(t / len(labels)).reshape(-1).double().numpy() for t in total])


def test_fast_route_matches_the_literal_definition() -> None:
    model, (inputs, labels) = tiny_model(), tiny_data()
    expected = literal_reference(model, inputs, labels)
    got = sensitivity_map(model, inputs, labels)
    assert got.shape == expected.shape == (4 * 5 + 5 + 5 * CLASSES + CLASSES,)
    assert np.all(expected > 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_custom_loss_takes_the_literal_route_and_agrees() -> None:
    model, (inputs, labels) = tiny_model(2), tiny_data(5, 3)
    expected = literal_reference(model, inputs, labels)
    got = sensitivity_map(model, inputs, labels, loss=soft_cross_entropy)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_a_different_loss_gives_its_own_map() -> None:
    def squared_error(logits: torch.Tensor, soft_labels: torch.Tensor) -> torch.Tensor:
        return ((logits - soft_labels) ** 2).sum()

    model, (inputs, labels) = tiny_model(4), tiny_data(4, 5)
    expected = literal_reference(model, inputs, labels, squared_error)
    got = sensitivity_map(model, inputs, labels, loss=squared_error)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(got, sensitivity_map(model, inputs, labels), rtol=1e-2)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 100])
def test_batching_does_not_change_the_map(batch_size: int) -> None:
    model, (inputs, labels) = tiny_model(), tiny_data(7)
    whole = sensitivity_map(model, inputs, labels, batch_size=100)
    np.testing.assert_allclose(sensitivity_map(model, inputs, labels, batch_size=batch_size),
                               whole, rtol=1e-6, atol=1e-9)


def test_memory_budget_bounds_the_batch_and_progress_reports_it() -> None:
    model, (inputs, labels) = tiny_model(), tiny_data(9)
    calls: list[tuple[int, int]] = []
    parameters = layout_of(model).size
    # Room for two samples' gradients (fast route: 2 floats per parameter per sample).
    budget = 2 * 2 * parameters * 4
    got = sensitivity_map(model, inputs, labels, memory_budget=budget,
                          progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 9), (4, 9), (6, 9), (8, 9), (9, 9)]
    np.testing.assert_allclose(got, sensitivity_map(model, inputs, labels), rtol=1e-6)


def test_buffers_get_zero_and_training_mode_is_restored() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, CLASSES))
    model.train()
    inputs, labels = tiny_data(8)
    model(inputs)  # non-trivial running statistics
    before, _ = flatten_state(model)
    result = sensitivity_map(model, inputs, labels)
    layout = layout_of(model)
    for spec in layout.tensors:
        part = result[spec.offset:spec.stop]
        if "running" in spec.name:
            assert np.all(part == 0), spec.name
        else:
            assert np.all(part >= 0) and part.max() > 0, spec.name
    assert model.training
    np.testing.assert_array_equal(flatten_state(model)[0], before)  # nothing was changed


def test_label_does_not_matter_for_cross_entropy() -> None:
    # d/dy (d CE / d w) = -d log p / d w: independent of the true label, as derived.
    model, (inputs, labels) = tiny_model(), tiny_data()
    np.testing.assert_allclose(sensitivity_map(model, inputs, labels),
                               sensitivity_map(model, inputs, (labels + 1) % CLASSES))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gets_a_finite_non_negative_map(name: str) -> None:
    size = MODELS[name].image_size
    model = build_model(name, seed=0)
    inputs = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    result = sensitivity_map(model, inputs, torch.tensor([3, 7]))
    assert result.shape == (layout_of(model).size,)
    assert np.all(np.isfinite(result)) and np.all(result >= 0) and result.max() > 0


@pytest.mark.parametrize(
    ("inputs", "labels", "message"),
    [
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), "at least one sample"),
        (torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), "integer class indices"),
        (torch.zeros(2, 4), torch.zeros(2), "integer class indices"),
        (torch.full((2, 4), float("nan")), torch.zeros(2, dtype=torch.long), "NaN"),
        (torch.zeros(2, 4), torch.tensor([0, CLASSES]), "must lie in"),
        (np.zeros((2, 4)), torch.zeros(2, dtype=torch.long), "torch tensors"),
    ],
)
def test_bad_input_is_refused(inputs: object, labels: object, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        sensitivity_map(tiny_model(), inputs, labels)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"batch_size": True},
                                     {"memory_budget": 0}])
def test_bad_batching_options_are_refused(options: dict[str, int]) -> None:
    inputs, labels = tiny_data()
    with pytest.raises(ParameterError):
        sensitivity_map(tiny_model(), inputs, labels, **options)  # type: ignore[arg-type]
