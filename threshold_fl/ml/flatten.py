"""Flatten a torch model's float state into one float64 vector, and restore it exactly.

Homomorphic aggregation works on flat real vectors.  A :class:`ModelLayout` says where
each parameter and float buffer lies in the vector.  float64 holds every float16,
bfloat16 and float32 value exactly, so a round trip is bit-exact.  Non-float entries
(BatchNorm's ``num_batches_tracked``, bool masks) never enter the vector, as averaging
a counter is meaningless: the layout names them and restore leaves them alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
from torch import nn

from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ModelLayoutError, ParameterError

__all__ = [
    "ModelLayout", "TensorSpec", "flatten_state", "layout_of", "restore_state",
    "vector_to_state_dict",
]

StateDict: TypeAlias = Mapping[str, torch.Tensor]
StateSource: TypeAlias = nn.Module | StateDict

# The dtypes float64 holds exactly and that restore can round back to.
_FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float32": torch.float32, "float64": torch.float64,
}
_FORMAT_VERSION = 1
_FINGERPRINT_DOMAIN = b"threshold-fl/model-layout/v1\x00"
_LAYOUT_KEYS = frozenset({"version", "tensors", "non_float", "size"})
_SPEC_KEYS = frozenset({"name", "shape", "dtype", "offset", "size"})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is not a size


def _layer_of(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0]


@dataclass(frozen=True)
class TensorSpec:
    """Where one floating-point tensor lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    size: int

    def __post_init__(self) -> None:
        # Fields are checked at run time too: from_dict feeds them untrusted data.
        name: object = self.name
        if not isinstance(name, str) or not name:
            raise ModelLayoutError(f"tensor name must be a non-empty string, got {name!r}")
        where = f"tensor {name!r}"
        shape: object = self.shape
        if not isinstance(shape, tuple) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ModelLayoutError(f"{where}: shape must be a tuple of ints >= 0, got {shape!r}")
        dtype: object = self.dtype
        if not isinstance(dtype, str) or dtype not in _FLOAT_DTYPES:
            raise ModelLayoutError(f"{where}: dtype {dtype!r} is not one of {list(_FLOAT_DTYPES)}")
        if not _is_int(self.offset) or self.offset < 0:
            raise ModelLayoutError(f"{where}: offset must be an int >= 0, got {self.offset!r}")
        numel = math.prod(self.shape)
        if not _is_int(self.size) or self.size != numel:
            raise ModelLayoutError(f"{where}: size must be {numel}, got {self.size!r}")

    @property
    def stop(self) -> int:
        """One past the last index of this tensor in the flat vector."""
        return self.offset + self.size


