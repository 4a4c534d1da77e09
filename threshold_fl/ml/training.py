"""Local training and evaluation: plain, deterministic torch loops.

Shuffling uses a ``torch.Generator`` seeded by the caller, so the same seed and the same
starting weights give the same trained model, which is what lets a test compare the
encrypted and the plaintext runs of one federation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from threshold_fl._checks import checked_int
from threshold_fl.errors import ParameterError
from threshold_fl.ml.data import ClientData

__all__ = ["Evaluation", "LocalTraining", "batch_order", "evaluate", "train_local"]


@dataclass(frozen=True)
class LocalTraining:
    """How each client trains in a round: SGD with momentum over *epochs* of its data."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.9

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            checked_int(getattr(self, name), name, 1)
        for name in ("learning_rate", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"{name} must be a number, got {value!r}")
        if not self.learning_rate > 0 or not 0 <= self.momentum < 1:
            raise ParameterError(
                f"need learning_rate > 0 and 0 <= momentum < 1, got {self.learning_rate}, "
                f"{self.momentum}")


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    samples: int


def batch_order(count: int, plan: LocalTraining, *, seed: int) -> list[list[torch.Tensor]]:
    """The sample indices of every batch of every epoch that :func:`train_local` visits.

    A pure function of its arguments: an attacker who knows the seed (see
    :mod:`threshold_fl.ml.fedavg_attack`) replays the same order."""
    checked_int(count, "count", 1)
    generator = torch.Generator().manual_seed(seed)
    epochs = []
    for _ in range(plan.epochs):
        order = torch.randperm(count, generator=generator)
        epochs.append([order[start:start + plan.batch_size]
                       for start in range(0, count, plan.batch_size)])
    return epochs


def train_local(model: nn.Module, data: ClientData, plan: LocalTraining, *, seed: int) -> float:
    """Train *model* in place on *data*; returns the mean training loss of the last epoch."""
    if len(data) == 0:
        raise ParameterError("cannot train on an empty dataset")
    optimiser = torch.optim.SGD(model.parameters(), lr=plan.learning_rate,
                                momentum=plan.momentum)
    model.train()
    epoch_loss = 0.0
    for epoch in batch_order(len(data), plan, seed=seed):
        epoch_loss = 0.0
        for batch in epoch:
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(data.images[batch]), data.labels[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            epoch_loss += float(loss.detach()) * len(batch)
    return epoch_loss / len(data)


@torch.no_grad()
def evaluate(model: nn.Module, data: ClientData, *, batch_size: int = 512) -> Evaluation:
    """Accuracy and mean cross-entropy of *model* on *data*."""
    if len(data) == 0:
        raise ParameterError("cannot evaluate on an empty dataset")
    model.eval()
    correct, total_loss = 0, 0.0
    for start in range(0, len(data), batch_size):
        logits = model(data.images[start:start + batch_size])
        labels = data.labels[start:start + batch_size]
        total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    return Evaluation(correct / len(data), total_loss / len(data), len(data))
