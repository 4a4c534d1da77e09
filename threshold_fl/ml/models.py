"""The models we train and benchmark, for square images; by default grey and 10 classes.

``build_model(name, image_size=..., seed=..., in_channels=..., classes=...)`` gives the
same weights for the same arguments, so every client of a federation starts from the same
global model.  ``in_channels=3, classes=100, image_size=32`` is the CIFAR-100 shape of
DLG's and the paper's privacy evaluation (``lenet``: 85,036 parameters there).

==============  =============================================  ===========================
name            what                                           parameters (default size)
==============  =============================================  ===========================
``logreg``      logistic regression (one linear layer)         650 (8x8)
``mlp``         two fully connected layers                     4,810 (8x8, 64 hidden)
``lenet``       the LeNet of the DLG paper (Zhu et al. 2019):  9,466 (16x16); 85,036
                3 conv + 1 FC, sigmoid, no pooling             (3x32x32, 100 classes)
``cnn``         the paper's CNN: 2 conv (5x5, 32 and 64        1,663,370 (28x28)
                channels, max-pool) + 2 FC (512, 10)
``transformer`` a small vision transformer: 4x4 patches,       69,834 (16x16)
                2 blocks, width 64, 4 heads
==============  =============================================  ===========================

The CNN has exactly the paper's 1,663,370 parameters at 28x28 inputs (the digits are
resized to 28x28 for it); at other sizes its first FC layer changes size.  The
transformer's attention is written out (not ``nn.MultiheadAttention``) so that
``torch.func.vmap`` can run it per sample for sensitivity maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from threshold_fl._checks import checked_int
from threshold_fl.errors import ParameterError

__all__ = ["MODELS", "Architecture", "ModelShape", "build_model", "model_shape", "parameter_count"]

CLASSES = 10


class LogisticRegression(nn.Module):
    def __init__(self, image_size: int, classes: int = CLASSES, in_channels: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size * image_size, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.linear(images.flatten(1))
        return result


class Mlp(nn.Module):
    def __init__(self, image_size: int, classes: int = CLASSES, in_channels: int = 1,
                 hidden: int = 64) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_channels * image_size * image_size, hidden)
        self.output = nn.Linear(hidden, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.output(torch.relu(self.hidden(images.flatten(1))))
        return result


class LeNet(nn.Module):
    """DLG's LeNet: smooth (sigmoid) activations, so gradients are twice differentiable,
    which the gradient-matching attack needs."""

    def __init__(self, image_size: int, classes: int = CLASSES, in_channels: int = 1,
                 channels: int = 12) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(channels, channels, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(channels, channels, 5, padding=2, stride=1), nn.Sigmoid(),
        )
        side = math.ceil(math.ceil(image_size / 2) / 2)
        self.fc = nn.Linear(channels * side * side, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.fc(self.body(images).flatten(1))
        return result


class PaperCnn(nn.Module):
    """2 conv (5x5, same padding, ReLU, 2x2 max-pool) + 2 FC: 1,663,370 at 28x28."""

    def __init__(self, image_size: int, classes: int = CLASSES, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        side = image_size // 4
        if side < 1:
            raise ParameterError(f"the CNN needs images of at least 4x4, got {image_size}")
        self.fc1 = nn.Linear(64 * side * side, 512)
        self.fc2 = nn.Linear(512, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pool = nn.functional.max_pool2d
        hidden = pool(torch.relu(self.conv1(images)), 2)
        hidden = pool(torch.relu(self.conv2(hidden)), 2)
        result: torch.Tensor = self.fc2(torch.relu(self.fc1(hidden.flatten(1))))
        return result


class _Block(nn.Module):
    """Pre-norm transformer block with explicit attention (vmap-friendly)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, width = tokens.shape
        qkv = self.qkv(self.norm1(tokens)).view(batch, count, 3, self.heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, count, head_width)
        scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
        attended = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, count, width)
        tokens = tokens + self.proj(attended)
        result: torch.Tensor = tokens + self.mlp(self.norm2(tokens))
        return result


class SmallTransformer(nn.Module):
    def __init__(self, image_size: int, classes: int = CLASSES, in_channels: int = 1,
                 patch: int = 4, width: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        if image_size % patch:
            raise ParameterError(
                f"the transformer needs an image size divisible by its patch size {patch}, "
                f"got {image_size}")
        self.embed = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, width))
        self.blocks = nn.Sequential(*[_Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images).flatten(2).transpose(1, 2) + self.position
        result: torch.Tensor = self.head(self.norm(self.blocks(tokens)).mean(dim=1))
        return result


@dataclass(frozen=True)
class Architecture:
    """A named model: its factory ``(image_size, classes, in_channels)`` and the image
    size it is meant for."""

    name: str
    description: str
    image_size: int
    factory: Callable[[int, int, int], nn.Module]


MODELS: dict[str, Architecture] = {entry.name: entry for entry in (
    Architecture("logreg", "logistic regression", 8, LogisticRegression),
    Architecture("mlp", "MLP, 2 fully connected layers", 8, Mlp),
    Architecture("lenet", "LeNet of the DLG paper (sigmoid)", 16, LeNet),
    Architecture("cnn", "the paper's CNN (2 conv + 2 FC, 1,663,370 parameters)", 28, PaperCnn),
    Architecture("transformer", "small vision transformer", 16, SmallTransformer),
)}


def build_model(name: str, *, image_size: int | None = None, seed: int = 0,
                in_channels: int = 1, classes: int = CLASSES) -> nn.Module:
    """A fresh model; the same arguments give the same weights.

    *in_channels* is 1 for grey images, 3 for colour; *classes* the number of outputs.
    """
    spec = MODELS.get(name)
    if spec is None:
        raise ParameterError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    size = spec.image_size if image_size is None else image_size
    checked_int(size, "image_size", 4)
    checked_int(seed, "seed", 0)
    checked_int(in_channels, "in_channels", 1, 64)
    checked_int(classes, "classes", 2, 10_000)
    # A private generator: building a model must not disturb the caller's torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.factory(size, classes, in_channels)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@dataclass(frozen=True)
class ModelShape:
    """What a federation must agree on about a model: its flat length and the ranges
    of its first and last layers (always encrypted by the selective recipes)."""

    length: int
    first_and_last: tuple[tuple[int, int], ...]


def model_shape(model: str | nn.Module) -> ModelShape:
    """The shape of a model given by name (see :data:`MODELS`) or as a module."""
    from threshold_fl.ml.flatten import layout_of  # flatten and mask import nothing here
    from threshold_fl.ml.mask import first_and_last_layers

    layout = layout_of(build_model(model) if isinstance(model, str) else model)
    return ModelShape(layout.size, first_and_last_layers(layout))
