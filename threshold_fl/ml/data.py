"""A real dataset that needs no download, and ways to split it across clients.

scikit-learn ships the UCI handwritten digits (1,797 grey 8x8 images, 10 classes) inside
its wheel.  :func:`load_digits` scales them to [0, 1], optionally resizes them (the
paper's CNN expects 28x28), and makes a stratified, seeded train/test split.

Client splits: :func:`split_iid` deals a shuffled deck; :func:`split_dirichlet` gives
each class to clients in proportions drawn from Dirichlet(alpha): small alpha (0.1)
means each client sees few classes, large alpha (100) is nearly IID.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from threshold_fl._checks import checked_int
from threshold_fl.arrays import IndexArray
from threshold_fl.errors import ParameterError

__all__ = ["ClientData", "Dataset", "load_digits", "split_dirichlet", "split_iid"]

_RAW_SIZE = 8
_RAW_MAX = 16.0  # the digits' grey levels are 0..16


@dataclass(frozen=True)
class ClientData:
    """One party's images (N, C, S, S) float32 in [0, 1] and labels (N,) int64; C is 1
    for grey images (the digits), 3 for colour (:func:`threshold_fl.ml.photos.load_photos`)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ParameterError(f"images must be (N, 1 or 3, S, S), got "
                                 f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ParameterError(
                f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: IndexArray) -> ClientData:
        chosen = torch.as_tensor(indices, dtype=torch.long)
        return ClientData(self.images[chosen], self.labels[chosen])


@dataclass(frozen=True)
class Dataset:
    train: ClientData
    test: ClientData
    classes: int
    image_size: int


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    if size == images.shape[-1]:
        return images
    resized = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                              align_corners=False)
    return resized.clamp(0.0, 1.0)


def load_digits(*, image_size: int = _RAW_SIZE, test_fraction: float = 0.2,
                seed: int = 0) -> Dataset:
    """The digits, scaled to [0, 1] and resized to *image_size*, split train/test."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    checked_int(image_size, "image_size", 4)
    checked_int(seed, "seed", 0)
    if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
        raise ParameterError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    raw = sklearn_digits()
    images = torch.tensor(raw.images / _RAW_MAX, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(raw.target, dtype=torch.long)
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed,
        stratify=raw.target)
    images = _resized(images, image_size)
    full = ClientData(images, labels)
    return Dataset(full.subset(np.sort(train_index)), full.subset(np.sort(test_index)),
                   classes=10, image_size=image_size)


def split_iid(count: int, clients: int, *, seed: int) -> list[IndexArray]:
    """Shuffle ``range(count)`` and deal it into *clients* nearly equal parts."""
    checked_int(clients, "clients", 1)
    checked_int(seed, "seed", 0)
    if checked_int(count, "count", 0) < clients:
        raise ParameterError(f"cannot split {count} samples across {clients} clients")
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, clients)]


def split_dirichlet(labels: npt.ArrayLike, clients: int, *, alpha: float, seed: int,
                    min_samples: int = 10, max_tries: int = 100) -> list[IndexArray]:
    """Non-IID split: each class is divided among clients by Dirichlet(alpha) proportions.

    Redraws (up to *max_tries* times) until every client has at least *min_samples*.
    """
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or not np.issubdtype(label_array.dtype, np.integer):
        raise ParameterError("labels must be a 1-D array of integer class labels")
    checked_int(clients, "clients", 1)
    checked_int(seed, "seed", 0)
    checked_int(min_samples, "min_samples", 0)
    if isinstance(alpha, bool) or not (np.isfinite(alpha) and alpha > 0):
        raise ParameterError(f"alpha must be a positive finite number, got {alpha!r}")
    if clients * min_samples > label_array.size:
        raise ParameterError(f"{label_array.size} samples cannot give {clients} clients "
                             f"{min_samples} each; lower min_samples or use fewer clients")
    rng = np.random.default_rng(seed)
    for _ in range(checked_int(max_tries, "max_tries", 1)):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for label in np.unique(label_array):
            members = rng.permutation(np.flatnonzero(label_array == label))
            shares = rng.dirichlet(np.full(clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_samples:
            return [np.sort(np.array(part, dtype=np.int64)) for part in parts]
    raise ParameterError(
        f"no Dirichlet(alpha={alpha}) split in {max_tries} tries gave every client "
        f"{min_samples} samples; raise alpha or lower min_samples")