@dataclass(frozen=True)
class ModelLayout:
    """How a model's float state is packed into one flat vector.

    ``tensors`` lie back to back in state_dict order; ``non_float`` names the entries
    kept out of the vector; ``size`` is the vector's length.
    """

    tensors: tuple[TensorSpec, ...]
    non_float: tuple[str, ...]
    size: int

    def __post_init__(self) -> None:
        tensors: object = self.tensors
        if not isinstance(tensors, tuple) or not all(isinstance(s, TensorSpec) for s in tensors):
            raise ModelLayoutError("layout tensors must be a tuple of TensorSpec")
        names: object = self.non_float
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
            raise ModelLayoutError("layout non_float must be a tuple of non-empty strings")
        packed = 0
        for spec in self.tensors:
            if spec.offset != packed:  # gaps or overlaps would make slices ambiguous
                raise ModelLayoutError(
                    f"tensor {spec.name!r} has offset {spec.offset}, expected {packed}: "
                    "tensors must lie back to back in order"
                )
            packed = spec.stop
        if not _is_int(self.size) or self.size != packed:
            raise ModelLayoutError(f"layout size must be {packed}, got {self.size!r}")
        counts = Counter([s.name for s in self.tensors] + list(self.non_float))
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        if duplicates:
            raise ModelLayoutError(f"layout names appear more than once: {duplicates}")

    def fingerprint(self) -> str:
        """Hex SHA-256 over names, shapes and dtypes, for parties to agree on a model.

        Offsets and sizes follow from order and shapes, so they add nothing.
        """
        canonical = {
            "tensors": [[s.name, list(s.shape), s.dtype] for s in self.tensors],
            "non_float": list(self.non_float),
        }
        encoded = json.dumps(canonical, separators=(",", ":"), ensure_ascii=True).encode()
        return hashlib.sha256(_FINGERPRINT_DOMAIN + encoded).hexdigest()

    def layer_names(self) -> tuple[str, ...]:
        """Owning-module names of the float tensors, in order ("fc" for "fc.weight")."""
        return tuple(dict.fromkeys(_layer_of(s.name) for s in self.tensors))

    def slice_of(self, name: str) -> slice:
        """The flat slice of float tensor *name*, or of all float tensors of layer *name*."""
        members = [s for s in self.tensors if _layer_of(s.name) == name]
        for spec in self.tensors:
            if spec.name == name:
                if members:
                    raise ModelLayoutError(f"{name!r} is both a tensor and a layer name")
                return slice(spec.offset, spec.stop)
        if not members:
            if name in self.non_float:
                raise ParameterError(f"{name!r} is a non-float entry, not in the flat vector")
            raise ParameterError(f"{name!r} is neither a float tensor nor a layer of the layout")
        # A module's entries are adjacent in its state_dict; a hand-made dict's may not be.
        if any(after.offset != before.stop for before, after in itertools.pairwise(members)):
            raise ModelLayoutError(f"the tensors of layer {name!r} are not contiguous")
        return slice(members[0].offset, members[-1].stop)

    def to_dict(self) -> dict[str, object]:
        """Plain, JSON-ready data that :meth:`from_dict` turns back into this layout."""
        tensors = [
            {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "offset": s.offset,
             "size": s.size}
            for s in self.tensors
        ]
        return {"version": _FORMAT_VERSION, "tensors": tensors,
                "non_float": list(self.non_float), "size": self.size}

    @classmethod
    def from_dict(cls, data: object) -> ModelLayout:
        """Rebuild a layout from :meth:`to_dict` data; bad data raises ModelLayoutError."""
        top = _expect_mapping(data, "layout", _LAYOUT_KEYS)
        version = top["version"]
        if not _is_int(version) or version != _FORMAT_VERSION:
            raise ModelLayoutError(f"layout['version'] must be {_FORMAT_VERSION}, got {version!r}")
        items = _expect_list(top["tensors"], "layout['tensors']")
        specs = [_spec_from_dict(item, f"layout['tensors'][{i}]") for i, item in enumerate(items)]
        non_float = _expect_list(top["non_float"], "layout['non_float']")
        names = tuple(name for name in non_float if isinstance(name, str))
        if len(names) != len(non_float):
            raise ModelLayoutError("layout['non_float'] must be a list of strings")
        size = top["size"]
        if isinstance(size, bool) or not isinstance(size, int):
            raise ModelLayoutError(f"layout['size'] must be an int, got {size!r}")
        return cls(tuple(specs), names, size)


def _expect_mapping(data: object, where: str, keys: frozenset[str]) -> Mapping[str, object]:
    if not isinstance(data, Mapping):
        raise ModelLayoutError(f"{where} must be a mapping, got {type(data).__name__}")
    if set(data) != keys:
        got = sorted(map(repr, data))
        raise ModelLayoutError(f"{where} has keys {got}, expected exactly {sorted(keys)}")
    return data


def _expect_list(data: object, where: str) -> list[object]:
    if not isinstance(data, list | tuple):
        raise ModelLayoutError(f"{where} must be a list, got {type(data).__name__}")
    return list(data)


