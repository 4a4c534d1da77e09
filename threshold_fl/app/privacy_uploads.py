"""``threshold-fl attack-upload``: attack the update the protocol really sends, and
compare the defences (selective encryption, plus local DP, full encryption).

Set-up.  Each victim client holds ``count`` images (``--dataset photos``: 3x32x32
patches of real photographs, 100 classes; ``digits``: 1x16x16 test digits, 10 classes,
distinct labels) and trains one round exactly as a protocol client does
(:class:`threshold_fl.ml.learner.LocalLearner`: :func:`train_local` with the plan's
epochs, batch size, learning rate and momentum, then local-DP noise on the plaintext
coordinates if the defence has it).  The model is DLG's LeNet with PyTorch's default
initialisation, i.e. the model a federation really starts from (``initial``), or that
model after ``pretrain_epochs`` of the same SGD on the digits training set, in the
dataset's channels and size (``trained``; its test accuracy is reported).

Masks are agreed once, at the initial model, as in the protocol: top-p from the
sensitivity map of the initial model over ``sensitivity_samples`` images that include
the victims (the aggregate of the clients' maps), or uniformly random.  The attacker
(:func:`threshold_fl.ml.fedavg_attack.invert_upload`) sees the visible coordinates of
the upload, knows the start model, the mask, the plan, the sample count and the clip
bound, and runs every attacker of :class:`Attacker`; a ``worst case`` row takes, per
client, the attacker with the highest mean SSIM.  Full encryption leaves nothing
visible: the attack has no input at all, so its row states that and is not "measured".

The tables and JSON are written by :mod:`threshold_fl.app.privacy_uploads_report`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from threshold_fl._checks import bounded, checked_int
from threshold_fl.app.privacy_eval import (
    DATASETS,
    DatasetName,
    Setting,
    parse_setting,
    setting_mask,
)
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml.attack import AttackConfig, Attacker, StopReason, torch_threads
from threshold_fl.ml.data import ClientData, load_digits
from threshold_fl.ml.fedavg_attack import UploadAttack, UploadThreat, invert_upload
from threshold_fl.ml.flatten import flatten_state
from threshold_fl.ml.learner import LocalLearner, round_seed
from threshold_fl.ml.mask import EncryptionMask
from threshold_fl.ml.models import build_model
from threshold_fl.ml.photos import load_photos
from threshold_fl.ml.privacy import LaplaceNoise, privacy_budget
from threshold_fl.ml.sensitivity import sensitivity_map
from threshold_fl.ml.training import LocalTraining, evaluate, train_local

__all__ = [
    "CHECKPOINTS", "ClientOutcome", "Defence", "UploadEvalConfig", "UploadEvaluation",
    "UploadRow", "evaluate_uploads", "main",
]

Checkpoint: TypeAlias = Literal["initial", "trained"]
Progress: TypeAlias = Callable[[str], None]

CHECKPOINTS: tuple[Checkpoint, ...] = ("initial", "trained")
DEFAULT_SETTINGS: tuple[Setting, ...] = tuple(
    parse_setting(s) for s in ("none", "top-0.1", "top-0.1+layers", "random-0.1"))
#: The protocol's default mask (demo, manifest and train: top 10 % plus the first and last
#: layers), which is also the paper's recipe.
DEFAULT_MASK = parse_setting("top-0.1+layers")
FULL = Setting("full encryption", "top", 1.0)
DEFAULT_OUT = Path("privacy-uploads")


@dataclass(frozen=True)
class Defence:
    """A mask setting, optionally with local-DP noise on its plaintext coordinates."""

    setting: Setting
    noise: LaplaceNoise | None = None

    @property
    def name(self) -> str:
        if self.noise is None:
            return self.setting.name
        return f"{self.setting.name} + DP b={self.noise.scale:g} C={self.noise.clip:g}"

    @property
    def full(self) -> bool:
        return self.setting.kind != "random" and self.setting.fraction >= 1.0


@dataclass(frozen=True)
class UploadEvalConfig:
    """Sizes of the evaluation; :meth:`quick` is the CI preset.

    *plan* defaults to ``threshold-fl train``'s (2 epochs, batch 32, lr 0.05, momentum
    0.9); with ``count`` <= 32 images one batch holds them all.  *dp_scales* are the
    Laplace scales b applied on top of *dp_setting* with clip bound *dp_clip*."""

    dataset: DatasetName = "photos"
    clients: int = 2
    count: int = 2
    plan: LocalTraining = field(default_factory=lambda: LocalTraining(epochs=2,
                                                                      batch_size=32))
    checkpoints: tuple[Checkpoint, ...] = CHECKPOINTS
    pretrain_epochs: int = 8
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS
    dp_setting: Setting = DEFAULT_MASK
    dp_scales: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    dp_clip: float = 0.01
    attackers: tuple[Attacker, ...] = tuple(Attacker)
    restarts: int = 2
    iterations: int = 300
    seed: int = 0
    sensitivity_samples: int = 16
    defences: tuple[Defence, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ParameterError(f"dataset must be one of {sorted(DATASETS)}, "
                                 f"got {self.dataset!r}")
        checked_int(self.clients, "clients", 1)
        checked_int(self.count, "count", 1)
        if self.clients * self.count > DATASETS[self.dataset].max_images:
            raise ParameterError(
                f"{self.clients} clients x {self.count} images exceed the "
                f"{DATASETS[self.dataset].max_images} distinct {self.dataset} victims")
        for name in ("pretrain_epochs", "restarts", "iterations"):
            checked_int(getattr(self, name), name, 1)
        checked_int(self.seed, "seed", 0, 2**32 - 1)
        checked_int(self.sensitivity_samples, "sensitivity_samples", self.clients * self.count)
        if not self.checkpoints or not set(self.checkpoints) <= set(CHECKPOINTS):
            raise ParameterError(f"checkpoints must be some of {CHECKPOINTS}")
        if not self.attackers or len(set(self.attackers)) != len(self.attackers):
            raise ParameterError("attackers must name at least one attacker, each once")
        defences = [Defence(s) for s in self.settings]
        defences += [Defence(self.dp_setting, LaplaceNoise(b, self.dp_clip))
                     for b in self.dp_scales]
        object.__setattr__(self, "defences", (*defences, Defence(FULL)))

    @classmethod
    def quick(cls, **overrides: object) -> UploadEvalConfig:
        sizes: dict[str, object] = {
            "clients": 1, "count": 1, "plan": LocalTraining(epochs=1, batch_size=32),
            "checkpoints": ("initial",), "settings": (DEFAULT_SETTINGS[0], DEFAULT_MASK),
            "dp_scales": (1e-3,), "restarts": 1,
            "iterations": 60}
        return cls(**{**sizes, **overrides})  # type: ignore[arg-type]

    def attack(self, attacker: Attacker) -> AttackConfig:
        return AttackConfig(attacker=attacker, restarts=self.restarts,
                            iterations=self.iterations, seed=self.seed)


@dataclass(frozen=True, eq=False)
class ClientOutcome:
    """One attacker against one client's upload: its best restart by mean SSIM (SSIM per
    matched image, reconstructions), the attacker's own pick's mean SSIM, the best
    restart's convergence evidence, and how many labels it got right."""

    ssim: tuple[float, ...]
    attacker_ssim: float
    relative_loss: float
    iterations: int
    stop: StopReason
    labels_right: int
    labels_inferred: bool
    images: FloatArray

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))


