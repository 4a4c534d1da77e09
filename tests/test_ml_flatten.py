"""Tests for threshold_fl.ml.flatten: exact round trips, explicit non-float state,
strict layout checks and a plain-data layout format."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from threshold_fl.errors import ModelLayoutError, ParameterError
from threshold_fl.ml import (
    ModelLayout,
    TensorSpec,
    flatten_state,
    layout_of,
    restore_state,
    vector_to_state_dict,
)

# --------------------------------------------------------------------------- models


def make_mlp(seed: int, hidden: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.conv(x)))
        return self.head(features.mean(dim=(2, 3)))


def make_cnn(seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN()


def trained_cnn(seed: int) -> SmallCNN:
    """A CNN after one SGD step in train mode: running stats and the counter have moved."""
    model = make_cnn(seed)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, labels = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
    nn.functional.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    return model


class MixedPrecision(nn.Module):
    """float16 and bfloat16 parameters, a float64 buffer and a bool buffer."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.half_weight = nn.Parameter(torch.randn(5, 3).half())
        self.brain_bias = nn.Parameter(torch.randn(3).to(torch.bfloat16))
        self.register_buffer("scale", torch.randn(4, dtype=torch.float64))
        self.register_buffer("mask", torch.tensor([True, False, True]))


def assert_same_state(a: nn.Module, b: nn.Module, skip: tuple[str, ...] = ()) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for name in state_a:
        if name in skip:
            continue
        assert state_a[name].dtype == state_b[name].dtype, name
        assert torch.equal(state_a[name], state_b[name]), name


def float_names(layout: ModelLayout) -> list[str]:
    return [spec.name for spec in layout.tensors]


# --------------------------------------------------------------------------- round trips


def test_mlp_round_trip_into_fresh_model() -> None:
    source, target = make_mlp(seed=0), make_mlp(seed=1)
    assert not torch.equal(source[0].weight, target[0].weight)  # the restore must do the work
    vector, layout = flatten_state(source)
    assert vector.dtype == np.float64 and vector.shape == (6 * 8 + 8 + 8 * 3 + 3,)
    assert layout.size == vector.size and layout.non_float == ()
    expected = np.concatenate([p.detach().numpy().ravel() for p in source.state_dict().values()])
    np.testing.assert_array_equal(vector, expected)
    restore_state(target, vector, layout)
    assert_same_state(source, target)


def test_cnn_with_batchnorm_round_trip_leaves_counter_alone() -> None:
    source, target = trained_cnn(seed=0), make_cnn(seed=1)
    assert int(source.bn.num_batches_tracked) == 1
    assert not torch.equal(source.bn.running_mean, target.bn.running_mean)
    vector, layout = flatten_state(source)
    assert layout.non_float == ("bn.num_batches_tracked",)
    assert "bn.num_batches_tracked" not in float_names(layout)
    assert {"bn.running_mean", "bn.running_var"} <= set(float_names(layout))
    float_count = sum(t.numel() for t in source.state_dict().values() if t.is_floating_point())
    assert vector.size == layout.size == float_count
    restore_state(target, vector, layout)
    assert_same_state(source, target, skip=("bn.num_batches_tracked",))
    assert int(target.bn.num_batches_tracked) == 0  # left as is, not averaged or overwritten


def test_explicit_non_float_values_are_written() -> None:
    source, target = trained_cnn(seed=0), make_cnn(seed=1)
    vector, layout = flatten_state(source)
    counter = {"bn.num_batches_tracked": source.bn.num_batches_tracked.clone()}
    restore_state(target, vector, layout, non_float=counter)
    assert_same_state(source, target)
    assert int(target.bn.num_batches_tracked) == 1


def test_restore_writes_in_place_keeping_tensors_and_flags() -> None:
    source, target = trained_cnn(seed=0), make_cnn(seed=1)
    weight, running_mean = target.conv.weight, target.bn.running_mean
    pointer = weight.data_ptr()
    vector, layout = flatten_state(source)
    restore_state(target, vector, layout)
    assert target.conv.weight is weight and weight.data_ptr() == pointer
    assert target.bn.running_mean is running_mean
    assert weight.requires_grad and weight.grad is None
    assert torch.equal(weight, source.conv.weight)