def _spec_from_dict(data: object, where: str) -> TensorSpec:
    fields = _expect_mapping(data, where, _SPEC_KEYS)
    shape = tuple(_expect_list(fields["shape"], f"{where}['shape']"))
    try:  # TensorSpec checks each field's type and value; add the path to its message
        name, dtype, offset, size = (fields[k] for k in ("name", "dtype", "offset", "size"))
        return TensorSpec(name, shape, dtype, offset, size)  # type: ignore[arg-type]
    except ModelLayoutError as exc:
        raise ModelLayoutError(f"{where}: {exc}") from exc


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_entry(name: object, value: object) -> None:
    if not isinstance(name, str) or not name:
        raise ParameterError(f"state dict keys must be non-empty strings, got {name!r}")
    where = f"state entry {name!r}"
    if not isinstance(value, torch.Tensor):
        raise ParameterError(f"{where} is a {type(value).__name__}, not a tensor")
    if value.is_complex():
        raise ParameterError(f"{where} is complex ({value.dtype}); complex is not supported")
    if value.layout != torch.strided or value.is_quantized:
        raise ParameterError(f"{where} is sparse or quantized; only dense tensors are supported")
    if value.is_floating_point() and _dtype_name(value.dtype) not in _FLOAT_DTYPES:
        raise ParameterError(f"{where} has dtype {value.dtype}; use one of {list(_FLOAT_DTYPES)}")


def _state_of(source: object) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        state: dict[str, torch.Tensor] = source.state_dict(keep_vars=True)  # its own tensors
    elif isinstance(source, Mapping):
        state = dict(source)
    else:
        raise ParameterError(f"expected an nn.Module or a state dict, got {type(source).__name__}")
    for name, value in state.items():
        _check_entry(name, value)
    return state


def _layout_of_state(state: StateDict) -> ModelLayout:
    specs: list[TensorSpec] = []
    non_float: list[str] = []
    offset = 0
    for name, tensor in state.items():
        if tensor.is_floating_point():
            dtype = _dtype_name(tensor.dtype)
            specs.append(TensorSpec(name, tuple(tensor.shape), dtype, offset, tensor.numel()))
            offset += tensor.numel()
        else:
            non_float.append(name)
    return ModelLayout(tuple(specs), tuple(non_float), offset)


def _layout_difference(expected: ModelLayout, actual: ModelLayout) -> str:
    want = {s.name: (s.shape, s.dtype) for s in expected.tensors}
    have = {s.name: (s.shape, s.dtype) for s in actual.tensors}
    missing, extra = [n for n in want if n not in have], [n for n in have if n not in want]
    if missing or extra:
        return f"float tensors missing from the model {missing[:5]}, not in the layout {extra[:5]}"
    for name, (shape, dtype) in want.items():
        if have[name] != (shape, dtype):
            return f"tensor {name!r} has (shape, dtype) {have[name]}, the layout {(shape, dtype)}"
    if list(want) != list(have):
        return "the float tensors are in a different order than in the layout"
    return f"non-float entries are {list(actual.non_float)}, not {list(expected.non_float)}"


def _require_layout_match(layout: object, state: StateDict) -> ModelLayout:
    if not isinstance(layout, ModelLayout):
        raise ParameterError(f"layout must be a ModelLayout, got {type(layout).__name__}")
    actual = _layout_of_state(state)
    if actual != layout:
        difference = _layout_difference(layout, actual)
        raise ModelLayoutError(f"model does not match the layout: {difference}")
    return layout


def _checked_vector(vector: object, layout: ModelLayout) -> FloatArray:
    if not isinstance(vector, np.ndarray):
        raise ParameterError(f"vector must be a numpy array, got {type(vector).__name__}")
    if vector.ndim != 1:
        raise ModelLayoutError(f"vector must be 1-D, got shape {vector.shape}")
    if vector.dtype.kind != "f":
        raise ModelLayoutError(f"vector must hold real floats, got dtype {vector.dtype}")
    if vector.shape[0] != layout.size:
        raise ModelLayoutError(f"vector has {vector.shape[0]} values, layout expects {layout.size}")
    return vector.astype(np.float64, copy=False)


