"""Privacy evaluation: does selective parameter encryption stop gradient inversion?

Set-up.  DLG's LeNet (:func:`threshold_fl.ml.models.build_model` ``"lenet"``) in one of
two shapes: the paper's, ``--dataset photos`` (3x32x32 colour patches of real
photographs, :func:`threshold_fl.ml.photos.load_photos`, 100 classes: the CIFAR-100
shape of DLG's and the paper's Figure 9, 85,036 parameters), or the older grey one,
``--dataset digits`` (the sklearn digits at 16x16, 10 classes, 9,466 parameters).  Its
weights and biases are drawn from uniform(-0.5, 0.5), the initialisation of DLG's own
evaluation (Zhu et al. 2019): it gives larger, more informative gradients than
PyTorch's default and makes the attack *stronger*, the conservative choice here.

For each victim image the client's local data are the victim plus ``local_samples - 1``
other images (digits: training images; photos: patches that are not victims); the
sensitivity map of the model on those decides the top-p masks.  Settings
(``DEFAULT_SETTINGS``): no protection; the top p of the sensitivity map hidden (p =
0.05, 0.1, 0.3); the paper's recipe (top 0.1 plus the first and last layers); uniformly
random masks (p = 0.05, 0.1, 0.3, 0.5).  Every attacker
(:class:`threshold_fl.ml.attack.Attacker`: ``dlg``, ``dlg-tv``, ``ig``) runs against
every (setting, image) with the same restart seeds, so settings differ only in masks.

Scores.  Per attacker, the restart that is *best by SSIM* against the true image (the
defender's worst case) is scored with SSIM, MS-SSIM, UQI, VIF, PSNR and MSE
(:mod:`threshold_fl.ml.image_metrics`); beside it the SSIM of the restart the attacker
would pick (lowest matching loss), and the convergence evidence of the best restart:
its matching loss relative to the visible gradient and where and why its optimiser
stopped.  With several attackers a ``worst case`` row takes, per image, the attacker
with the highest SSIM.

Output (``privacy.md``, ``privacy.json``, ``reconstructions.png``) is written by
:func:`threshold_fl.app.privacy_report.write_outputs`; ``threshold-fl attack``
(:func:`main`) runs it all.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import torch
from torch import nn

from threshold_fl._checks import bounded, checked_int
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml import image_metrics
from threshold_fl.ml.attack import (
    AttackConfig,
    Attacker,
    AttackResult,
    StopReason,
    invert_gradient,
    torch_threads,
    victim_gradient,
)
from threshold_fl.ml.data import ClientData, load_digits
from threshold_fl.ml.flatten import layout_of
from threshold_fl.ml.mask import (
    EncryptionMask,
    first_and_last_layers,
    select_random_fraction,
    select_top_fraction,
)
from threshold_fl.ml.models import build_model, parameter_count
from threshold_fl.ml.photos import PHOTOS, load_photos
from threshold_fl.ml.sensitivity import sensitivity_map

__all__ = [
    "DATASETS", "DEFAULT_SETTINGS", "EvalConfig", "Evaluation", "ImageOutcome", "Setting",
    "SettingOutcome", "Victim", "dlg_model", "evaluate", "main", "parse_setting",
    "score_image", "setting_mask",
    "worst_case",
    "mask_seed",
]

Progress: TypeAlias = Callable[[str], None]
MaskKind: TypeAlias = Literal["none", "top", "top+layers", "random"]
DatasetName: TypeAlias = Literal["digits", "photos"]

MODEL = "lenet"
DEFAULT_OUT = Path("privacy-results")


@dataclass(frozen=True)
class DatasetShape:
    """A dataset's images and its LeNet's default shape."""

    channels: int
    image_size: int
    classes: int
    max_images: int  # victims: distinct digit classes, or photo patches


DATASETS: dict[str, DatasetShape] = {
    "digits": DatasetShape(1, 16, 10, 10),
    "photos": DatasetShape(3, 32, 100, 4 * len(PHOTOS)),
}


@dataclass(frozen=True)
class Setting:
    """One protection setting: which coordinates of the update are hidden."""

    name: str
    kind: MaskKind
    fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "top", "top+layers", "random"):
            raise ParameterError(f"setting kind must be none, top, top+layers or random, "
                                 f"got {self.kind!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ParameterError(f"setting fraction must lie in [0, 1], got {self.fraction!r}")


DEFAULT_SETTINGS: tuple[Setting, ...] = (
    Setting("none", "none"),
    *(Setting(f"top-{p}", "top", p) for p in (0.05, 0.1, 0.3)),
    Setting("top-0.1 + first/last layers", "top+layers", 0.1),
    *(Setting(f"random-{p}", "random", p) for p in (0.05, 0.1, 0.3, 0.5)),
)


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of the evaluation; :meth:`quick` gives a small one for tests.

    *image_size* and *classes* None take the dataset's (``DATASETS``); *tv_weight* None
    each attacker's default.
    """

    images: int = 4
    restarts: int = 10
    iterations: int = 200
    seed: int = 0
    local_samples: int = 64
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS
    attackers: tuple[Attacker, ...] = (Attacker.DLG,)
    dataset: DatasetName = "digits"
    image_size: int | None = None
    classes: int | None = None
    tv_weight: float | None = None
    shape: DatasetShape = field(init=False)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ParameterError(f"dataset must be one of {sorted(DATASETS)}, "
                                 f"got {self.dataset!r}")
        base = DATASETS[self.dataset]
        size = base.image_size if self.image_size is None else self.image_size
        classes = base.classes if self.classes is None else self.classes
        checked_int(size, "image_size", 8, 64)
        checked_int(classes, "classes", base.classes if self.dataset == "digits" else 2, 1000)
        object.__setattr__(self, "shape", replace(base, image_size=size, classes=classes))
        checked_int(self.images, "images", 1, base.max_images)
        checked_int(self.local_samples, "local_samples", 1, 1000)
        if not self.settings:
            raise ParameterError("settings must name at least one setting")
        if not self.attackers or len(set(self.attackers)) != len(self.attackers):
            raise ParameterError("attackers must name at least one attacker, each once")
        for attacker in self.attackers:
            self.attack(attacker)

    @classmethod
    def quick(cls, **overrides: object) -> EvalConfig:
        sizes: dict[str, object] = {"images": 2, "restarts": 2, "iterations": 40,
                                    "local_samples": 16}
        return cls(**{**sizes, **overrides})  # type: ignore[arg-type]

    def attack(self, attacker: Attacker) -> AttackConfig:
        # Plain DLG has no prior, whatever weight the others get.
        weight = None if attacker is Attacker.DLG else self.tv_weight
        return AttackConfig(attacker=attacker, restarts=self.restarts,
                            iterations=self.iterations, seed=self.seed, tv_weight=weight)