def test_mixed_precision_round_trip_is_exact() -> None:
    source, target = MixedPrecision(seed=0), MixedPrecision(seed=1)
    vector, layout = flatten_state(source)
    dtypes = {spec.name: spec.dtype for spec in layout.tensors}
    assert dtypes == {"half_weight": "float16", "brain_bias": "bfloat16", "scale": "float64"}
    assert layout.non_float == ("mask",)
    half_values = torch.from_numpy(vector[layout.slice_of("half_weight")]).reshape(5, 3)
    assert torch.equal(half_values.half(), source.half_weight.detach())
    restore_state(target, vector, layout)
    assert_same_state(source, target)
    assert target.half_weight.dtype == torch.float16 and target.brain_bias.dtype == torch.bfloat16


def test_flatten_accepts_a_state_dict_and_a_matching_layout() -> None:
    model = trained_cnn(seed=0)
    from_model, layout = flatten_state(model)
    from_dict, same_layout = flatten_state(model.state_dict(), layout=layout)
    np.testing.assert_array_equal(from_model, from_dict)
    assert same_layout == layout == layout_of(make_cnn(seed=5))


def test_vector_to_state_dict_builds_a_new_independent_dict() -> None:
    source, template = trained_cnn(seed=0), make_cnn(seed=1)
    vector, layout = flatten_state(source)
    before = copy.deepcopy(template.state_dict())
    state = vector_to_state_dict(vector, layout, template)
    for name, tensor in source.state_dict().items():
        if name != "bn.num_batches_tracked":
            assert torch.equal(state[name], tensor) and state[name].dtype == tensor.dtype
    assert int(state["bn.num_batches_tracked"]) == 0  # taken from the template
    state["bn.num_batches_tracked"] += 5
    vector[:] = 0.0
    assert state["conv.weight"].abs().sum() > 0  # does not alias the vector
    for name, tensor in template.state_dict().items():  # template untouched
        assert torch.equal(tensor, before[name])
    fresh = make_cnn(seed=2)
    fresh.load_state_dict(vector_to_state_dict(flatten_state(source)[0], layout, fresh))
    assert_same_state(source, fresh, skip=("bn.num_batches_tracked",))


def test_vector_to_state_dict_float64_entries_do_not_alias_the_vector() -> None:
    source = MixedPrecision(seed=0)
    vector, layout = flatten_state(source)
    state = vector_to_state_dict(vector, layout, source)
    vector[layout.slice_of("scale")] = 0.0  # float64 needs no cast, so a copy must be explicit
    assert torch.equal(state["scale"], source.scale) and state["scale"].abs().sum() > 0


# --------------------------------------------------------------------------- mismatches


def test_restore_into_other_architecture_names_the_difference() -> None:
    vector, layout = flatten_state(make_mlp(seed=0))
    with pytest.raises(ModelLayoutError, match=r"'0\.weight' has \(shape, dtype\)"):
        restore_state(make_mlp(seed=0, hidden=9), vector, layout)
    with pytest.raises(ModelLayoutError, match=r"missing from the model \['0\.weight'"):
        restore_state(make_cnn(seed=0), vector, layout)
    with pytest.raises(ModelLayoutError, match="does not match the layout"):
        flatten_state(make_cnn(seed=0), layout=layout)


def test_dtype_change_is_a_mismatch() -> None:
    vector, layout = flatten_state(make_mlp(seed=0))
    with pytest.raises(ModelLayoutError, match="float64"):
        restore_state(make_mlp(seed=0).double(), vector, layout)


def test_missing_counter_is_a_mismatch() -> None:
    vector, layout = flatten_state(trained_cnn(seed=0))
    model = make_cnn(seed=0)
    model.bn.num_batches_tracked = None  # a None buffer is left out of the state dict
    with pytest.raises(ModelLayoutError, match="non-float entries are"):
        restore_state(model, vector, layout)