def _tensor_from_vector(vector: FloatArray, spec: TensorSpec, device: torch.device
                        ) -> torch.Tensor:
    chunk = vector[spec.offset : spec.stop]
    if not np.isfinite(chunk).all():
        raise ModelLayoutError(f"vector holds NaN or infinity in tensor {spec.name!r}")
    # copy(): the result must not alias the caller's vector.
    values = torch.from_numpy(chunk.copy()).reshape(spec.shape).to(_FLOAT_DTYPES[spec.dtype])
    if not torch.isfinite(values).all():
        raise ModelLayoutError(f"vector values for tensor {spec.name!r} overflow {spec.dtype}")
    return values.to(device)


def _float_tensors(vector: FloatArray, layout: ModelLayout, state: StateDict
                   ) -> dict[str, torch.Tensor]:
    return {s.name: _tensor_from_vector(vector, s, state[s.name].device) for s in layout.tensors}


def _checked_non_float(values: object, layout: ModelLayout, state: StateDict
                       ) -> dict[str, torch.Tensor]:
    if not isinstance(values, Mapping):
        raise ParameterError(f"non_float must map names to tensors, got {type(values).__name__}")
    for name, value in values.items():
        if name not in layout.non_float:
            role = "a float tensor, restored from the vector" if name in state else "unknown"
            raise ParameterError(f"non_float[{name!r}]: {name!r} is {role}")
        current = state[name]
        if not isinstance(value, torch.Tensor):
            kind = type(value).__name__
            raise ParameterError(f"non_float[{name!r}] is of type {kind}, not a tensor")
        if value.dtype != current.dtype or value.shape != current.shape:
            raise ParameterError(
                f"non_float[{name!r}] must be {current.dtype} of shape {tuple(current.shape)}, "
                f"got {value.dtype} of shape {tuple(value.shape)}"
            )
    return dict(values)


def layout_of(source: StateSource) -> ModelLayout:
    """The layout of a model's (or a state dict's) float state."""
    return _layout_of_state(_state_of(source))


def flatten_state(
    source: StateSource, layout: ModelLayout | None = None
) -> tuple[FloatArray, ModelLayout]:
    """Pack the float state into a new float64 vector; check it against *layout* if given."""
    state = _state_of(source)
    actual = _layout_of_state(state) if layout is None else _require_layout_match(layout, state)
    vector = np.empty(actual.size, dtype=np.float64)
    for spec in actual.tensors:
        values = state[spec.name].detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(values).all():  # a diverged model would poison the aggregate
            raise ParameterError(f"model tensor {spec.name!r} holds NaN or infinity")
        vector[spec.offset : spec.stop] = values.reshape(-1).numpy()
    return vector, actual


def vector_to_state_dict(
    vector: FloatArray, layout: ModelLayout, template: StateSource
) -> dict[str, torch.Tensor]:
    """A new state dict: float entries from *vector*, the others copied from *template*."""
    state = _state_of(template)
    _require_layout_match(layout, state)
    floats = _float_tensors(_checked_vector(vector, layout), layout, state)
    # Non-float entries are cloned so the new dict never aliases the template.
    return {n: floats[n] if n in floats else t.detach().clone() for n, t in state.items()}


def restore_state(
    model: nn.Module, vector: FloatArray, layout: ModelLayout, *,
    non_float: StateDict | None = None,
) -> None:
    """Write *vector* into *model* in place, keeping every tensor's dtype and device.

    Non-float entries keep their values unless *non_float* gives some explicitly.
    All is validated before the first write, so a failed restore changes nothing.
    """
    if not isinstance(model, nn.Module):
        raise ParameterError(f"model must be an nn.Module, got {type(model).__name__}")
    state = _state_of(model)
    _require_layout_match(layout, state)
    updates = _float_tensors(_checked_vector(vector, layout), layout, state)
    updates.update(_checked_non_float({} if non_float is None else non_float, layout, state))
    with torch.no_grad():
        for name, values in updates.items():
            state[name].copy_(values)