@dataclass(frozen=True, eq=False)
class Victim:
    """A victim image (C, H, W), its update and its client's sensitivity map."""

    name: str
    label: int
    image: FloatArray
    gradient: FloatArray
    sensitivity: FloatArray


@dataclass(frozen=True, eq=False)
class ImageOutcome:
    """One attacker against one victim under one setting: its best restart by SSIM
    (scores by metric name; None where the image is too small for the metric), the
    SSIM of the attacker's own pick, and the best restart's convergence evidence."""

    hidden_fraction: float
    scores: dict[str, float | None]
    attacker_ssim: float
    relative_loss: float
    iterations: int
    stop: StopReason
    label_inferred: bool
    image: FloatArray

    @property
    def ssim(self) -> float:
        return float(self.scores["ssim"] or 0.0)


@dataclass(frozen=True, eq=False)
class SettingOutcome:
    """One setting and one attacker (or the worst case over attackers), per image."""

    setting: Setting
    attacker: str  # an Attacker's value, or "worst case"
    images: tuple[ImageOutcome, ...]
    seconds: float

    @property
    def ssim(self) -> tuple[float, ...]:
        return tuple(outcome.ssim for outcome in self.images)


@dataclass(frozen=True, eq=False)
class Evaluation:
    config: EvalConfig
    parameters: int
    victims: tuple[Victim, ...]
    outcomes: tuple[SettingOutcome, ...]
    seconds: float


