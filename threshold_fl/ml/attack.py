"""Deep Leakage from Gradients (DLG, Zhu, Liu and Han, NeurIPS 2019) against a masked update.

Threat model.  A client trains on one image x with label y (batch of 1).  In FedAvg with
one local SGD step its update is -lr * grad_W CE(f_W(x), y), so the server sees that
gradient up to a known scale.  Under selective parameter encryption the server sees only
the *visible* (plaintext) coordinates; the hidden (encrypted) ones are unknown to it.
The attacker knows the weights W and the visible coordinates, nothing else.

Attack.  Starting from a random dummy image x', L-BFGS minimises

    D(x') = sum over visible coordinates i of (grad_i(x', y') - g_i)^2

where g is the true gradient.  Hidden coordinates never enter D: the attacker optimises
only what it can see (:func:`invert_gradient` gathers the visible part before anything
else, so the values of hidden coordinates cannot influence the result).

Label.  If the last layer's visible gradient reveals the label, it is inferred as in
iDLG (Zhao et al. 2020): for cross-entropy on one sample, d loss / d logit_c = p_c - y_c
is negative only for the true class, and the last layer's weight gradient is that times
non-negative features (sigmoid or ReLU outputs), so exactly one class shows negative
visible entries.  Otherwise (e.g. the last layer is hidden) a dummy soft label is
optimised jointly with the image, as in the original DLG.  The inference refuses to
answer when the signs are ambiguous, so a model that breaks its assumption falls back
to DLG instead of guessing.

Image.  Pixels are optimised unconstrained (as in DLG) and clamped to [0, 1] when
reported; a sigmoid parameterisation converged markedly slower in our trials.

Restarts.  Each restart draws its start from a ``torch.Generator`` seeded from the
config's seed and the restart index, so runs are reproducible and the global torch RNG
is never touched.  Two reconstructions are reported: ``attacker_choice`` (lowest
matching loss: what a real attacker, who lacks the true image, would pick) and
``best`` (highest SSIM against the true image when it is given: the defender's worst
case, the conservative number for a privacy evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from threshold_fl._checks import checked_int
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml.flatten import layout_of
from threshold_fl.ml.image_metrics import mse, ssim
from threshold_fl.ml.mask import EncryptionMask

__all__ = [
    "AttackConfig", "AttackResult", "Reconstruction", "infer_label", "invert_gradient",
    "torch_threads", "victim_gradient",
]

BoolVector: TypeAlias = npt.NDArray[np.bool_]
LabelSource: TypeAlias = Literal["inferred", "optimised"]

_SEED_LIMIT = 2**32


@dataclass(frozen=True)
class AttackConfig:
    """How hard the attacker tries.

    *iterations* is L-BFGS's ``max_iter`` per restart (strong-Wolfe line search, so
    about 1.25 function evaluations each); it stops earlier only when the matching loss
    or its gradient vanishes (changes below 1e-14, gradient below 1e-12).  *infer_label*
    False forces DLG's joint soft-label optimisation.
    *threads* is torch's intra-op thread count during the attack (None: leave it): one
    thread is as fast for these tiny models and, unlike several, does not slow down
    tenfold when other processes share the cores.
    """

    restarts: int = 10
    iterations: int = 300
    seed: int = 0
    infer_label: bool = True
    history_size: int = 100
    threads: int | None = 1

    def __post_init__(self) -> None:
        checked_int(self.restarts, "restarts", 1)
        checked_int(self.iterations, "iterations", 1)
        if checked_int(self.seed, "seed", 0) >= _SEED_LIMIT:
            raise ParameterError(f"seed must be below 2**32, got {self.seed!r}")
        checked_int(self.history_size, "history_size", 1)
        if not isinstance(self.infer_label, bool):
            raise ParameterError(f"infer_label must be a bool, got {self.infer_label!r}")
        if self.threads is not None:
            checked_int(self.threads, "threads", 1)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with *threads* torch intra-op threads, then restore the old count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """One restart's outcome: image (H, W) clamped to [0, 1], and its scores.

    *ssim* and *mse* compare with the true image; they are None when it was not given.
    """

    restart: int
    image: FloatArray
    label: int
    matching_loss: float
    ssim: float | None
    mse: float | None


@dataclass(frozen=True, eq=False)
class AttackResult:
    """All restarts, the attacker's pick and the defender's worst case (see module doc)."""

    candidates: tuple[Reconstruction, ...]
    attacker_choice: Reconstruction
    best: Reconstruction
    label_source: LabelSource
    visible: int
    seconds: float


def _checked_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ParameterError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if any(True for _ in model.buffers()):
        raise ParameterError("the attack needs a model without buffers (its flat vector must "
                             "be exactly its parameters); use e.g. build_model('lenet')")
    return model


def _checked_image_tensor(image: object) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or not image.is_floating_point():
        raise ParameterError("image must be one float tensor (C, H, W), e.g. images[i]")
    return image


def victim_gradient(model: nn.Module, image: torch.Tensor, label: int) -> FloatArray:
    """The flat gradient of cross-entropy on one (image, label): what the server would see."""
    model = _checked_model(model)
    batch = _checked_image_tensor(image).unsqueeze(0)
    target = torch.tensor([checked_int(label, "label", 0)])
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(batch), target)
    gradients = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in gradients]).double().numpy()


def _checked_gradient(gradient: object, length: int) -> FloatArray:
    if not isinstance(gradient, np.ndarray) or gradient.ndim != 1 or gradient.dtype.kind != "f":
        raise ParameterError("gradient must be a 1-D float numpy array (victim_gradient output)")
    if gradient.shape[0] != length:
        raise ParameterError(f"gradient has {gradient.shape[0]} values, the model {length}")
    return gradient.astype(np.float64, copy=False)


def _visible_flags(hidden: EncryptionMask | None, length: int) -> BoolVector:
    if hidden is None:
        return np.ones(length, dtype=bool)
    if not isinstance(hidden, EncryptionMask) or hidden.length != length:
        raise ParameterError(f"hidden must be an EncryptionMask of length {length} or None")
    visible = ~hidden.flags()
    if not visible.any():
        raise ParameterError("every gradient coordinate is hidden: the attacker sees nothing "
                             "to match; a gradient-inversion attack needs visible coordinates")
    return visible


def infer_label(model: nn.Module, gradient: FloatArray, visible: BoolVector) -> int | None:
    """The label from the last layer's visible gradient signs (iDLG), or None if unclear."""
    layout = layout_of(_checked_model(model))
    last = layout.layer_names()[-1]
    negative: set[int] = set()
    for spec in layout.tensors:
        if spec.name.rpartition(".")[0] != last or spec.shape == ():
            continue
        rows = spec.shape[0]
        values = gradient[spec.offset:spec.stop].reshape(rows, -1)
        seen = visible[spec.offset:spec.stop].reshape(rows, -1)
        negative.update(int(r) for r in np.flatnonzero(((values < 0) & seen).any(axis=1)))
    return negative.pop() if len(negative) == 1 else None