@dataclass(frozen=True, eq=False)
class UploadRow:
    """One checkpoint, defence and attacker (or ``worst case``), per client; no clients
    when nothing is visible (full encryption)."""

    checkpoint: Checkpoint
    defence: Defence
    attacker: str
    hidden_fraction: float
    epsilon: float | None  # Laplace epsilon per round of the plaintext part, this model
    clients: tuple[ClientOutcome, ...]
    seconds: float

    @property
    def mean_ssim(self) -> float | None:
        return float(np.mean([c.mean_ssim for c in self.clients])) if self.clients else None


@dataclass(frozen=True, eq=False)
class Victims:
    """Every client's images (count, C, H, W) and labels, and the sensitivity pool."""

    clients: tuple[ClientData, ...]
    pool: ClientData


@dataclass(frozen=True, eq=False)
class UploadEvaluation:
    config: UploadEvalConfig
    parameters: int
    trained_accuracy: float | None
    victims: Victims
    rows: tuple[UploadRow, ...]
    seconds: float


def _shape(config: UploadEvalConfig) -> tuple[int, int, int]:
    base = DATASETS[config.dataset]
    return base.channels, base.image_size, base.classes


def _victims(config: UploadEvalConfig) -> Victims:
    _, size, classes = _shape(config)
    wanted = config.clients * config.count
    if config.dataset == "photos":
        # Patches 0..7 come from eight different photographs (load_photos).
        data = load_photos(image_size=size, classes=classes)
        chosen = data.subset(np.arange(wanted))
        rest: npt.NDArray[np.int64] = np.arange(wanted, len(data))
    else:
        data = load_digits(image_size=size, seed=config.seed).test
        labels = data.labels.numpy()
        order = np.random.default_rng(config.seed).permutation(classes)[:wanted]
        first = np.array([np.flatnonzero(labels == c)[0] for c in order], dtype=np.int64)
        chosen = data.subset(first)
        rest = np.setdiff1d(np.arange(len(data)), first)
    extra = data.subset(rest[:config.sensitivity_samples - wanted].astype(np.int64))
    clients = tuple(chosen.subset(np.arange(k * config.count, (k + 1) * config.count))
                    for k in range(config.clients))
    pool = ClientData(torch.cat([chosen.images, extra.images]),
                      torch.cat([chosen.labels, extra.labels]))
    return Victims(clients, pool)


