"""All restarts of one gradient-inversion attack in one vectorised optimisation.

Why.  :func:`threshold_fl.ml.attack.invert_gradient` runs its restarts one after the
other; each evaluation of the matching loss is a double backward pass through a tiny
LeNet on one image, so per-operation overhead dominates, and so does torch's L-BFGS,
which loops in Python over its history.  Here the R restarts of one attack are rows of
one (R, D) tensor: ``torch.func`` gives each row its own parameter gradient
(``functional_call`` + ``grad``) and ``vmap`` evaluates all rows in one pass, so the
convolutions see a batch of R.

The restarts stay independent.  Every row has its own optimiser state and its own stop:

* ``ig``: torch's Adam on the (R, D) tensor.  Adam, the signed gradients, the step
  schedule and the box constraint act element by element, so a batched restart follows
  the same path as one run alone (tests compare it with ``invert_gradient``).
* ``dlg``/``dlg-tv``: L-BFGS with a history per row (two-loop recursion on rows, inner
  products per row) and a backtracking (Armijo) line search per row: rows whose trial
  step fails halve their step and are evaluated again, the others wait.  It follows
  torch's L-BFGS (first step min(1, 1/||g||_1), curvature pairs kept when y.s > 1e-10,
  H0 = y.s / y.y, the same stop tests) except that torch uses a strong-Wolfe line
  search; a row run alone gives the same result as in a batch (tests), and results
  are compared with torch's L-BFGS in docs/privacy.md ("Figure-9 sweep").

Restart r starts where ``invert_gradient``'s restart r starts (same seeds, same order
of draws), and the result is the same :class:`~threshold_fl.ml.attack.AttackResult`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from threshold_fl.arrays import FloatArray
from threshold_fl.ml.attack import (
    AttackConfig,
    Attacker,
    AttackResult,
    PreparedAttack,
    StopReason,
    attack_result,
    cross_entropy,
    output_classes,
    prepare_attack,
    restart_seed,
    scored_reconstruction,
    torch_threads,
    total_variation,
)
from threshold_fl.ml.mask import EncryptionMask

__all__ = ["invert_gradient_batched"]

_TOLERANCE_GRAD = 1e-12  # as invert_gradient's L-BFGS
_TOLERANCE_CHANGE = 1e-14
_ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + c t g.d
_CURVATURE = 1e-10  # torch's threshold for keeping a curvature pair
_HALVINGS = 30  # a step of 2**-30 that still fails means no progress: stop the row


class _BatchedObjective:
    """The attacker's objective on rows (image, then the soft label if it is optimised)."""

    def __init__(self, prepared: PreparedAttack) -> None:
        objective = prepared.objective
        self.model, self.target, self.label = objective.model, objective.target, prepared.label
        # The known label; unused (-1) when a soft label is optimised with the image.
        self.fixed = -1 if prepared.label is None else prepared.label
        self.cosine, self.weight = objective.config.attacker.cosine, objective.weight
        self.shape = prepared.shape
        self.pixels = math.prod(self.shape)
        self.params = {name: p.detach() for name, p in self.model.named_parameters()}
        self._gradient = vmap(grad_and_value(self._total, has_aux=True))

    def split(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = row[..., :self.pixels].reshape(*row.shape[:-1], *self.shape)
        return image, None if self.label is not None else row[..., self.pixels:]

    def _data(self, image: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        label: int | torch.Tensor = self.fixed if soft is None else soft.unsqueeze(0)

        def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = functional_call(self.model, params, (image.unsqueeze(0),))
            return cross_entropy(logits, label)

        gradients = grad(loss)(self.params)
        seen = torch.cat([g.reshape(-1) for g in gradients.values()])[self.target.index]
        if self.cosine:
            return 1.0 - nn.functional.cosine_similarity(seen, self.target.values, dim=0,
                                                         eps=1e-30)
        return ((seen - self.target.values) ** 2).sum()

    def _total(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, soft = self.split(row)
        data = self._data(image, soft)
        total = data + self.weight * total_variation(image) if self.weight else data
        return total, data.detach()

    def __call__(self, rows: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objective, data term, gradient of the objective) per row."""
        gradient, (total, data) = self._gradient(rows)
        # Without a prior the two are one tensor: the caller updates them separately.
        return total.detach(), data.clone(), gradient.detach()


def _starts(prepared: PreparedAttack, restarts: int) -> torch.Tensor:
    """Row r: invert_gradient's restart r start (image, then soft label if optimised)."""
    config, model = prepared.objective.config, prepared.objective.model
    rows = []
    for restart in range(restarts):
        generator = torch.Generator().manual_seed(restart_seed(config.seed, restart))
        image = torch.rand((1, *prepared.shape), generator=generator)
        soft = torch.randn((1, output_classes(model, image)), generator=generator)
        parts = [image.reshape(-1)] + ([soft.reshape(-1)] if prepared.label is None else [])
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@dataclass
class _Lbfgs:
    """Per-row L-BFGS state: the newest curvature pairs last."""

    steps_s: list[torch.Tensor]  # each (R, D); zero rows where that row kept no pair
    steps_y: list[torch.Tensor]
    rho: list[torch.Tensor]  # each (R,); 0 where no pair, which makes the pair a no-op
    scale: torch.Tensor  # (R,) H0 = y.s / y.y of the newest pair

    def direction(self, gradient: torch.Tensor) -> torch.Tensor:
        q = -gradient
        alphas = []
        for s, y, rho in zip(reversed(self.steps_s), reversed(self.steps_y),
                             reversed(self.rho), strict=True):
            alpha = rho * (s * q).sum(dim=1)
            q = q - alpha[:, None] * y
            alphas.append(alpha)
        r = q * self.scale[:, None]
        for s, y, rho, alpha in zip(self.steps_s, self.steps_y, self.rho, reversed(alphas),
                                    strict=True):
            beta = rho * (y * r).sum(dim=1)
            r = r + s * (alpha - beta)[:, None]
        return r

    def update(self, s: torch.Tensor, y: torch.Tensor, history: int) -> None:
        ys = (y * s).sum(dim=1)
        keep = ys > _CURVATURE
        self.steps_s.append(torch.where(keep[:, None], s, 0.0))
        self.steps_y.append(torch.where(keep[:, None], y, 0.0))
        self.rho.append(torch.where(keep, 1.0 / torch.where(keep, ys, 1.0), 0.0))
        self.scale = torch.where(keep, ys / (y * y).sum(dim=1).clamp_min(1e-30), self.scale)
        if len(self.steps_s) > history:
            del self.steps_s[0], self.steps_y[0], self.rho[0]


def _line_search(objective: _BatchedObjective, rows: torch.Tensor, loss: torch.Tensor,
                 slope: torch.Tensor, direction: torch.Tensor, step: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                            torch.Tensor]:
    """Backtracking per row: (step, new rows, their objective, data, gradient, evaluations
    per row); a row with no acceptable step keeps step 0."""
    step = step.clone()
    new_loss, new_data = loss.clone(), torch.zeros_like(loss)
    new_grad = torch.zeros_like(rows)
    pending = torch.ones_like(loss, dtype=torch.bool)
    evaluations = torch.zeros_like(loss, dtype=torch.long)
    for _ in range(_HALVINGS):
        where = pending.nonzero().squeeze(1)
        trial = rows[where] + step[where, None] * direction[where]
        total, data, gradient = objective(trial)
        evaluations[where] += 1
        ok = torch.isfinite(total) & (total <= loss[where] + _ARMIJO * step[where]
                                      * slope[where])
        done = where[ok]
        new_loss[done], new_data[done], new_grad[done] = total[ok], data[ok], gradient[ok]
        pending[done] = False
        step[where[~ok]] /= 2
        if not pending.any():
            break
    step[pending] = 0.0
    return step, new_loss, new_data, new_grad, evaluations


def _run_lbfgs(objective: _BatchedObjective, rows: torch.Tensor, config: AttackConfig
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[StopReason]]:
    """Minimise every row; (rows, data term, steps per row, stop reason per row)."""
    count = rows.shape[0]
    loss, data, gradient = objective(rows)
    state = _Lbfgs([], [], [], torch.ones(count))
    steps = torch.zeros(count, dtype=torch.long)
    evaluations = torch.ones(count, dtype=torch.long)
    stop: list[StopReason] = ["limit"] * count
    active = gradient.abs().amax(dim=1) > _TOLERANCE_GRAD
    for row in (~active).nonzero().squeeze(1).tolist():
        stop[row] = "tolerance"
    limit = max(1, config.iterations * 5 // 4)
    for iteration in range(config.iterations):
        if not active.any():
            break
        direction = state.direction(gradient) if iteration else -gradient
        slope = (gradient * direction).sum(dim=1)
        first = torch.clamp(1.0 / gradient.abs().sum(dim=1), max=1.0)
        step = first if iteration == 0 else torch.ones(count)
        flat = active & (slope > -_TOLERANCE_CHANGE)  # not a descent direction any more
        moving = active & ~flat
        steps[moving] += 1
        where = moving.nonzero().squeeze(1)
        step_w, loss_w, data_w, grad_w, used = _line_search(
            objective, rows[where], loss[where], slope[where], direction[where], step[where])
        evaluations[where] += used
        change = step_w[:, None] * direction[where]
        new_rows, new_loss, new_grad = rows.clone(), loss.clone(), gradient.clone()
        accepted = step_w > 0
        new_rows[where] = rows[where] + change
        new_loss[where[accepted]] = loss_w[accepted]
        new_grad[where[accepted]] = grad_w[accepted]
        data[where[accepted]] = data_w[accepted]
        s, y = new_rows - rows, new_grad - gradient
        state.update(torch.where(moving[:, None], s, 0.0), torch.where(moving[:, None], y, 0.0),
                     config.history_size)
        finished = flat | (moving & (
            ~_scatter(accepted, where, count)
            | (new_grad.abs().amax(dim=1) <= _TOLERANCE_GRAD)
            | (s.abs().amax(dim=1) <= _TOLERANCE_CHANGE)
            | ((new_loss - loss).abs() < _TOLERANCE_CHANGE)))
        exhausted = active & ~finished & ((steps >= config.iterations) | (evaluations >= limit))
        for row in finished.nonzero().squeeze(1).tolist():
            stop[row] = "tolerance"
        active &= ~(finished | exhausted)
        rows, loss, gradient = new_rows, new_loss, new_grad
    return rows, data, steps, stop


def _scatter(values: torch.Tensor, where: torch.Tensor, count: int) -> torch.Tensor:
    full = torch.zeros(count, dtype=values.dtype)
    full[where] = values
    return full


def _run_ig(objective: _BatchedObjective, rows: torch.Tensor, config: AttackConfig
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[StopReason]]:
    rows = rows.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([rows], lr=config.learning_rate)
    milestones = sorted({config.iterations * k // 8 for k in (3, 5, 7)})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones, gamma=0.1)
    pixels = objective.pixels
    for _ in range(config.iterations):
        optimiser.zero_grad()
        _, _, gradient = objective(rows.detach())
        rows.grad = gradient.sign()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            rows[:, :pixels].clamp_(0.0, 1.0)  # the box constraint, on the image only
    final = rows.detach()
    _, data, _ = objective(final)
    count = final.shape[0]
    return final, data, torch.full((count,), config.iterations), ["limit"] * count


def invert_gradient_batched(model: nn.Module, gradient: FloatArray, *,
                            image_shape: tuple[int, int, int],
                            hidden: EncryptionMask | None = None,
                            config: AttackConfig | None = None,
                            true_image: npt.NDArray[np.floating] | None = None
                            ) -> AttackResult:
    """:func:`~threshold_fl.ml.attack.invert_gradient` with its restarts batched (see the
    module doc); same arguments, same result type."""
    start = time.perf_counter()
    config = AttackConfig() if config is None else config
    prepared = prepare_attack(model, gradient, image_shape, hidden, config, true_image)
    with torch_threads(config.threads):
        objective = _BatchedObjective(prepared)
        rows = _starts(prepared, config.restarts)
        run = _run_ig if config.attacker is Attacker.IG else _run_lbfgs
        final, data, steps, stop = run(objective, rows, config)
        images, softs = objective.split(final)
    candidates = []
    for restart in range(config.restarts):
        chosen = objective.fixed if softs is None else int(softs[restart].argmax())
        loss = float(data[restart])
        candidates.append(scored_reconstruction(prepared, restart, images[restart], chosen,
                                  loss if math.isfinite(loss) else math.inf,
                                  int(steps[restart]), stop[restart]))
    return attack_result(prepared, candidates, time.perf_counter() - start)
