"""Gradient inversion against a masked update: three attackers behind one interface.

Threat model.  A client trains on one image x with label y (batch of 1).  In FedAvg with
one local SGD step its update is -lr * grad_W CE(f_W(x), y), so the server sees that
gradient up to a known scale.  Under selective parameter encryption the server sees only
the *visible* (plaintext) coordinates; the hidden (encrypted) ones are unknown to it.
The attacker knows the weights W, the mask and the visible coordinates, nothing else.

Attackers (:class:`Attacker`).  Each optimises a dummy image x' (C, H, W) so that its
gradient matches the visible coordinates g of the true one:

* ``dlg``: Deep Leakage from Gradients (Zhu, Liu and Han 2019) as published: L-BFGS on
  the L2 distance D(x') = sum over visible i of (grad_i(x') - g_i)^2, no prior.
* ``dlg-tv``: the same plus a total-variation prior, D(x') + w ||g||^2 TV(x'), where
  TV is the mean absolute difference of neighbouring pixels and the weight w is relative
  to the visible gradient's energy ||g||^2, so one w suits every model and image.
* ``ig``: Inverting Gradients (Geiping, Bauermeister, Droege and Moeller 2020): cosine
  distance 1 - cos(grad(x'), g) over the visible coordinates plus w TV(x'), Adam on
  the *signs* of the gradients, the image projected onto the box [0, 1] after every
  step, and the learning rate divided by 10 at 3/8, 5/8 and 7/8 of the iterations.

Hidden coordinates never enter any loss: :func:`invert_gradient` gathers the visible
part before anything else, so the values of hidden coordinates cannot influence the
result.

Label.  If the last layer's visible gradient reveals the label, it is inferred as in
iDLG (Zhao et al. 2020): for cross-entropy on one sample, d loss / d logit_c = p_c - y_c
is negative only for the true class, and the last layer's weight gradient is that times
non-negative features (sigmoid or ReLU outputs), so exactly one class shows negative
visible entries.  Otherwise (e.g. the last layer is hidden) a dummy soft label is
optimised jointly with the image, as in the original DLG.  The inference refuses to
answer when the signs are ambiguous, so a model that breaks its assumption falls back
to DLG instead of guessing.

Convergence evidence.  Every reconstruction carries its final matching loss relative to
the visible gradient (L2: D / ||g||^2; cosine: 1 - cos), the iteration at which the
optimiser stopped and why (``tolerance``: L-BFGS found no further progress; ``limit``:
the iteration or evaluation budget ran out, so more iterations might do better).  A
"protected" score with a large relative loss and ``limit`` says the optimiser stalled,
not that the image is safe.

Image.  DLG's pixels are optimised unconstrained (as in DLG) and clamped to [0, 1] when
reported; IG keeps them in [0, 1] throughout.

Restarts.  Each restart draws its start from a ``torch.Generator`` seeded from the
config's seed and the restart index, so runs are reproducible and the global torch RNG
is never touched.  Two reconstructions are reported: ``attacker_choice`` (lowest
relative matching loss: what a real attacker, who lacks the true image, would pick) and
``best`` (highest SSIM against the true image when it is given: the defender's worst
case, the conservative number for a privacy evaluation).
"""

from __future__ import annotations

import enum
import math
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

# The second group are the building blocks that the batched and the FedAvg-aware attacks
# (threshold_fl.ml.batched_attack, threshold_fl.ml.fedavg_attack) share with this one.
__all__ = [
    "Attacker", "AttackConfig", "AttackResult", "Reconstruction", "infer_label",
    "StopReason", "invert_gradient", "torch_threads", "total_variation", "victim_gradient",
    "GradientTarget", "MatchingObjective", "PreparedAttack", "attack_result", "checked_gradient",
    "cross_entropy", "output_classes", "prepare_attack", "restart_seed", "run_ig", "run_lbfgs",
    "scored_reconstruction", "visible_flags",
]