@pytest.mark.parametrize(
    ("make_vector", "message"),
    [
        (lambda v: v[:-1], r"has 82 values, layout expects 83"),
        (lambda v: np.concatenate([v, [0.0]]), r"has 84 values, layout expects 83"),
        (lambda v: v.reshape(1, -1), r"must be 1-D, got shape \(1, 83\)"),
        (lambda v: v.astype(np.int64), r"must hold real floats"),
        (lambda v: v.astype(np.complex128), r"must hold real floats"),
    ],
)
def test_bad_vector_shape_or_dtype(
    make_vector: Callable[[np.ndarray], np.ndarray], message: str
) -> None:
    vector, layout = flatten_state(make_mlp(seed=0))
    assert layout.size == 83
    with pytest.raises(ModelLayoutError, match=message):
        restore_state(make_mlp(seed=1), make_vector(vector), layout)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_vector_names_first_bad_tensor_and_changes_nothing(bad_value: float) -> None:
    vector, layout = flatten_state(trained_cnn(seed=0))
    vector[layout.slice_of("bn.running_var").start + 1] = bad_value
    vector[layout.slice_of("head.weight").start] = bad_value
    target = make_cnn(seed=1)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ModelLayoutError, match=r"NaN or infinity in tensor 'bn\.running_var'"):
        restore_state(target, vector, layout)
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_overflow_of_a_narrow_dtype_is_rejected() -> None:
    source = MixedPrecision(seed=0)
    vector, layout = flatten_state(source)
    vector[layout.slice_of("half_weight").start] = 1e6  # finite in float64, inf in float16
    with pytest.raises(ModelLayoutError, match="'half_weight' overflow float16"):
        restore_state(MixedPrecision(seed=1), vector, layout)


def test_wrong_argument_types_are_parameter_errors() -> None:
    model = make_mlp(seed=0)
    vector, layout = flatten_state(model)
    with pytest.raises(ParameterError, match="numpy array"):
        restore_state(model, vector.tolist(), layout)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="ModelLayout"):
        restore_state(model, vector, layout.to_dict())  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"must be an nn\.Module, got dict"):
        restore_state(dict(model.state_dict()), vector, layout)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"an nn\.Module or a state dict, got list"):
        layout_of([1, 2, 3])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("non_float", "message"),
    [
        ({"bn.weight": torch.ones(4)}, r"'bn\.weight' is a float tensor, restored from the vector"),
        ({"bn.nonsense": torch.tensor(1)}, r"'bn\.nonsense' is unknown"),
        ({"bn.num_batches_tracked": torch.tensor(1.0)}, r"must be torch\.int64 of shape \(\)"),
        ({"bn.num_batches_tracked": torch.tensor([1])}, r"got torch\.int64 of shape \(1,\)"),
        ({"bn.num_batches_tracked": 1}, r"is of type int, not a tensor"),
    ],
)
def test_bad_non_float_values_are_rejected(non_float: dict[str, Any], message: str) -> None:
    vector, layout = flatten_state(trained_cnn(seed=0))
    target = make_cnn(seed=1)
    with pytest.raises(ParameterError, match=message):
        restore_state(target, vector, layout, non_float=non_float)
    assert int(target.bn.num_batches_tracked) == 0


class ComplexModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, dtype=torch.complex64))