def _checkpoint(config: UploadEvalConfig, name: Checkpoint) -> tuple[nn.Module, float | None]:
    """The start model of the attacked round, and its test accuracy when trained."""
    channels, size, classes = _shape(config)
    model = build_model("lenet", image_size=size, seed=config.seed, in_channels=channels,
                        classes=classes)
    if name == "initial":
        return model, None
    digits = load_digits(image_size=size, seed=config.seed)

    def coloured(part: ClientData) -> ClientData:
        return ClientData(part.images.expand(-1, channels, -1, -1).contiguous(), part.labels)

    plan = replace(config.plan, epochs=config.pretrain_epochs)
    train_local(model, coloured(digits.train), plan, seed=config.seed)
    return model, evaluate(model, coloured(digits.test)).accuracy


def _upload(model: nn.Module, data: ClientData, config: UploadEvalConfig, defence: Defence,
            mask: EncryptionMask, client_seed: int) -> FloatArray:
    """The update (uploaded - start) of one protocol round by a real learner."""
    start, _ = flatten_state(model)
    learner = LocalLearner(copy.deepcopy(model), data, config.plan, seed=client_seed,
                           noise=defence.noise)  # noise from fresh OS entropy
    uploaded = learner.train(1, start, mask)
    update: FloatArray = uploaded - start
    return update


def _outcome(result: UploadAttack, truth: ClientData) -> ClientOutcome:
    best = result.best
    right = sum(int(a == b) for a, b in zip(best.labels, truth.labels.tolist(), strict=True))
    return ClientOutcome(best.ssim or (), result.attacker_choice.mean_ssim,
                         best.relative_loss, best.iterations, best.stop, right,
                         result.labels_inferred, best.images)


