"""FedAvg-aware inversion: reconstruct a client's images from the model it really uploads.

Threat model.  A client holds ``count`` images and trains one round as
:class:`threshold_fl.ml.learner.LocalLearner` does: :func:`train_local` (SGD with
momentum, ``epochs`` passes over its data in batches of ``batch_size``) from the global
model, then uploads the trained model, optionally with local-DP noise on the plaintext
coordinates.  The server sees the *visible* (plaintext) coordinates of that upload.  It
knows the start model (it sent it), the mask, the hyper-parameters (manifest and CLI),
the sample count (the FedAvg weight) and the clip bound of the local-DP mechanism.  The
shuffle order of :func:`train_local` is a function of the client's seed, which the
protocol derives from the manifest's ``data_seed``, the client's position and the round
(:func:`threshold_fl.app.federation.client_learners`), so the attacker may replay it
(``seed``); when one batch holds all the data the order does not matter at all.

Attack (after Dimitrov et al. 2022, "Data leakage in federated averaging").  It
optimises ``count`` dummy images (and soft labels, unless the labels are inferred) so
that *simulating the same local training from the start model* reproduces the visible
part of the update.  The simulation unrolls every SGD-with-momentum step with
``torch.func.functional_call``, keeping the graph (``create_graph``), so the simulated
update is differentiable with respect to the dummy data; when a clip bound is known the
simulated update is clipped as the client's was.  The three attackers of
:mod:`threshold_fl.ml.attack` run unchanged on this objective (their optimisers are
shared): ``dlg`` (L-BFGS, L2), ``dlg-tv`` (plus a total-variation prior) and ``ig``
(cosine, signed Adam, box).

Labels.  For cross-entropy, each step moves the last layer's row c by
-lr (p_c - y_c) h with non-negative features h (sigmoid or ReLU), so the rows of the
client's classes grow and the others shrink; the ``count`` classes with the largest sum
of visible last-layer deltas are taken as the labels (this assumes distinct labels, as
in our victims).  If no last-layer coordinate is visible, soft labels are optimised.

Scoring.  A batch reconstruction is an unordered set of images: reconstructed and true
images are paired by the Hungarian assignment that maximises the total SSIM.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call

from threshold_fl._checks import checked_int
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml.attack import (
    AttackConfig,
    Attacker,
    GradientTarget,
    MatchingObjective,
    StopReason,
    checked_gradient,
    restart_seed,
    run_ig,
    run_lbfgs,
    torch_threads,
    visible_flags,
)
from threshold_fl.ml.flatten import layout_of
from threshold_fl.ml.image_metrics import ssim
from threshold_fl.ml.mask import EncryptionMask
from threshold_fl.ml.training import LocalTraining, batch_order

__all__ = [
    "BatchReconstruction", "UploadAttack", "UploadThreat", "infer_labels", "invert_upload",
    "match_images", "simulate_update",
]

BoolVector: TypeAlias = npt.NDArray[np.bool_]
IndexVector: TypeAlias = npt.NDArray[np.int64]


@dataclass(frozen=True)
class UploadThreat:
    """What the attacker knows about the client's round (see the module doc).

    *seed* is the client's training seed; None when unknown, which is allowed only when
    one batch holds all ``count`` samples (then the order cannot matter).  *clip* is the
    local-DP clip bound C (None: no local DP)."""

    plan: LocalTraining
    count: int
    seed: int | None = None
    clip: float | None = None

    def __post_init__(self) -> None:
        checked_int(self.count, "count", 1)
        if self.seed is None and self.plan.batch_size < self.count:
            raise ParameterError(
                "with batches smaller than the local data the attack needs the training "
                "seed (the shuffle order); pass seed, or batch_size >= count")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ParameterError(f"clip must be a finite number > 0, got {self.clip!r}")

    def order(self) -> list[list[torch.Tensor]]:
        if self.seed is None:  # one batch per epoch: the order is irrelevant
            return [[torch.arange(self.count)] for _ in range(self.plan.epochs)]
        return batch_order(self.count, self.plan, seed=self.seed)


def _batch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.dtype == torch.long:
        return nn.functional.cross_entropy(logits, labels)
    # Soft labels (DLG): free vectors turned into distributions, batch mean as the client.
    return -(labels.softmax(dim=-1) * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def simulate_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    threat: UploadThreat, *, create_graph: bool = True) -> torch.Tensor:
    """The flat update (trained - start) of :func:`train_local` from *model*'s weights on
    (*images*, *labels*), differentiable w.r.t. both; clipped to C when *threat* has one.

    torch's SGD keeps one momentum buffer per tensor, starting at the first gradient:
    ``buf = momentum * buf + grad; w = w - lr * buf`` (no dampening, no Nesterov)."""
    plan = threat.plan
    start = {name: p.detach() for name, p in model.named_parameters()}
    weights = {name: p.clone().requires_grad_(True) for name, p in start.items()}
    buffers: dict[str, torch.Tensor] = {}
    for epoch in threat.order():
        for batch in epoch:
            logits = functional_call(model, weights, (images[batch],))
            loss = _batch_loss(logits, labels[batch])
            grads = torch.autograd.grad(loss, list(weights.values()), create_graph=create_graph)
            for (name, weight), grad in zip(list(weights.items()), grads, strict=True):
                buffer = grad if name not in buffers else plan.momentum * buffers[name] + grad
                buffers[name] = buffer
                weight = weight - plan.learning_rate * buffer
                # Without a graph to keep, each step's weights are new leaves.
                weights[name] = weight if create_graph else weight.detach().requires_grad_(True)
    update = torch.cat([(weights[n] - start[n]).reshape(-1) for n in start])
    update = update if create_graph else update.detach()
    return update if threat.clip is None else update.clamp(-threat.clip, threat.clip)


def infer_labels(model: nn.Module, update: FloatArray, visible: BoolVector, count: int
                 ) -> torch.Tensor | None:
    """The *count* classes whose visible last-layer rows grew most, or None if none is
    visible (see the module doc)."""
    layout = layout_of(model)
    last = layout.layer_names()[-1]
    scores: FloatArray | None = None
    for spec in layout.tensors:
        if spec.name.rpartition(".")[0] != last or spec.shape == ():
            continue
        rows = spec.shape[0]
        values = np.where(visible, update, 0.0)[spec.offset:spec.stop].reshape(rows, -1)
        seen = visible[spec.offset:spec.stop].reshape(rows, -1)
        if seen.any():
            row_sums = values.sum(axis=1)
            scores = row_sums if scores is None else scores + row_sums
    if scores is None or count > scores.shape[0]:
        return None
    chosen = np.argsort(-scores, kind="stable")[:count]
    return torch.from_numpy(np.sort(chosen).astype(np.int64))


class _UploadObjective(MatchingObjective):
    """The visible-coordinate distance between the simulated and the observed update."""

    def __init__(self, model: nn.Module, target: GradientTarget, config: AttackConfig,
                 threat: UploadThreat) -> None:
        super().__init__(model, target, config)
        self.threat = threat

    def data(self, dummy: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        assert isinstance(label, torch.Tensor)  # this objective always has a batch of labels
        update = simulate_update(self.model, dummy, label, self.threat)
        seen = update[self.target.index] / self.threat.plan.learning_rate
        if self.config.attacker.cosine:
            cosine = nn.functional.cosine_similarity(seen, self.target.values, dim=0,
                                                     eps=1e-30)
            return 1.0 - cosine
        return ((seen - self.target.values) ** 2).sum()


def match_images(images: FloatArray, truth: FloatArray) -> tuple[IndexVector, FloatArray]:
    """Pair reconstructed and true images (N, C, H, W) by the Hungarian assignment that
    maximises total SSIM: ``images[order[j]]`` is paired with ``truth[j]``, at SSIM
    ``paired[j]``."""
    scores = np.array([[ssim(image, true) for true in truth] for image in images])
    rows, columns = linear_sum_assignment(-scores)
    order = np.empty(len(truth), dtype=np.int64)
    order[columns] = rows
    paired: FloatArray = scores[order, np.arange(len(truth))]
    return order, paired


@dataclass(frozen=True, eq=False)
class BatchReconstruction:
    """One restart: images (N, C, H, W) in [0, 1] (matched to the truth when given), labels
    and convergence evidence as in :class:`threshold_fl.ml.attack.Reconstruction`;
    *ssim* per matched image (None without the truth)."""

    restart: int
    images: FloatArray
    labels: tuple[int, ...]
    matching_loss: float
    relative_loss: float
    iterations: int
    stop: StopReason
    ssim: tuple[float, ...] | None

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim)) if self.ssim else 0.0


@dataclass(frozen=True, eq=False)
class UploadAttack:
    """All restarts, the attacker's pick (lowest relative loss) and the defender's worst
    case (highest mean SSIM)."""

    attacker: Attacker
    candidates: tuple[BatchReconstruction, ...]
    attacker_choice: BatchReconstruction
    best: BatchReconstruction
    labels_inferred: bool
    visible: int
    seconds: float


def _restart(objective: _UploadObjective, shape: tuple[int, ...], labels: torch.Tensor | None,
             restart: int) -> tuple[torch.Tensor, torch.Tensor, float, int, StopReason]:
    config, count = objective.config, objective.threat.count
    generator = torch.Generator().manual_seed(restart_seed(config.seed, restart))
    dummy = torch.rand((count, *shape), generator=generator).requires_grad_(True)
    with torch.no_grad():
        classes = int(objective.model(dummy[:1]).shape[-1])
    soft = torch.randn((count, classes), generator=generator).requires_grad_(True)
    target = soft if labels is None else labels
    variables = [dummy] if labels is not None else [dummy, soft]
    run = run_ig if config.attacker is Attacker.IG else run_lbfgs
    steps, stop = run(objective, dummy, target, variables)
    final = float(objective.data(dummy, target).detach())
    chosen = labels if labels is not None else soft.detach().argmax(dim=-1)
    return dummy.detach(), chosen, final if math.isfinite(final) else math.inf, steps, stop


def invert_upload(model: nn.Module, update: FloatArray, threat: UploadThreat, *,
                  image_shape: tuple[int, int, int], hidden: EncryptionMask | None = None,
                  config: AttackConfig | None = None,
                  true_images: FloatArray | None = None) -> UploadAttack:
    """Reconstruct the client's ``threat.count`` images from the visible part of *update*
    (its uploaded model minus *model*'s weights, the start model).  *true_images*
    (N, C, H, W) only score the result afterwards."""
    started = time.perf_counter()
    config = AttackConfig() if config is None else config
    length = sum(p.numel() for p in model.parameters())
    values = checked_gradient(update, length)  # an update is checked as a gradient is
    visible = visible_flags(hidden, length)
    if true_images is not None and true_images.shape != (threat.count, *image_shape):
        raise ParameterError(f"true_images must have shape {(threat.count, *image_shape)}")
    if not np.isfinite(values[visible]).all():
        raise ParameterError("the visible update coordinates hold NaN or infinity")
    # Gather first: hidden coordinates never reach the objective.  Divided by the learning
    # rate, the update is in gradient units (one step: exactly the gradient), where L-BFGS's
    # absolute tolerances (1e-12, 1e-14) suit it; raw, it stopped after one step.
    seen = values[visible] / threat.plan.learning_rate
    target = GradientTarget(torch.from_numpy(seen).float(),
                            torch.from_numpy(np.flatnonzero(visible)), float(np.dot(seen, seen)))
    labels = infer_labels(model, values, visible, threat.count) if config.infer_label else None
    objective = _UploadObjective(model, target, config, threat)
    candidates = []
    with torch_threads(config.threads):
        for restart in range(config.restarts):
            dummy, chosen, loss, steps, stop = _restart(objective, image_shape, labels, restart)
            images = torch.nan_to_num(dummy, nan=0.5).clamp(0.0, 1.0).double().numpy()
            found, scores = chosen.numpy(), None
            if true_images is not None:
                order, paired = match_images(images, true_images.astype(np.float64))
                images, found, scores = images[order], found[order], tuple(map(float, paired))
            candidates.append(BatchReconstruction(
                restart, images, tuple(int(c) for c in found), loss,
                objective.relative(loss), steps, stop, scores))
    pick = min(candidates, key=lambda c: (c.relative_loss, c.restart))
    best = max(candidates, key=lambda c: (c.mean_ssim, -c.restart))
    return UploadAttack(config.attacker, tuple(candidates), pick,
                        pick if true_images is None else best, labels is not None,
                        int(visible.sum()), time.perf_counter() - started)