class ExtraStateModel(nn.Module):
    def get_extra_state(self) -> dict[str, int]:
        return {"step": 3}

    def set_extra_state(self, state: object) -> None:
        pass


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (ComplexModel(), r"'weight' is complex \(torch\.complex64\)"),
        ({"w": torch.zeros(2, dtype=torch.float8_e4m3fn)}, r"'w' has dtype torch\.float8_e4m3fn"),
        ({"w": torch.zeros(2, 2).to_sparse()}, r"'w' is sparse"),
        (ExtraStateModel(), r"'_extra_state' is a dict, not a tensor"),
        ({"": torch.zeros(1)}, "non-empty strings"),
    ],
)
def test_unsupported_state_is_rejected_clearly(source: Any, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        layout_of(source)
    with pytest.raises(ParameterError, match=message):
        flatten_state(source)


def test_flatten_refuses_a_diverged_model() -> None:
    model = make_mlp(seed=0)
    with torch.no_grad():
        model[2].bias[1] = float("nan")
    with pytest.raises(ParameterError, match=r"'2\.bias' holds NaN"):
        flatten_state(model)


# --------------------------------------------------------------------------- layout object


def test_fingerprint_tracks_architecture_not_weights() -> None:
    same = layout_of(trained_cnn(seed=0)).fingerprint()
    assert same == layout_of(make_cnn(seed=7)).fingerprint()
    assert len(same) == 64 and int(same, 16) >= 0
    assert layout_of(make_mlp(0)).fingerprint() == layout_of(make_mlp(1)).fingerprint()
    others = {
        layout_of(make_mlp(0, hidden=9)).fingerprint(),
        layout_of(make_mlp(0).double()).fingerprint(),
        layout_of(make_cnn(0)).fingerprint(),
        layout_of(make_mlp(0)).fingerprint(),
    }
    assert len(others) == 4


def test_fingerprint_is_pinned() -> None:
    """The canonical encoding is a wire format: parties on other hosts must agree."""
    layout = ModelLayout(
        (
            TensorSpec("fc.weight", (2, 3), "float32", 0, 6),
            TensorSpec("fc.bias", (2,), "float16", 6, 2),
        ),
        ("bn.num_batches_tracked",),
        8,
    )
    canonical = (
        b'{"tensors":[["fc.weight",[2,3],"float32"],["fc.bias",[2],"float16"]],'
        b'"non_float":["bn.num_batches_tracked"]}'
    )
    expected = hashlib.sha256(b"threshold-fl/model-layout/v1\x00" + canonical).hexdigest()
    assert layout.fingerprint() == expected
    assert expected == "378b972a8422c7bd17514fd282084d0a5cb59478237b44aab9452fff9f6a4560"


def test_layer_names_and_slices() -> None:
    model = trained_cnn(seed=0)
    vector, layout = flatten_state(model)
    assert layout.layer_names() == ("conv", "bn", "head")
    assert layout.slice_of("conv.weight") == slice(0, 4 * 3 * 3 * 3)
    assert layout.slice_of("conv") == slice(0, 108 + 4)
    assert layout.slice_of("bn") == slice(112, 112 + 4 * 4)  # weight, bias, running stats
    assert layout.slice_of("head") == slice(128, layout.size)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            np.testing.assert_array_equal(vector[layout.slice_of(name)], tensor.numpy().ravel())
    with pytest.raises(ParameterError, match="non-float entry"):
        layout.slice_of("bn.num_batches_tracked")
    with pytest.raises(ParameterError, match="neither a float tensor nor a layer"):
        layout.slice_of("fc")


def test_slice_of_refuses_scattered_or_ambiguous_names() -> None:
    scattered = layout_of({"a.w": torch.zeros(2), "b.w": torch.zeros(1), "a.b": torch.zeros(1)})
    with pytest.raises(ModelLayoutError, match="not contiguous"):
        scattered.slice_of("a")
    assert scattered.layer_names() == ("a", "b")
    ambiguous = layout_of({"a": torch.zeros(2), "a.b": torch.zeros(1)})
    with pytest.raises(ModelLayoutError, match="both a tensor and a layer"):
        ambiguous.slice_of("a")
    assert ambiguous.slice_of("") == slice(0, 2)  # top-level tensors form the layer ""


def test_to_dict_round_trips_through_json() -> None:
    layout = layout_of(trained_cnn(seed=0))
    data = json.loads(json.dumps(layout.to_dict()))
    restored = ModelLayout.from_dict(data)
    assert restored == layout
    assert restored.fingerprint() == layout.fingerprint()
    assert ModelLayout.from_dict(layout_of({}).to_dict()) == ModelLayout((), (), 0)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set(("version",), 2), r"layout\['version'\] must be 1"),
        (_set(("version",), True), r"layout\['version'\] must be 1"),
        (_delete(("size",)), r"layout has keys .* expected exactly"),
        (_set(("extra",), 1), r"layout has keys .* expected exactly"),
        (_set(("size",), 999), "layout size must be 138, got 999"),
        (_set(("size",), "138"), r"layout\['size'\] must be an int"),
        (_set(("tensors",), "conv.weight"), r"layout\['tensors'\] must be a list"),
        (_set(("tensors", 0), [1, 2]), r"layout\['tensors'\]\[0\] must be a mapping"),
        (_set(("tensors", 1, "offset"), 107), "'conv.bias' has offset 107, expected 108"),
        (_set(("tensors", 1, "size"), 5), r"\[1\]: tensor 'conv.bias': size must be 4"),
        (_set(("tensors", 1, "shape"), [-4]), "shape must be a tuple of ints >= 0"),
        (_set(("tensors", 1, "shape"), [4.0]), "shape must be a tuple of ints >= 0"),
        (_set(("tensors", 1, "shape"), "4"), r"\['shape'\] must be a list"),
        (_set(("tensors", 1, "dtype"), "int64"), "dtype 'int64' is not one of"),
        (_set(("tensors", 1, "dtype"), ["float32"]), r"dtype \['float32'\] is not one of"),
        (_set(("tensors", 1, "name"), "conv.weight"), "names appear more than once"),
        (_set(("tensors", 1, "name"), 7), "tensor name must be a non-empty string"),
        (_delete(("tensors", 1, "dtype")), r"\[1\] has keys .* expected exactly"),
        (_set(("non_float",), ["conv.bias"]), "names appear more than once"),
        (_set(("non_float",), [3]), r"layout\['non_float'\] must be a list of strings"),
    ],
)
def test_from_dict_rejects_tampered_data(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = copy.deepcopy(layout_of(trained_cnn(seed=0)).to_dict())
    mutate(data)
    with pytest.raises(ModelLayoutError, match=message):
        ModelLayout.from_dict(data)


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ModelLayoutError, match="layout must be a mapping, got list"):
        ModelLayout.from_dict([])