BoolVector: TypeAlias = npt.NDArray[np.bool_]
LabelSource: TypeAlias = Literal["inferred", "optimised"]
StopReason: TypeAlias = Literal["tolerance", "limit"]

_SEED_LIMIT = 2**32


class Attacker(str, enum.Enum):
    """Which gradient-inversion attack runs (see the module doc)."""

    DLG = "dlg"
    DLG_TV = "dlg-tv"
    IG = "ig"

    @property
    def default_tv_weight(self) -> float:
        return {Attacker.DLG: 0.0, Attacker.DLG_TV: 1e-4, Attacker.IG: 1e-3}[self]

    @property
    def cosine(self) -> bool:
        return self is Attacker.IG


@dataclass(frozen=True)
class AttackConfig:
    """How hard the attacker tries.

    *iterations*: for ``dlg``/``dlg-tv`` L-BFGS's ``max_iter`` per restart (strong-Wolfe
    line search, so about 1.25 function evaluations each; it stops earlier when the
    loss or its gradient stops changing: changes below 1e-14, gradient below 1e-12); for
    ``ig`` the number of Adam steps.  *tv_weight* None takes the attacker's default
    (:attr:`Attacker.default_tv_weight`); plain ``dlg`` has none.  *learning_rate* is
    IG's initial Adam step.  *infer_label* False forces DLG's joint soft-label
    optimisation.  *threads* is torch's intra-op thread count during the attack (None:
    leave it): one thread is as fast for these tiny models and, unlike several, does not
    slow down tenfold when other processes share the cores.
    """

    attacker: Attacker = Attacker.DLG
    restarts: int = 10
    iterations: int = 300
    seed: int = 0
    infer_label: bool = True
    history_size: int = 100
    tv_weight: float | None = None
    learning_rate: float = 0.1
    threads: int | None = 1

    def __post_init__(self) -> None:
        attacker: object = self.attacker  # a caller may pass anything
        if not isinstance(attacker, Attacker):
            names = ", ".join(a.value for a in Attacker)
            raise ParameterError(f"attacker must be an Attacker ({names}), "
                                 f"got {self.attacker!r}")
        checked_int(self.restarts, "restarts", 1)
        checked_int(self.iterations, "iterations", 1)
        if checked_int(self.seed, "seed", 0) >= _SEED_LIMIT:
            raise ParameterError(f"seed must be below 2**32, got {self.seed!r}")
        checked_int(self.history_size, "history_size", 1)
        if not isinstance(self.infer_label, bool):
            raise ParameterError(f"infer_label must be a bool, got {self.infer_label!r}")
        if self.threads is not None:
            checked_int(self.threads, "threads", 1)
        if self.tv_weight is not None:
            _checked_positive(self.tv_weight, "tv_weight", zero=True)
            if self.attacker is Attacker.DLG and self.tv_weight != 0:
                raise ParameterError("plain dlg has no prior; use attacker dlg-tv for a "
                                     "total-variation weight")
        _checked_positive(self.learning_rate, "learning_rate", zero=False)

    @property
    def prior_weight(self) -> float:
        """The total-variation weight in force."""
        return self.attacker.default_tv_weight if self.tv_weight is None else self.tv_weight


def _checked_positive(value: object, what: str, *, zero: bool) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero)):
        bound = ">= 0" if zero else "> 0"
        raise ParameterError(f"{what} must be a finite number {bound}, got {value!r}")
    return float(value)


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
    """One restart's outcome: image (C, H, W) clamped to [0, 1], and its evidence.

    *matching_loss* is the data term the attacker minimised (L2 or cosine distance, no
    prior); *relative_loss* is that over the visible gradient's energy for L2, and the
    cosine distance itself for IG (float32 rounding below 0 counts as 0).  *iterations*
    is where the optimiser stopped, *stop* why.  *ssim* and *mse* compare with the true
    image; None when it was not given.
    """

    restart: int
    image: FloatArray
    label: int
    matching_loss: float
    relative_loss: float
    iterations: int
    stop: StopReason
    ssim: float | None
    mse: float | None