def _cross_entropy(logits: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
    if isinstance(label, int):
        return nn.functional.cross_entropy(logits, torch.tensor([label]))
    # DLG's soft label: a free vector, turned into a distribution by softmax.
    return -(label.softmax(dim=-1) * logits.log_softmax(dim=-1)).sum()


def _matching_loss(model: nn.Module, params: Sequence[nn.Parameter], dummy: torch.Tensor,
                   label: int | torch.Tensor, target: torch.Tensor, index: torch.Tensor
                   ) -> torch.Tensor:
    loss = _cross_entropy(model(dummy), label)
    # create_graph: L-BFGS differentiates the gradient distance w.r.t. the dummy input.
    gradients = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in gradients])
    return ((flat[index] - target) ** 2).sum()


def _restart(model: nn.Module, target: torch.Tensor, index: torch.Tensor,
             shape: tuple[int, ...], label: int | None, config: AttackConfig, restart: int
             ) -> tuple[torch.Tensor, int, float]:
    generator = torch.Generator().manual_seed(_restart_seed(config.seed, restart))
    dummy = torch.rand((1, *shape), generator=generator).requires_grad_(True)
    soft = torch.randn((1, _classes(model, dummy)), generator=generator).requires_grad_(True)
    variables = [dummy] if label is not None else [dummy, soft]
    optimiser = torch.optim.LBFGS(
        variables, lr=1.0, max_iter=config.iterations, history_size=config.history_size,
        tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")
    params = list(model.parameters())

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = _matching_loss(model, params, dummy, soft if label is None else label,
                               target, index)
        # autograd.grad, not backward(): the model's own .grad must stay untouched.
        for variable, grad in zip(variables, torch.autograd.grad(value, variables),
                                  strict=True):
            variable.grad = grad
        return value.detach()

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    final = float(_matching_loss(model, params, dummy, soft if label is None else label,
                                 target, index).detach())
    chosen = label if label is not None else int(soft.detach().argmax())
    return dummy.detach()[0], chosen, final if np.isfinite(final) else float("inf")


def _restart_seed(seed: int, restart: int) -> int:
    # torch's CPU generator keeps only the low 32 bits of a seed (2**32 + 1 seeds like 1),
    # so (seed, restart) is hashed into 32 bits rather than packed into one integer.
    return int(np.random.SeedSequence([seed, restart]).generate_state(1, np.uint32)[0])


def _classes(model: nn.Module, dummy: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(dummy).shape[-1])


def _scored(restart: int, image: torch.Tensor, label: int, loss: float,
            true_image: FloatArray | None) -> Reconstruction:
    # A diverged restart can hold NaN; report it as a flat grey image, not a crash.
    values = torch.nan_to_num(image[0], nan=0.5).clamp(0.0, 1.0).double().numpy()
    if true_image is None:
        return Reconstruction(restart, values, label, loss, None, None)
    return Reconstruction(restart, values, label, loss, ssim(values, true_image),
                          mse(values, true_image))


def _checked_true_image(true_image: object, shape: tuple[int, ...]) -> FloatArray | None:
    if true_image is None:
        return None
    if not isinstance(true_image, np.ndarray) or true_image.shape != shape[1:]:
        raise ParameterError(f"true_image must be a numpy array of shape {shape[1:]} "
                             "(the grey image without its channel axis)")
    return true_image.astype(np.float64)


def invert_gradient(model: nn.Module, gradient: FloatArray, *,
                    image_shape: tuple[int, int, int], hidden: EncryptionMask | None = None,
                    config: AttackConfig | None = None,
                    true_image: npt.NDArray[np.floating] | None = None) -> AttackResult:
    """Reconstruct the victim's image from the visible coordinates of *gradient*.

    *image_shape* is (1, H, W) (grey images only); *hidden* marks the coordinates the
    attacker cannot see (None: all visible).  *true_image* (H, W) is used only to score
    the candidates afterwards, never during the attack.
    """
    start = time.perf_counter()
    config = AttackConfig() if config is None else config
    model = _checked_model(model)
    length = sum(p.numel() for p in model.parameters())
    values = _checked_gradient(gradient, length)
    visible = _visible_flags(hidden, length)
    if len(image_shape) != 3 or image_shape[0] != 1 or min(image_shape) < 1:
        raise ParameterError(f"image_shape must be (1, H, W), got {image_shape!r}")
    truth = _checked_true_image(true_image, image_shape)
    if not np.isfinite(values[visible]).all():
        raise ParameterError("the visible gradient coordinates hold NaN or infinity")
    index = torch.from_numpy(np.flatnonzero(visible))
    # Gather first: from here on hidden coordinates do not exist for the attacker.
    target = torch.from_numpy(values[visible]).float()
    seen = np.where(visible, values, 0.0)
    label = infer_label(model, seen, visible) if config.infer_label else None
    candidates = []
    with torch_threads(config.threads):
        for restart in range(config.restarts):
            image, chosen, loss = _restart(model, target, index, image_shape, label, config,
                                           restart)
            candidates.append(_scored(restart, image, chosen, loss, truth))
    pick = min(candidates, key=lambda c: (c.matching_loss, c.restart))
    best = pick if truth is None else max(
        candidates, key=lambda c: (-np.inf if c.ssim is None else c.ssim, -c.restart))
    return AttackResult(tuple(candidates), pick, best,
                        "inferred" if label is not None else "optimised",
                        int(visible.sum()), time.perf_counter() - start)