def test_specs_and_layouts_validate_on_construction() -> None:
    with pytest.raises(ModelLayoutError, match="size must be 6"):
        TensorSpec("w", (2, 3), "float32", 0, 5)
    with pytest.raises(ModelLayoutError, match="offset must be an int >= 0"):
        TensorSpec("w", (2,), "float32", -1, 2)
    with pytest.raises(ModelLayoutError, match="expected 0"):
        ModelLayout((TensorSpec("w", (2,), "float32", 1, 2),), (), 3)
    with pytest.raises(ModelLayoutError, match="tuple of TensorSpec"):
        ModelLayout([TensorSpec("w", (2,), "float32", 0, 2)], (), 2)  # type: ignore[arg-type]
    spec = TensorSpec("w", (), "bfloat16", 0, 1)  # a scalar holds one value
    assert spec.stop == 1


# --------------------------------------------------------------------------- properties

_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
_ENTRY = st.tuples(
    st.lists(st.integers(0, 4), max_size=3).map(tuple),  # shape, zero sizes included
    st.sampled_from(_DTYPES),
    st.sampled_from(["parameter", "buffer", "counter"]),
    st.sampled_from([1e-6, 1.0, 1e3]),  # 1e-6 is subnormal in float16; 1e3 stays finite
)


def _module_from(entries: list[tuple[tuple[int, ...], torch.dtype, str, float]],
                 seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    module = nn.Module()
    for index, (shape, dtype, kind, scale) in enumerate(entries):
        values = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
        if kind == "parameter":
            module.register_parameter(f"t{index}", nn.Parameter(values))
        elif kind == "buffer":
            module.register_buffer(f"t{index}", values)
        else:
            module.register_buffer(f"t{index}", torch.randint(0, 9, shape, generator=generator))
    return module


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(_ENTRY, max_size=6), seed=st.integers(0, 2**31 - 1))
def test_random_shapes_and_dtypes_round_trip(
    entries: list[tuple[tuple[int, ...], torch.dtype, str, float]], seed: int
) -> None:
    source, target = _module_from(entries, seed), _module_from(entries, seed + 1)
    vector, layout = flatten_state(source)
    float_entries = [e for e in entries if e[2] != "counter"]
    assert layout.size == vector.size == sum(int(np.prod(e[0])) for e in float_entries)
    assert len(layout.tensors) == len(float_entries)
    assert ModelLayout.from_dict(layout.to_dict()) == layout
    counters = {name: t for name, t in source.state_dict().items() if name in layout.non_float}
    restore_state(target, vector, layout, non_float=counters)
    assert_same_state(source, target)
