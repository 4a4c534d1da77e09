"""The Figure-9 sweep: every setting x attacker x victim x restart, resumable.

``threshold-fl attack sweep --out DIR`` runs the attackers of
:mod:`threshold_fl.ml.attack` (restarts batched by
:func:`threshold_fl.ml.batched_attack.invert_gradient_batched`) against every protection
setting and victim of :mod:`threshold_fl.app.privacy_eval`, in the paper's shape by
default (LeNet 3x32x32, 100 classes, real photo patches).

Files in DIR:

* ``parameters.json``: what the sweep is (sizes, settings, attackers, iterations,
  seed), written first.  A rerun on DIR must ask for the same; otherwise it stops with
  an error naming each difference, so results from different sweeps never mix.
* ``results.jsonl``: one JSON line per (setting, attacker, image, restart), appended
  (and flushed to disk) as each (setting, attacker, image) finishes.  A rerun skips
  what is there; a last line cut short by a kill is dropped and redone.
* the report (:mod:`threshold_fl.app.sweep_report`): ``figure9.md``, ``figure9.png``,
  ``reconstructions.png``, written after every run and by ``--report-only``.

Work runs image by image (every setting and attacker for image 0, then image 1, ...),
so a sweep stopped early holds complete curves for its first images.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch import nn

from threshold_fl._checks import bounded, checked_int
from threshold_fl.app.privacy_eval import (
    DATASETS,
    EvalConfig,
    Setting,
    Victim,
    _attackers,
    _settings,
    _victims,
    dlg_model,
    mask_seed,
    parse_setting,
    score_image,
    setting_mask,
)
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError
from threshold_fl.ml.attack import AttackConfig, Attacker, AttackResult, torch_threads
from threshold_fl.ml.batched_attack import invert_gradient_batched

__all__ = ["FIGURE9_SETTINGS", "QUICK", "SweepConfig", "load_results", "main", "run_sweep"]

Progress = Callable[[str], None]

PARAMETERS = "parameters.json"
RESULTS = "results.jsonl"
FORMAT = 1  # bump when the attacks or the lines change: old folders are then refused

#: Issue 17's Figure 9: top-s sensitivity, random fractions and the paper's recipe,
#: with no protection as the baseline.
FIGURE9_SETTINGS: tuple[Setting, ...] = tuple(parse_setting(text) for text in (
    "none", "top-0.01", "top-0.05", "top-0.1", "top-0.2", "top-0.3", "top-0.5",
    "top-0.1+layers", "random-0.1", "random-0.2", "random-0.425", "random-0.5",
    "random-0.7", "random-0.9"))


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the evaluation's sizes plus per-attacker iterations and IG's step.

    *lbfgs_iterations* is for ``dlg`` and ``dlg-tv``, *ig_iterations* and
    *ig_learning_rate* for ``ig``; TV weights come from the evaluation's ``tv_weight``.
    """

    evaluation: EvalConfig
    lbfgs_iterations: int = 1000
    ig_iterations: int = 2000
    ig_learning_rate: float = 0.1

    def __post_init__(self) -> None:
        checked_int(self.lbfgs_iterations, "lbfgs_iterations", 1, 100_000)
        checked_int(self.ig_iterations, "ig_iterations", 1, 100_000)
        for attacker in self.evaluation.attackers:
            self.attack(attacker)  # AttackConfig checks the rest

    def attack(self, attacker: Attacker) -> AttackConfig:
        base = self.evaluation.attack(attacker)
        if attacker is Attacker.IG:
            return AttackConfig(attacker=attacker, restarts=base.restarts, seed=base.seed,
                                iterations=self.ig_iterations, tv_weight=base.tv_weight,
                                learning_rate=self.ig_learning_rate)
        return AttackConfig(attacker=attacker, restarts=base.restarts, seed=base.seed,
                            iterations=self.lbfgs_iterations, tv_weight=base.tv_weight)

    def parameters(self) -> dict[str, object]:
        """What makes two runs the same sweep, as JSON-ready values."""
        config = self.evaluation
        shape = config.shape
        return {
            "format": FORMAT, "dataset": config.dataset, "image_size": shape.image_size,
            "classes": shape.classes, "images": config.images, "restarts": config.restarts,
            "seed": config.seed, "local_samples": config.local_samples,
            "settings": [asdict(s) for s in config.settings],
            "attackers": {a.value: _attack_parameters(self.attack(a))
                          for a in config.attackers},
        }


def _attack_parameters(config: AttackConfig) -> dict[str, object]:
    return {"iterations": config.iterations, "tv_weight": config.prior_weight,
            "learning_rate": config.learning_rate, "history_size": config.history_size,
            "infer_label": config.infer_label}


#: The CI preset: 16-pixel patches, 2 images x 2 restarts, three settings.
QUICK = {"image_size": 16, "images": 2, "restarts": 2, "local_samples": 16,
         "settings": tuple(parse_setting(t) for t in ("none", "top-0.1", "random-0.1")),
         "lbfgs_iterations": 80, "ig_iterations": 100}