def dlg_model(seed: int, *, in_channels: int = 1, classes: int = 10,
              image_size: int = 16) -> nn.Module:
    """The LeNet with every weight and bias from uniform(-0.5, 0.5), as in DLG's code."""
    model = build_model(MODEL, image_size=image_size, seed=seed, in_channels=in_channels,
                        classes=classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.rand(parameter.shape, generator=generator) - 0.5)
    return model


def score_image(reconstruction: FloatArray, truth: FloatArray) -> dict[str, float | None]:
    """Every metric of :data:`image_metrics.METRICS`; None where the image is too small."""
    scores: dict[str, float | None] = {}
    for name in image_metrics.METRICS:
        try:
            scores[name] = float(getattr(image_metrics, name)(truth, reconstruction))
        except ParameterError:
            scores[name] = None  # e.g. VIF below 17 pixels
    return scores


def _digit_victims(config: EvalConfig) -> tuple[list[tuple[str, torch.Tensor, int]],
                                                ClientData]:
    data = load_digits(image_size=config.shape.image_size, seed=config.seed)
    # The first test image of each of *images* classes, classes in a seeded order.
    classes = np.random.default_rng(config.seed).permutation(10)[:config.images]
    labels = data.test.labels.numpy()
    chosen = [int(np.flatnonzero(labels == label)[0]) for label in classes]
    victims = [(f"test #{i}", data.test.images[i], int(labels[i])) for i in chosen]
    return victims, data.train


def _photo_victims(config: EvalConfig) -> tuple[list[tuple[str, torch.Tensor, int]],
                                                ClientData]:
    data = load_photos(image_size=config.shape.image_size, classes=config.shape.classes)
    victims = [(f"{PHOTOS[i % len(PHOTOS)]} #{i // len(PHOTOS)}", data.images[i],
                int(data.labels[i])) for i in range(config.images)]
    rest = np.arange(config.images, len(data), dtype=np.int64)
    return victims, data.subset(rest)


def _victims(model: nn.Module, config: EvalConfig) -> tuple[Victim, ...]:
    chosen, pool = (_digit_victims if config.dataset == "digits" else _photo_victims)(config)
    rng = np.random.default_rng(config.seed)
    count = min(config.local_samples - 1, len(pool))
    others = rng.choice(len(pool), size=count, replace=False)
    local = pool.subset(np.sort(others).astype(np.int64))
    victims = []
    for name, image, label in chosen:
        images = torch.cat([image.unsqueeze(0), local.images])
        labels = torch.cat([torch.tensor([label]), local.labels])
        victims.append(Victim(name, label, image.double().numpy(),
                              victim_gradient(model, image, label),
                              sensitivity_map(model, images, labels)))
    return tuple(victims)


def mask_seed(seed: int, setting: Setting, number: int) -> int:
    """The random-mask seed of victim *number* under *setting*: a distinct mask per
    (fraction, image), reproducible from *seed* and the same wherever the setting stands
    in the list."""
    return int(np.random.SeedSequence(
        [seed, round(setting.fraction * 10**9), number]).generate_state(1)[0])


def _mask(setting: Setting, model: nn.Module, victim: Victim, seed: int
          ) -> EncryptionMask | None:
    return setting_mask(setting, model, victim.sensitivity, seed)


def setting_mask(setting: Setting, model: nn.Module, sensitivity: FloatArray, seed: int
                 ) -> EncryptionMask | None:
    """The mask *setting* hides on *model* (None: nothing hidden); top-p masks from the
    *sensitivity* map, random ones from *seed*."""
    if setting.kind == "none":
        return None
    if setting.kind == "random":
        return select_random_fraction(sensitivity.size, setting.fraction, seed=seed)
    layers = first_and_last_layers(layout_of(model)) if setting.kind == "top+layers" else ()
    return select_top_fraction(sensitivity, setting.fraction, always_include=layers)


