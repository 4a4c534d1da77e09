"""One client's machine-learning side: its model, its data, and the two callbacks the
protocol asks for (a sensitivity map once, a trained model every round).

A :class:`LocalLearner` works on flat float64 vectors, the protocol's currency: ``train``
takes the global model (None in round 1: every client starts from the same seeded
initial model) and returns the locally trained one, with local-DP noise on the plaintext
coordinates if asked; ``sensitivity`` returns the map over the first
``sensitivity_samples`` local samples.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass

from torch import nn

from threshold_fl._checks import checked_int
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml.data import ClientData
from threshold_fl.ml.flatten import flatten_state, restore_state
from threshold_fl.ml.mask import EncryptionMask
from threshold_fl.ml.privacy import LaplaceNoise, Randomness, SeededRandomness
from threshold_fl.ml.sensitivity import sensitivity_map
from threshold_fl.ml.training import Evaluation, LocalTraining, evaluate, train_local

__all__ = ["LocalLearner", "round_seed"]


# Learners in one process take turns: torch CPU kernels run by several threads at once
# share one intra-op pool and then split reductions differently, so the same seed would
# not give the same bits (seen here), and runs of one federation could not be compared.
_TORCH_TURN = threading.Lock()


def round_seed(seed: int, round_: int) -> int:
    """The shuffle seed of :func:`train_local` for a learner's *seed* in round *round_*."""
    return seed * 1_000_003 + round_


@dataclass(eq=False)
class LocalLearner:
    """*model* must hold the federation's initial weights when the learner is made."""

    model: nn.Module
    data: ClientData
    plan: LocalTraining
    seed: int
    sensitivity_samples: int = 64
    noise: LaplaceNoise | None = None
    noise_seed: int | None = None  # None: os.urandom; a seed (SHAKE-256): experiments only

    def __post_init__(self) -> None:
        checked_int(self.seed, "seed", 0)
        checked_int(self.sensitivity_samples, "sensitivity_samples", 1)
        self.initial, self.layout = flatten_state(self.model)
        self._randomness: Randomness = (os.urandom if self.noise_seed is None
                                        else SeededRandomness(self.noise_seed))
        # Evaluation gets its own copy: the next round may already train in a thread.
        self._evaluation_model = copy.deepcopy(self.model)

    @property
    def length(self) -> int:
        return int(self.initial.shape[0])

    def load(self, vector: FloatArray) -> None:
        """Put a flat model vector into the torch model."""
        restore_state(self.model, vector, self.layout)

    def train(self, round_: int, global_model: FloatArray | None,
              mask: EncryptionMask | None = None) -> FloatArray:
        """Train one round from *global_model* (None: the initial model)."""
        start = self.initial if global_model is None else global_model
        with _TORCH_TURN:
            self.load(start)
            train_local(self.model, self.data, self.plan, seed=round_seed(self.seed, round_))
            trained, _ = flatten_state(self.model, self.layout)
        if self.noise is None:
            return trained
        if mask is None:
            raise ParameterError("local DP needs the agreed encryption mask; train after "
                                 "mask agreement")
        return self.noise.apply(trained, start, mask, self._randomness)

    def sensitivity(self) -> FloatArray:
        """The sensitivity map of the initial model over the first local samples."""
        count = min(self.sensitivity_samples, len(self.data))
        with _TORCH_TURN:
            self.load(self.initial)
            return sensitivity_map(self.model, self.data.images[:count],
                                   self.data.labels[:count])

    def evaluate(self, vector: FloatArray, data: ClientData) -> Evaluation:
        """Accuracy and loss of model *vector* on *data* (the training model is untouched)."""
        with _TORCH_TURN:
            restore_state(self._evaluation_model, vector, self.layout)
            return evaluate(self._evaluation_model, data)