@dataclass(frozen=True)
class _Group:
    """One batched attack: a setting, an attacker and a victim, all its restarts."""

    setting: Setting
    attacker: Attacker
    number: int

    def key(self) -> tuple[str, str, int]:
        return self.setting.name, self.attacker.value, self.number


def _groups(config: EvalConfig) -> Iterator[_Group]:
    for number in range(config.images):
        for setting in config.settings:
            for attacker in config.attackers:
                yield _Group(setting, attacker, number)


def _check_parameters(out: Path, wanted: dict[str, object]) -> None:
    path = out / PARAMETERS
    if not path.exists():
        if (out / RESULTS).exists():
            raise ParameterError(f"{out} holds {RESULTS} but no {PARAMETERS}: it is not a "
                                 "sweep folder this command wrote; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        _replace_text(path, json.dumps(wanted, indent=2) + "\n")
        return
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ParameterError(f"cannot read {path}: {error}; remove the folder or choose "
                             "another --out") from None
    if not isinstance(found, dict):
        raise ParameterError(f"{path} is not a JSON object; choose another --out")
    differences = [f"{key}: the folder has {found.get(key)!r}, this run asks "
                   f"{value!r}" for key, value in wanted.items() if found.get(key) != value]
    if differences:
        raise ParameterError(f"{out} was made by a sweep with other parameters ("
                             + "; ".join(differences) + "); rerun with the same options "
                             "to resume it, or choose another --out")


def load_results(out: Path) -> list[dict[str, object]]:
    """The result lines of *out*; a last line cut short (a kill, or a write under way) is
    left out, any other unreadable line is an error naming it.  Reads only, so a report
    can be made while the sweep runs."""
    path = out / RESULTS
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was interrupted
                break
            raise ParameterError(f"{path} line {number} is not JSON; the file was edited or "
                                 "damaged: remove that line to redo its cell") from None
        if not isinstance(record, dict):
            raise ParameterError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records


def _key(record: dict[str, object]) -> tuple[str, str, int]:
    try:
        return str(record["setting"]), str(record["attacker"]), int(str(record["image"]))
    except (KeyError, ValueError):
        raise ParameterError(f"{RESULTS} holds a line without setting, attacker and image: "
                             f"{str(record)[:80]}; remove it to redo its cell") from None


def _done(records: Sequence[dict[str, object]], restarts: int) -> set[tuple[str, str, int]]:
    seen: dict[tuple[str, str, int], set[object]] = {}
    for record in records:
        seen.setdefault(_key(record), set()).add(record.get("restart"))
    return {key for key, found in seen.items() if len(found) >= restarts}


def _drop_partial(out: Path, records: Sequence[dict[str, object]],
                  done: set[tuple[str, str, int]]) -> None:
    """Remove the lines of groups a kill left incomplete (and a line it cut short): those
    groups are redone whole."""
    path = out / RESULTS
    kept = "".join(json.dumps(r) + "\n" for r in records if _key(r) in done)
    if path.exists() and path.read_text() != kept:
        _replace_text(path, kept)


def _replace_text(path: Path, text: str) -> None:
    """Write *path* whole or not at all: a temporary file in its folder, flushed to
    disk, then renamed over it, so that a kill meanwhile leaves the old file as it was
    (hours of results, for ``results.jsonl``)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _pixels(image: FloatArray) -> str:
    """An image in [0, 1] as base64 of 8-bit (C, H, W) bytes: enough for a figure."""
    return base64.b64encode(np.round(image * 255).astype(np.uint8).tobytes()).decode()


def _records(group: _Group, victim: Victim, result: AttackResult, hidden: float
             ) -> list[dict[str, object]]:
    best, pick = result.best.restart, result.attacker_choice.restart
    lines: list[dict[str, object]] = []
    for candidate in result.candidates:
        scores = score_image(candidate.image, victim.image)
        record: dict[str, object] = {
            "setting": group.setting.name, "attacker": group.attacker.value,
            "image": group.number, "victim": victim.name, "restart": candidate.restart,
            "hidden_fraction": hidden, "label_source": result.label_source,
            "scores": {k: ("inf" if v == float("inf") else v) for k, v in scores.items()},
            "relative_loss": candidate.relative_loss, "iterations": candidate.iterations,
            "stop": candidate.stop, "attacker_pick": candidate.restart == pick,
            "seconds": result.seconds / len(result.candidates)}
        if candidate.restart == best:
            record["pixels"] = _pixels(candidate.image)
        lines.append(record)
    return lines


def _append(out: Path, lines: Sequence[dict[str, object]]) -> None:
    with (out / RESULTS).open("a") as stream:
        stream.write("".join(json.dumps(line) + "\n" for line in lines))
        stream.flush()
        os.fsync(stream.fileno())


def _eta(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min" if minutes else "under a minute"


def _run_group(group: _Group, model: nn.Module, victim: Victim, config: SweepConfig
               ) -> tuple[list[dict[str, object]], AttackResult]:
    shape = config.evaluation.shape
    seed = mask_seed(config.evaluation.seed, group.setting, group.number)
    mask = setting_mask(group.setting, model, victim.sensitivity, seed)
    result = invert_gradient_batched(
        model, victim.gradient, image_shape=(shape.channels, shape.image_size,
                                             shape.image_size),
        hidden=mask, config=config.attack(group.attacker), true_image=victim.image)
    return _records(group, victim, result, 0.0 if mask is None else mask.fraction), result


def run_sweep(config: SweepConfig, out: Path, progress: Progress | None = None) -> int:
    """Run what *out* lacks of the sweep; returns how many groups ran now."""
    say = progress or (lambda line: None)
    _check_parameters(out, config.parameters())
    evaluation = config.evaluation
    records = load_results(out)
    done = _done(records, evaluation.restarts)
    _drop_partial(out, records, done)
    todo = [g for g in _groups(evaluation) if g.key() not in done]
    total = len(evaluation.settings) * len(evaluation.attackers) * evaluation.images
    shape = evaluation.shape
    model = dlg_model(evaluation.seed, in_channels=shape.channels, classes=shape.classes,
                      image_size=shape.image_size)
    say(f"[sweep] {out}: {total - len(todo)}/{total} (setting, attacker, image) groups of "
        f"{evaluation.restarts} restarts done, {len(todo)} to run")
    if not todo:
        return 0
    say(f"[sweep] {evaluation.images} victims: their updates and their clients' "
        f"sensitivity maps ({evaluation.local_samples} images each)")
    with torch_threads(1):
        victims = _victims(model, evaluation)
    start = time.perf_counter()
    for ran, group in enumerate(todo, 1):
        lines, result = _run_group(group, model, victims[group.number], config)
        _append(out, lines)
        elapsed = time.perf_counter() - start
        say(f"[sweep] {total - len(todo) + ran}/{total} {group.setting.name} "
            f"{group.attacker.value} {victims[group.number].name}: best SSIM "
            f"{result.best.ssim or 0.0:.3f}, {result.seconds:.0f} s; ETA "
            f"{_eta(elapsed / ran * (len(todo) - ran))}")
    return len(todo)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threshold-fl attack sweep",
        description="The Figure-9 sweep (issue 17): every setting x attacker x image x "
                    "restart, one JSON line each in OUT/results.jsonl; a rerun resumes.")
    parser.add_argument("--out", type=Path, required=True, help="the sweep's folder")
    parser.add_argument("--quick", action="store_true",
                        help="the CI preset: 16-pixel patches, 2 images x 2 restarts, "
                             "settings none, top-0.1, random-0.1")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from what OUT holds; run nothing")
    parser.add_argument("--attacker", type=_attackers, default=tuple(Attacker),
                        metavar="{dlg,dlg-tv,ig,all}", help="default all")
    parser.add_argument("--settings", type=_settings, metavar="S,S,...",
                        help="default: none, top 0.01/0.05/0.1/0.2/0.3/0.5, top-0.1+layers, "
                             "random 0.1/0.2/0.425/0.5/0.7/0.9")
    parser.add_argument("--images", type=bounded(int, 1, DATASETS["photos"].max_images),
                        help="victim photo patches (default 10)")
    parser.add_argument("--restarts", type=bounded(int, 1, 1000), help="default 10")
    parser.add_argument("--image-size", type=bounded(int, 8, 64), help="default 32")
    parser.add_argument("--lbfgs-iterations", type=bounded(int, 1, 100_000),
                        help="dlg and dlg-tv (default 1000)")
    parser.add_argument("--ig-iterations", type=bounded(int, 1, 100_000),
                        help="ig's Adam steps (default 2000)")
    parser.add_argument("--seed", type=bounded(int, 0, 2**32 - 1), default=0)
    return parser


def _config(args: argparse.Namespace) -> SweepConfig:
    sizes: dict[str, object] = dict(QUICK) if args.quick else {
        "images": 10, "restarts": 10, "settings": FIGURE9_SETTINGS}
    for name in ("images", "restarts", "image_size", "settings", "lbfgs_iterations",
                 "ig_iterations"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    sweep = {k: sizes.pop(k) for k in ("lbfgs_iterations", "ig_iterations") if k in sizes}
    evaluation = EvalConfig(dataset="photos", attackers=args.attacker, seed=args.seed,
                            **sizes)  # type: ignore[arg-type]
    return SweepConfig(evaluation, **sweep)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """``threshold-fl attack sweep``: run or resume the sweep, then write its report."""
    from threshold_fl.app.sweep_report import write_report

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if not args.report_only:  # the report reads the parameters the folder holds
            run_sweep(_config(args), args.out, _stderr)
        paths = write_report(args.out)
    except ParameterError as error:
        parser.error(str(error))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