def _image_outcome(result: AttackResult, victim: Victim, mask: EncryptionMask | None
                   ) -> ImageOutcome:
    best = result.best
    return ImageOutcome(0.0 if mask is None else mask.fraction,
                        score_image(best.image, victim.image),
                        float(result.attacker_choice.ssim or 0.0), best.relative_loss,
                        best.iterations, best.stop, result.label_source == "inferred",
                        best.image)


def _run_setting(setting: Setting, model: nn.Module,
                 victims: Sequence[Victim], config: EvalConfig) -> list[SettingOutcome]:
    shape = config.shape
    image_shape = (shape.channels, shape.image_size, shape.image_size)
    results: dict[Attacker, list[ImageOutcome]] = {a: [] for a in config.attackers}
    seconds = dict.fromkeys(config.attackers, 0.0)
    for number, victim in enumerate(victims):
        mask = _mask(setting, model, victim, mask_seed(config.seed, setting, number))
        for attacker in config.attackers:
            result = invert_gradient(model, victim.gradient, image_shape=image_shape,
                                     hidden=mask, config=config.attack(attacker),
                                     true_image=victim.image)
            results[attacker].append(_image_outcome(result, victim, mask))
            seconds[attacker] += result.seconds
    return [SettingOutcome(setting, attacker.value, tuple(results[attacker]), seconds[attacker])
            for attacker in config.attackers]


def worst_case(outcomes: Sequence[SettingOutcome]) -> SettingOutcome:
    """Per image, the attacker with the highest SSIM among *outcomes* (one setting)."""
    if not outcomes or len({o.setting for o in outcomes}) != 1:
        raise ParameterError("worst_case needs the outcomes of one setting")
    images = tuple(max(column, key=lambda o: o.ssim)
                   for column in zip(*(o.images for o in outcomes), strict=True))
    return SettingOutcome(outcomes[0].setting, "worst case", images,
                          sum(o.seconds for o in outcomes))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _report(progress: Progress | None, row: SettingOutcome, elapsed: float) -> None:
    if progress is None:
        return
    losses = [o.relative_loss for o in row.images]
    limits = sum(o.stop == "limit" for o in row.images)
    progress(f"[attack] {row.setting.name:<28} {row.attacker:<10} mean SSIM "
             f"{np.mean(row.ssim):.3f}  rel. loss {max(losses):.1e}  limit "
             f"{limits}/{len(losses)}  {row.seconds:6.1f} s (total {elapsed:.1f} s)")


def parse_setting(text: str) -> Setting:
    """A setting from its short form: ``none``, ``top-P``, ``top-P+layers`` (the paper's
    recipe: top P plus the first and last layers) or ``random-P``, P a fraction."""
    kind, _, rest = text.partition("-")
    layers = rest.endswith("+layers")
    try:
        fraction = float(rest.removesuffix("+layers")) if rest else 0.0
    except ValueError:
        fraction = math.nan
    known = (kind == "none" and not rest) or (
        bool(rest) and (kind == "top" or (kind == "random" and not layers)))
    if not known or not 0.0 <= fraction <= 1.0:
        raise ParameterError(f"setting {text!r} is not none, top-P, top-P+layers or random-P "
                             "with P in [0, 1]")
    if kind == "none":
        return Setting("none", "none")
    if layers:
        return Setting(f"top-{fraction:g} + first/last layers", "top+layers", fraction)
    return Setting(f"{kind}-{fraction:g}", "top" if kind == "top" else "random", fraction)


