"""Sensitivity maps: how much each parameter's gradient reacts to the label.

For parameter w_m over K local samples (paper, section 2.4)::

    S_m = (1/K) sum_k || d/dy_k ( d loss(x_k, y_k, W) / d w_m ) ||_2

with the one-hot label y_k treated as a float input and the norm taken over classes.
For cross-entropy, loss = -sum_c y_c log p_c(x; W), so d/dy_c (d loss / d w_m) is
-d log p_c / d w_m and S_m is the mean over samples of the L2 norm over classes of the
per-sample gradients of the log-probabilities.  That is the default (fast) route: one
per-sample gradient (``torch.func.vmap`` of ``torch.func.grad``) per class.  A custom
``loss(logits, soft_labels)`` takes the literal route instead: the forward-mode Jacobian
with respect to the label of the reverse-mode parameter gradient.

Memory stays bounded: samples are processed in batches sized so that the per-sample
gradients of one batch fit in *memory_budget* bytes (default 256 MiB), which keeps a
1.66M-parameter CNN at a few samples per batch.  The model is evaluated in eval mode
(BatchNorm uses its running statistics; per-sample batch statistics are meaningless).
Float buffers get sensitivity 0: they are part of the flat vector but not learned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd, vmap

from threshold_fl._checks import checked_int
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml.flatten import ModelLayout, layout_of

__all__ = ["SoftLabelLoss", "sensitivity_map"]

SoftLabelLoss: TypeAlias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Progress: TypeAlias = Callable[[int, int], None]
Params: TypeAlias = dict[str, torch.Tensor]

DEFAULT_MEMORY_BUDGET = 256 * 2**20
_FLOAT_BYTES = 4


def _checked_inputs(inputs: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ParameterError("inputs and labels must be torch tensors")
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ParameterError("need at least one sample to compute a sensitivity map")
    if labels.shape != (inputs.shape[0],) or labels.dtype not in (torch.int64, torch.int32):
        raise ParameterError(f"labels must be {inputs.shape[0]} integer class indices, got "
                             f"shape {tuple(labels.shape)} dtype {labels.dtype}")
    if not torch.isfinite(inputs).all():
        raise ParameterError("inputs contain NaN or infinite values")
    return inputs, labels.long()


def _batch_size(batch_size: int | None, parameters: int, classes: int, budget: int,
                custom: bool) -> int:
    if batch_size is not None:
        return checked_int(batch_size, "batch_size", 1)
    checked_int(budget, "memory_budget (bytes)", 1)
    # Fast route: a running sum of squares plus one class's gradients per sample.
    # Literal route: the full (classes x parameters) Jacobian per sample.
    per_sample = (classes if custom else 2) * parameters * _FLOAT_BYTES
    return max(1, budget // per_sample)


def _class_norms(model: nn.Module, params: Params, buffers: Params, images: torch.Tensor,
                 classes: int) -> Params:
    """Per-sample L2 norm over classes of d log p_c / d w, summed over the batch."""

    def log_probability(weights: Params, image: torch.Tensor, label: int) -> torch.Tensor:
        logits = functional_call(model, (weights, buffers), (image.unsqueeze(0),))
        return torch.log_softmax(logits, dim=-1)[0, label]

    per_sample_grad = vmap(grad(log_probability), in_dims=(None, 0, None))
    squares = {name: torch.zeros((images.shape[0], *p.shape)) for name, p in params.items()}
    for label in range(classes):
        for name, gradient in per_sample_grad(params, images, label).items():
            squares[name] += gradient.detach() ** 2
    return {name: square.sqrt().sum(dim=0) for name, square in squares.items()}


def _literal_norms(model: nn.Module, params: Params, buffers: Params, images: torch.Tensor,
                   labels: torch.Tensor, classes: int, loss: SoftLabelLoss) -> Params:
    """d/dy (d loss / d w) by forward mode over reverse mode, normed over classes."""

    def parameter_gradient(weights: Params, image: torch.Tensor, soft_label: torch.Tensor
                           ) -> Params:
        def sample_loss(inner: Params) -> torch.Tensor:
            logits = functional_call(model, (inner, buffers), (image.unsqueeze(0),))
            return loss(logits, soft_label.unsqueeze(0))

        gradients: Params = grad(sample_loss)(weights)
        return gradients

    label_jacobian = jacfwd(parameter_gradient, argnums=2)
    per_sample = vmap(label_jacobian, in_dims=(None, 0, 0))
    soft_labels = nn.functional.one_hot(labels, classes).to(images.dtype)
    jacobians = per_sample(params, images, soft_labels)  # name -> (batch, *shape, classes)
    return {name: jac.detach().pow(2).sum(dim=-1).sqrt().sum(dim=0)
            for name, jac in jacobians.items()}


def sensitivity_map(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss: SoftLabelLoss | None = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: Progress | None = None,
) -> FloatArray:
    """S_m for every coordinate of the model's flat vector (``flatten_state`` order).

    *loss* is ``loss(logits, soft_labels)`` with float labels; None means cross-entropy
    (the fast route).  *progress(done, total)* is called after each batch of samples.
    """
    inputs, labels = _checked_inputs(inputs, labels)
    layout = layout_of(model)
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            classes = int(model(inputs[:1]).shape[-1])
        if int(labels.min()) < 0 or int(labels.max()) >= classes:
            raise ParameterError(f"labels must lie in [0, {classes}), the model's classes")
        size = _batch_size(batch_size, layout.size, classes, memory_budget, loss is not None)
        totals = {name: torch.zeros_like(p) for name, p in params.items()}
        for start in range(0, inputs.shape[0], size):
            images, batch_labels = inputs[start:start + size], labels[start:start + size]
            norms = (_class_norms(model, params, buffers, images, classes) if loss is None
                     else _literal_norms(model, params, buffers, images, batch_labels,
                                         classes, loss))
            for name, norm in norms.items():
                totals[name] += norm
            if progress is not None:
                progress(min(start + size, inputs.shape[0]), inputs.shape[0])
    finally:
        model.train(was_training)
    return _to_flat(totals, layout, inputs.shape[0])


def _to_flat(totals: Params, layout: ModelLayout, samples: int) -> FloatArray:
    flat = np.zeros(layout.size, dtype=np.float64)
    for name, total in totals.items():
        where = layout.slice_of(name)
        flat[where] = total.double().flatten().numpy() / samples
    return flat