@dataclass(frozen=True, eq=False)
class AttackResult:
    """All restarts, the attacker's pick and the defender's worst case (see module doc)."""

    attacker: Attacker
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


def checked_gradient(gradient: object, length: int) -> FloatArray:
    """*gradient* as a finite 1-D float array of *length* values, or a clear error."""
    if not isinstance(gradient, np.ndarray) or gradient.ndim != 1 or gradient.dtype.kind != "f":
        raise ParameterError("gradient must be a 1-D float numpy array (victim_gradient output)")
    if gradient.shape[0] != length:
        raise ParameterError(f"gradient has {gradient.shape[0]} values, the model {length}")
    return gradient.astype(np.float64, copy=False)


def visible_flags(hidden: EncryptionMask | None, length: int) -> BoolVector:
    """True where the attacker sees a coordinate: everything but *hidden* (None: all)."""
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



def cross_entropy(logits: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
    """The loss the victim trained with: a known class, or DLG's optimised soft label."""
    if isinstance(label, int):
        return nn.functional.cross_entropy(logits, torch.tensor([label]))
    # DLG's soft label: a free vector, turned into a distribution by softmax.
    return -(label.softmax(dim=-1) * logits.log_softmax(dim=-1)).sum()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertically and of horizontally adjacent pixels, summed."""
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return vertical + horizontal


@dataclass(frozen=True)
class GradientTarget:
    """What the attacker sees: the visible gradient values and where they sit."""

    values: torch.Tensor
    index: torch.Tensor
    energy: float  # ||values||^2


class MatchingObjective:
    """The data term of one attacker, its relative form, and the full objective."""

    def __init__(self, model: nn.Module, target: GradientTarget, config: AttackConfig) -> None:
        self.model, self.target, self.config = model, target, config
        self.params = list(model.parameters())
        self.weight = config.prior_weight
        if not config.attacker.cosine:
            self.weight *= target.energy  # relative to ||g||^2: see the module doc

    def data(self, dummy: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        loss = cross_entropy(self.model(dummy), label)
        # create_graph: the distance is differentiated again, w.r.t. the dummy input.
        gradients = torch.autograd.grad(loss, self.params, create_graph=True)
        seen = torch.cat([g.reshape(-1) for g in gradients])[self.target.index]
        if self.config.attacker.cosine:
            cosine = nn.functional.cosine_similarity(seen, self.target.values, dim=0,
                                                     eps=1e-30)
            return 1.0 - cosine
        return ((seen - self.target.values) ** 2).sum()

    def total(self, dummy: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        value = self.data(dummy, label)
        return value + self.weight * total_variation(dummy) if self.weight else value

    def relative(self, data: float) -> float:
        if self.config.attacker.cosine:
            # 1 - cos >= 0, but float32 rounding puts cos a hair above 1 at a near match
            return max(0.0, data)
        return data / self.target.energy if self.target.energy > 0 else math.inf


def _assign_gradients(value: torch.Tensor, variables: Sequence[torch.Tensor], *,
                      signed: bool) -> None:
    # autograd.grad, not backward(): the model's own .grad must stay untouched.
    for variable, grad in zip(variables, torch.autograd.grad(value, variables), strict=True):
        variable.grad = grad.sign() if signed else grad


def run_lbfgs(objective: MatchingObjective, dummy: torch.Tensor, label: int | torch.Tensor,
              variables: list[torch.Tensor]) -> tuple[int, StopReason]:
    """DLG's optimiser on *variables*: L-BFGS; returns the steps taken and why it stopped."""
    config = objective.config
    optimiser = torch.optim.LBFGS(
        variables, lr=1.0, max_iter=config.iterations, history_size=config.history_size,
        tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = objective.total(dummy, label)
        _assign_gradients(value, variables, signed=False)
        return value.detach()

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    state = optimiser.state[variables[0]]
    steps, evaluations = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    # torch's L-BFGS stops at max_iter steps or max_eval (1.25 max_iter) evaluations;
    # any earlier stop is one of its tolerances.
    limit = max(1, config.iterations * 5 // 4)
    return steps, "limit" if steps >= config.iterations or evaluations >= limit else "tolerance"


def run_ig(objective: MatchingObjective, dummy: torch.Tensor, label: int | torch.Tensor,
           variables: list[torch.Tensor]) -> tuple[int, StopReason]:
    """Inverting Gradients' optimiser on *variables*: Adam with a step schedule; returns the
    steps taken and why it stopped."""
    config = objective.config
    optimiser = torch.optim.Adam(variables, lr=config.learning_rate)
    milestones = sorted({config.iterations * k // 8 for k in (3, 5, 7)})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones, gamma=0.1)
    for _ in range(config.iterations):
        optimiser.zero_grad()
        _assign_gradients(objective.total(dummy, label), variables, signed=True)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            dummy.clamp_(0.0, 1.0)  # the box constraint
    return config.iterations, "limit"  # IG runs a fixed budget, as published


def _restart(objective: MatchingObjective, shape: tuple[int, ...], label: int | None,
             restart: int) -> tuple[torch.Tensor, int, float, int, StopReason]:
    config = objective.config
    generator = torch.Generator().manual_seed(restart_seed(config.seed, restart))
    dummy = torch.rand((1, *shape), generator=generator).requires_grad_(True)
    soft = torch.randn((1, output_classes(objective.model, dummy)),
                       generator=generator).requires_grad_(True)
    variables = [dummy] if label is not None else [dummy, soft]
    run = run_ig if config.attacker is Attacker.IG else run_lbfgs
    steps, stop = run(objective, dummy, soft if label is None else label, variables)
    final = float(objective.data(dummy, soft if label is None else label).detach())
    chosen = label if label is not None else int(soft.detach().argmax())
    return (dummy.detach()[0], chosen, final if np.isfinite(final) else math.inf, steps,
            stop)


def restart_seed(seed: int, restart: int) -> int:
    """The torch seed of restart *restart* of an attack seeded with *seed*."""
    # torch's CPU generator keeps only the low 32 bits of a seed (2**32 + 1 seeds like 1),
    # so (seed, restart) is hashed into 32 bits rather than packed into one integer.
    return int(np.random.SeedSequence([seed, restart]).generate_state(1, np.uint32)[0])


def output_classes(model: nn.Module, dummy: torch.Tensor) -> int:
    """How many classes *model* predicts, from one forward pass on *dummy*."""
    with torch.no_grad():
        return int(model(dummy).shape[-1])


def _checked_true_image(true_image: object, shape: tuple[int, ...]) -> FloatArray | None:
    if true_image is None:
        return None
    if not isinstance(true_image, np.ndarray) or true_image.shape != shape:
        raise ParameterError(f"true_image must be a numpy array of shape {shape} "
                             "(the image_shape, channels first)")
    return true_image.astype(np.float64)


def _checked_shape(model: nn.Module, image_shape: object) -> tuple[int, int, int]:
    if (not isinstance(image_shape, tuple) or len(image_shape) != 3
            or not all(isinstance(n, int) and n >= 1 for n in image_shape)):
        raise ParameterError(f"image_shape must be (C, H, W) of positive ints, got "
                             f"{image_shape!r}")
    try:
        with torch.no_grad():
            model(torch.zeros((1, *image_shape)))
    except RuntimeError as error:
        raise ParameterError(f"the model does not accept images of shape {image_shape}: "
                             f"{error}") from None
    return image_shape


@dataclass(frozen=True, eq=False)
class PreparedAttack:
    """An attack's checked inputs: what the attacker sees, and the truth for scoring."""

    objective: MatchingObjective
    shape: tuple[int, int, int]
    label: int | None
    visible: int
    truth: FloatArray | None


def prepare_attack(model: nn.Module, gradient: FloatArray, image_shape: tuple[int, int, int],
                   hidden: EncryptionMask | None, config: AttackConfig,
                   true_image: npt.NDArray[np.floating] | None) -> PreparedAttack:
    """Check the inputs and build what every restart shares: the objective on the visible
    coordinates only, the label (inferred when the config asks), the truth for scoring."""
    model = _checked_model(model)
    length = sum(p.numel() for p in model.parameters())
    values = checked_gradient(gradient, length)
    visible = visible_flags(hidden, length)
    shape = _checked_shape(model, image_shape)
    truth = _checked_true_image(true_image, shape)
    if not np.isfinite(values[visible]).all():
        raise ParameterError("the visible gradient coordinates hold NaN or infinity")
    # Gather first: from here on hidden coordinates do not exist for the attacker.
    seen = values[visible]
    target = GradientTarget(torch.from_numpy(seen).float(),
                            torch.from_numpy(np.flatnonzero(visible)), float(np.dot(seen, seen)))
    label = (infer_label(model, np.where(visible, values, 0.0), visible)
             if config.infer_label else None)
    return PreparedAttack(MatchingObjective(model, target, config), shape, label,
                          int(visible.sum()), truth)


def scored_reconstruction(prepared: PreparedAttack, restart: int, image: torch.Tensor,
                          chosen: int, loss: float, steps: int, stop: StopReason
                          ) -> Reconstruction:
    """One restart's reconstruction, clamped to [0, 1] and scored against the truth."""
    truth = prepared.truth
    pixels = torch.nan_to_num(image, nan=0.5).clamp(0.0, 1.0).double().numpy()
    return Reconstruction(restart, pixels, chosen, loss, prepared.objective.relative(loss),
                          steps, stop, None if truth is None else ssim(pixels, truth),
                          None if truth is None else mse(pixels, truth))


def attack_result(prepared: PreparedAttack, candidates: Sequence[Reconstruction],
                  seconds: float) -> AttackResult:
    """The attack's result: the attacker's pick (lowest matching loss) and the defender's
    worst case (highest SSIM) among the restarts' *candidates*."""
    pick = min(candidates, key=lambda c: (c.relative_loss, c.restart))
    best = pick if prepared.truth is None else max(
        candidates, key=lambda c: (-np.inf if c.ssim is None else c.ssim, -c.restart))
    return AttackResult(prepared.objective.config.attacker, tuple(candidates), pick, best,
                        "inferred" if prepared.label is not None else "optimised",
                        prepared.visible, seconds)


def invert_gradient(model: nn.Module, gradient: FloatArray, *,
                    image_shape: tuple[int, int, int], hidden: EncryptionMask | None = None,
                    config: AttackConfig | None = None,
                    true_image: npt.NDArray[np.floating] | None = None) -> AttackResult:
    """Reconstruct the victim's image from the visible coordinates of *gradient*.

    *image_shape* is (C, H, W); *hidden* marks the coordinates the attacker cannot see
    (None: all visible).  *true_image* (C, H, W) is used only to score the candidates
    afterwards, never during the attack.
    """
    start = time.perf_counter()
    config = AttackConfig() if config is None else config
    prepared = prepare_attack(model, gradient, image_shape, hidden, config, true_image)
    candidates = []
    with torch_threads(config.threads):
        for restart in range(config.restarts):
            image, chosen, loss, steps, stop = _restart(prepared.objective, prepared.shape,
                                                        prepared.label, restart)
            candidates.append(scored_reconstruction(prepared, restart, image, chosen, loss,
                                                    steps, stop))
    return attack_result(prepared, candidates, time.perf_counter() - start)