def evaluate(config: EvalConfig | None = None, progress: Progress | None = _stderr
             ) -> Evaluation:
    """Run every attacker against every setting and victim; *progress* gets one line per
    (setting, attacker)."""
    config = EvalConfig() if config is None else config
    start = time.perf_counter()
    shape = config.shape
    model = dlg_model(config.seed, in_channels=shape.channels, classes=shape.classes,
                      image_size=shape.image_size)
    with torch_threads(1):  # see AttackConfig.threads
        victims = _victims(model, config)
    if progress is not None:
        progress(f"[attack] {len(victims)} victims, LeNet {shape.channels}x{shape.image_size}"
                 f"x{shape.image_size}, {parameter_count(model):,} parameters, attackers "
                 f"{', '.join(a.value for a in config.attackers)}")
    outcomes: list[SettingOutcome] = []
    for setting in config.settings:
        rows = _run_setting(setting, model, victims, config)
        if len(rows) > 1:
            rows.append(worst_case(rows))
        outcomes.extend(rows)
        for row in rows:
            _report(progress, row, time.perf_counter() - start)
    return Evaluation(config, parameter_count(model), victims, tuple(outcomes),
                      time.perf_counter() - start)


def _settings(text: str) -> tuple[Setting, ...]:
    try:
        return tuple(parse_setting(part.strip()) for part in text.split(","))
    except ParameterError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _attackers(text: str) -> tuple[Attacker, ...]:
    if text == "all":
        return tuple(Attacker)
    try:
        return (Attacker(text),)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an attacker; choose {', '.join(a.value for a in Attacker)} "
            "or all") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``threshold-fl attack``: run the evaluation, print the table, write the files;
    ``threshold-fl attack sweep ...``: the Figure-9 sweep (:mod:`privacy_sweep`)."""
    from threshold_fl.app.privacy_report import markdown_table, write_outputs

    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["sweep"]:
        from threshold_fl.app.privacy_sweep import main as sweep_main

        return sweep_main(arguments[1:])

    parser = argparse.ArgumentParser(
        prog="threshold-fl attack",
        description="Gradient-inversion attacks (DLG, DLG with a TV prior, Inverting "
                    "Gradients) against selective parameter encryption. 'threshold-fl "
                    "attack sweep --help': the resumable Figure-9 sweep.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--attacker", type=_attackers, default=(Attacker.DLG,),
                        metavar="{dlg,dlg-tv,ig,all}",
                        help="which attack; all runs the three and reports the worst case "
                             "(default dlg)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits",
                        help="digits: 1x16x16 grey, 10 classes; photos: 3x32x32 colour "
                             "patches, 100 classes (the paper's CIFAR-100 shape)")
    parser.add_argument("--image-size", type=bounded(int, 8, 64),
                        help="image side (default: 16 digits, 32 photos)")
    parser.add_argument("--classes", type=bounded(int, 2, 1000),
                        help="LeNet outputs (default: 10 digits, 100 photos)")
    parser.add_argument("--tv-weight", type=bounded(float, 0.0),
                        help="total-variation weight of dlg-tv and ig (default: each "
                             "attacker's own)")
    parser.add_argument("--settings", type=_settings, default=DEFAULT_SETTINGS,
                        metavar="S,S,...",
                        help="comma-separated: none, top-P, top-P+layers, random-P "
                             "(default: none, top 0.05/0.1/0.3, top-0.1+layers, random "
                             "0.05/0.1/0.3/0.5)")
    parser.add_argument("--images", type=bounded(int, 1, DATASETS["photos"].max_images),
                        help="victim images (default 4, quick 2; digits at most 10)")
    parser.add_argument("--restarts", type=bounded(int, 1, 1000),
                        help="random restarts per attack (default 10, quick 2)")
    parser.add_argument("--iterations", type=bounded(int, 1, 100_000),
                        help="optimiser iterations per restart (default 200, quick 40)")
    parser.add_argument("--seed", type=bounded(int, 0, 2**32 - 1), default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args(arguments)
    given = {name: getattr(args, name) for name in
             ("images", "restarts", "iterations", "image_size", "classes", "tv_weight")}
    options = {name: value for name, value in given.items() if value is not None}
    try:
        config = (EvalConfig.quick if args.quick else EvalConfig)(
            seed=args.seed, attackers=args.attacker, dataset=args.dataset,
            settings=args.settings, **options)
    except ParameterError as error:
        parser.error(str(error))
    evaluation = evaluate(config)
    paths = write_outputs(evaluation, args.out)
    print(markdown_table(evaluation))
    print(f"total {evaluation.seconds:.1f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0