def _attack_defence(model: nn.Module, checkpoint: Checkpoint, defence: Defence,
                    mask: EncryptionMask, victims: Victims, config: UploadEvalConfig
                    ) -> list[UploadRow]:
    epsilon = (None if defence.noise is None
               else privacy_budget(defence.noise, mask).epsilon_per_round)
    if defence.full:
        return [UploadRow(checkpoint, defence, "none: nothing visible", 1.0, epsilon, (), 0.0)]
    shape = _shape(config)
    image_shape = (shape[0], shape[1], shape[1])
    per: dict[Attacker, list[ClientOutcome]] = {a: [] for a in config.attackers}
    seconds = dict.fromkeys(config.attackers, 0.0)
    for number, data in enumerate(victims.clients):
        client_seed = config.seed * 100 + number
        update = _upload(model, data, config, defence, mask, client_seed)
        known_order = config.plan.batch_size < config.count
        threat = UploadThreat(config.plan, config.count,
                              seed=round_seed(client_seed, 1) if known_order else None,
                              clip=None if defence.noise is None else defence.noise.clip)
        for attacker in config.attackers:
            result = invert_upload(model, update, threat, image_shape=image_shape,
                                   hidden=mask if mask.count else None,
                                   config=config.attack(attacker),
                                   true_images=data.images.double().numpy())
            per[attacker].append(_outcome(result, data))
            seconds[attacker] += result.seconds
    rows = [UploadRow(checkpoint, defence, a.value, mask.fraction, epsilon, tuple(per[a]),
                      seconds[a]) for a in config.attackers]
    if len(rows) > 1:
        worst = tuple(max(column, key=lambda c: c.mean_ssim)
                      for column in zip(*(r.clients for r in rows), strict=True))
        rows.append(replace(rows[0], attacker="worst case", clients=worst,
                            seconds=sum(r.seconds for r in rows)))
    return rows


def _masks(model: nn.Module, victims: Victims, config: UploadEvalConfig
           ) -> dict[Setting, EncryptionMask]:
    """Every defence's mask, agreed once at the initial model (see the module doc)."""
    sensitivity = sensitivity_map(model, victims.pool.images, victims.pool.labels)
    length = sensitivity.size
    masks = {}
    for defence in config.defences:
        mask = (EncryptionMask.full(length) if defence.full
                else setting_mask(defence.setting, model, sensitivity, config.seed))
        masks[defence.setting] = EncryptionMask.empty(length) if mask is None else mask
    return masks


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def evaluate_uploads(config: UploadEvalConfig | None = None,
                     progress: Progress | None = _stderr) -> UploadEvaluation:
    """Every attacker against every (checkpoint, defence, client)."""
    config = UploadEvalConfig() if config is None else config
    started = time.perf_counter()
    rows: list[UploadRow] = []
    accuracy = None
    with torch_threads(1):  # see AttackConfig.threads
        victims = _victims(config)
        initial, _ = _checkpoint(config, "initial")
        masks = _masks(initial, victims, config)
        for checkpoint in config.checkpoints:
            model, trained = _checkpoint(config, checkpoint)
            accuracy = trained if trained is not None else accuracy
            for defence in config.defences:
                new = _attack_defence(model, checkpoint, defence, masks[defence.setting],
                                      victims, config)
                rows += new
                if progress is not None:
                    for row in new:
                        progress(_line(row, time.perf_counter() - started))
    parameters = sum(p.numel() for p in initial.parameters())
    return UploadEvaluation(config, parameters, accuracy, victims, tuple(rows),
                            time.perf_counter() - started)


def _line(row: UploadRow, elapsed: float) -> str:
    ssim = "n/a" if row.mean_ssim is None else f"{row.mean_ssim:.3f}"
    loss = max((c.relative_loss for c in row.clients), default=float("nan"))
    return (f"[attack-upload] {row.checkpoint:<7} {row.defence.name:<40} {row.attacker:<10} "
            f"mean SSIM {ssim}  rel. loss {loss:.1e}  {row.seconds:6.1f} s "
            f"(total {elapsed:.0f} s)")


def _floats(text: str) -> tuple[float, ...]:
    if text == "none":
        return ()
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or not all(v > 0 and np.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "positive numbers, e.g. 1e-4,1e-3")
    return values


def _parser() -> argparse.ArgumentParser:
    from threshold_fl.app.privacy_eval import _attackers, _settings

    parser = argparse.ArgumentParser(
        prog="threshold-fl attack-upload",
        description="FedAvg-aware gradient inversion of the model update a client really "
                    "uploads (local epochs, batches, momentum), under selective encryption, "
                    "local DP and full encryption.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="photos")
    parser.add_argument("--attacker", type=_attackers, default=tuple(Attacker),
                        metavar="{dlg,dlg-tv,ig,all}", help="default all")
    parser.add_argument("--settings", type=_settings, metavar="S,S,...",
                        help="masks without DP (default: none, top-0.1, top-0.1+layers, "
                             "random-0.1)")
    parser.add_argument("--dp-scales", type=_floats, metavar="B,B,...",
                        help="Laplace scales on top of top-0.1+layers, or none (default "
                             "1e-5,1e-4,1e-3,1e-2)")
    parser.add_argument("--dp-clip", type=bounded(float, 1e-9), help="clip bound C "
                        "(default 0.01)")
    parser.add_argument("--clients", type=bounded(int, 1, 32), help="victim clients "
                        "(default 2, quick 1)")
    parser.add_argument("--count", type=bounded(int, 1, 32), help="images per client "
                        "(default 2, quick 1)")
    parser.add_argument("--epochs", type=bounded(int, 1, 100), help="local epochs (default 2, "
                        "quick 1)")
    parser.add_argument("--batch-size", type=bounded(int, 1, 4096), help="default 32")
    parser.add_argument("--checkpoints", choices=("initial", "trained", "both"),
                        help="default both, quick initial")
    parser.add_argument("--restarts", type=bounded(int, 1, 1000))
    parser.add_argument("--iterations", type=bounded(int, 1, 100_000))
    parser.add_argument("--train-reports", type=Path, nargs="*", default=[],
                        help="threshold-fl train --json files whose accuracy and bytes per "
                             "round join the defences table")
    parser.add_argument("--seed", type=bounded(int, 0, 2**32 - 1), default=0)
    parser.add_argument("--quick", action="store_true", help="the small CI preset")
    return parser


def _config(args: argparse.Namespace) -> UploadEvalConfig:
    options: dict[str, object] = {name: getattr(args, name) for name in (
        "clients", "count", "restarts", "iterations", "settings", "dp_scales", "dp_clip")
        if getattr(args, name) is not None}
    base = UploadEvalConfig.quick() if args.quick else UploadEvalConfig()
    if args.epochs is not None or args.batch_size is not None:
        options["plan"] = replace(base.plan, epochs=args.epochs or base.plan.epochs,
                                  batch_size=args.batch_size or base.plan.batch_size)
    if args.checkpoints is not None:
        options["checkpoints"] = (CHECKPOINTS if args.checkpoints == "both"
                                  else (args.checkpoints,))
    options.update(dataset=args.dataset, attackers=args.attacker, seed=args.seed)
    return (UploadEvalConfig.quick(**options) if args.quick
            else UploadEvalConfig(**options))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """``threshold-fl attack-upload``: run, print the tables, write the files."""
    from threshold_fl.app.privacy_uploads_report import (
        defences_table,
        read_train_reports,
        uploads_table,
        write_outputs,
    )

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args)
    except ParameterError as error:
        parser.error(str(error))
    evaluation = evaluate_uploads(config)
    try:  # read after the attacks, so a long run may start before its training runs end
        reports = read_train_reports(args.train_reports)
    except ParameterError as error:
        print(f"threshold-fl attack-upload: {error}; the defences table is written "
              "without training figures", file=sys.stderr)
        reports = ()
    paths = write_outputs(evaluation, reports, args.out)
    print(uploads_table(evaluation))
    print(defences_table(evaluation, reports))
    print(f"total {evaluation.seconds:.1f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0
