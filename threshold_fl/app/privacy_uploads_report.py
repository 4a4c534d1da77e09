"""The outputs of ``threshold-fl attack-upload``: the per-attacker table, the defences
table (attack SSIM beside the accuracy and bytes per round that ``threshold-fl train``
measured for the same defence) and the JSON data.

Training reports are files, so they are checked before use: each must be what
``threshold-fl train --json`` writes (a list of runs with ``config``, ``mode``,
``final_accuracy`` and ``rounds``), or a :class:`ParameterError` names the file and the
field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from threshold_fl.app.privacy_uploads import Defence, UploadEvaluation, UploadRow
from threshold_fl.errors import ParameterError

__all__ = ["TrainRun", "defences_table", "read_train_reports", "uploads_table",
           "write_outputs"]


@dataclass(frozen=True)
class TrainRun:
    """What the defences table needs from one ``threshold-fl train`` run."""

    path: str
    model: str
    mode: str
    fraction: float
    first_and_last: bool
    noise: tuple[float, float] | None  # (scale b, clip C)
    rounds: int
    accuracy: float
    last_round_bytes: int
    epsilon_per_round: float | None

    def matches(self, defence: Defence) -> bool:
        """Whether this run trained under *defence* (plaintext FedAvg for no hiding)."""
        noise = None if defence.noise is None else (defence.noise.scale, defence.noise.clip)
        if self.noise != noise:
            return False
        setting = defence.setting
        if setting.kind == "none":
            return self.mode == "plaintext"
        if self.mode == "plaintext" or setting.kind == "random":
            return False
        layers = setting.kind == "top+layers"
        full = setting.fraction >= 1.0
        return (math.isclose(self.fraction, setting.fraction)
                and (full or self.first_and_last == layers))


def _field(data: object, key: str, kind: type | tuple[type, ...], where: str) -> object:
    if not isinstance(data, dict) or key not in data or not isinstance(data[key], kind):
        raise ParameterError(f"{where}: missing or malformed {key!r}; pass the file "
                             "'threshold-fl train --json' wrote")
    return data[key]


def _train_run(data: object, where: str) -> TrainRun:
    config = _field(data, "config", dict, where)
    rows = _field(data, "rounds", list, where)
    assert isinstance(config, dict) and isinstance(rows, list)
    if not rows:
        raise ParameterError(f"{where}: the run has no rounds")
    noise = config.get("noise")
    pair = None
    if noise is not None:
        scale, clip = (_field(noise, k, (int, float), where) for k in ("scale", "clip"))
        assert isinstance(scale, int | float) and isinstance(clip, int | float)
        pair = (float(scale), float(clip))
    privacy = data.get("privacy") if isinstance(data, dict) else None
    epsilon = (_field(privacy, "epsilon_per_round", (int, float), where)
               if privacy is not None else None)
    accuracy = _field(data, "final_accuracy", (int, float), where)
    last = _field(rows[-1], "bytes_sent", int, where)
    values = [_field(config, k, t, where) for k, t in (
        ("model", str), ("fraction", (int, float)), ("first_and_last", bool),
        ("rounds", int))]
    mode = _field(data, "mode", str, where)
    return TrainRun(where, str(values[0]), str(mode), float(values[1]),  # type: ignore[arg-type]
                    bool(values[2]), pair, int(values[3]),  # type: ignore[call-overload]
                    float(accuracy), int(last),  # type: ignore[arg-type, call-overload]
                    None if epsilon is None else float(epsilon))  # type: ignore[arg-type]


def read_train_reports(paths: Sequence[Path]) -> tuple[TrainRun, ...]:
    """Every run of every ``threshold-fl train --json`` file in *paths*."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ParameterError(f"cannot read training report {path}: {error}") from None
        if not isinstance(data, list):
            raise ParameterError(f"{path}: expected a list of runs, as 'threshold-fl train "
                                 "--json' writes")
        runs += [_train_run(run, f"{path} run {i}") for i, run in enumerate(data)]
    return tuple(runs)


def _setup_line(evaluation: UploadEvaluation) -> str:
    config, plan = evaluation.config, evaluation.config.plan
    trained = ("" if evaluation.trained_accuracy is None else
               f"; trained checkpoint: {config.pretrain_epochs} epochs on the digits "
               f"training set, test accuracy {evaluation.trained_accuracy:.1%}")
    return (f"LeNet ({config.dataset}, {evaluation.parameters:,} parameters, PyTorch "
            f"default initialisation{trained}). Each of {config.clients} victim clients "
            f"holds {config.count} image(s) and trains {plan.epochs} epoch(s), batch "
            f"{plan.batch_size}, lr {plan.learning_rate:g}, momentum {plan.momentum:g}; "
            f"attackers {', '.join(a.value for a in config.attackers)}, "
            f"{config.restarts} restart(s) x {config.iterations} iterations.")


def _ssim_cell(row: UploadRow) -> str:
    if not row.clients:
        return "n/a: nothing visible"
    values = [s for c in row.clients for s in c.ssim]
    return f"{np.mean(values):.3f} [{min(values):.2f}, {max(values):.2f}]"


def uploads_table(evaluation: UploadEvaluation) -> str:
    """One row per checkpoint, defence and attacker, with convergence evidence."""
    lines = [
        _setup_line(evaluation) + " SSIM: best restart by mean SSIM (images matched by the "
        "Hungarian assignment), mean over images [range]; attacker SSIM: the restart with "
        "the lowest matching loss; rel. loss: largest over clients (L2 / ||g||^2 in "
        "gradient units, or 1 - cos for ig); at limit: stopped by the iteration budget.",
        "",
        "| checkpoint | defence | attacker | hidden | epsilon / round | SSIM | attacker SSIM "
        "| rel. loss | at limit | labels right |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in evaluation.rows:
        clients = row.clients
        epsilon = "-" if row.epsilon is None else f"{row.epsilon:.3g}"
        evidence = ("- | - | - | -" if not clients else
                    f"{np.mean([c.attacker_ssim for c in clients]):.3f} "
                    f"| {max(c.relative_loss for c in clients):.1e} "
                    f"| {sum(c.stop == 'limit' for c in clients)}/{len(clients)} "
                    f"| {sum(c.labels_right for c in clients)}/"
                    f"{len(clients) * evaluation.config.count}")
        lines.append(f"| {row.checkpoint} | {row.defence.name} | {row.attacker} "
                     f"| {row.hidden_fraction:.3f} | {epsilon} | {_ssim_cell(row)} "
                     f"| {evidence} |")
    return "\n".join(lines) + "\n"


def _worst(evaluation: UploadEvaluation, defence: Defence, checkpoint: str) -> str:
    rows = [r for r in evaluation.rows if r.defence == defence and r.checkpoint == checkpoint]
    if not rows:
        return "-"
    if not rows[0].clients:
        return "n/a (nothing visible)"
    best = max(r.mean_ssim or 0.0 for r in rows)
    return f"{best:.3f}"


def defences_table(evaluation: UploadEvaluation, runs: Sequence[TrainRun]) -> str:
    """Per defence: the worst attacker's SSIM at each checkpoint beside the accuracy, bytes
    per round and epsilon of the matching training run (when one was given)."""
    checkpoints = evaluation.config.checkpoints
    header = " | ".join(f"attack SSIM, {c}" for c in checkpoints)
    lines = [
        "Attack SSIM: the worst attacker's mean SSIM (LeNet uploads above). Accuracy, MB "
        "per round (the last round, all parties) and epsilon: the matching `threshold-fl "
        "train` run, if given.",
        "",
        f"| defence | hidden (LeNet) | epsilon / round (LeNet) | {header} | training run "
        "| accuracy | MB / round | epsilon / round (trained model) |",
        "|---|---:|---:|" + "---:|" * len(checkpoints) + "---|---:|---:|---:|",
    ]
    for defence in evaluation.config.defences:
        row = next(r for r in evaluation.rows if r.defence == defence)
        epsilon = "-" if row.epsilon is None else f"{row.epsilon:.3g}"
        attacks = " | ".join(_worst(evaluation, defence, c) for c in checkpoints)
        run = next((r for r in runs if r.matches(defence)), None)
        trained = ("- | - | - | -" if run is None else
                   f"{run.model} {run.mode}, {run.rounds} rounds | {run.accuracy:.2%} "
                   f"| {run.last_round_bytes / 1e6:.2f} "
                   f"| {'-' if run.epsilon_per_round is None else f'{run.epsilon_per_round:.3g}'}")
        lines.append(f"| {defence.name} | {row.hidden_fraction:.3f} | {epsilon} | {attacks} "
                     f"| {trained} |")
    return "\n".join(lines) + "\n"


def _json_data(evaluation: UploadEvaluation, runs: Sequence[TrainRun]) -> dict[str, object]:
    config = evaluation.config
    rows = [{"checkpoint": r.checkpoint, "defence": r.defence.name, "attacker": r.attacker,
             "hidden_fraction": r.hidden_fraction, "epsilon_per_round": r.epsilon,
             "seconds": r.seconds, "mean_ssim": r.mean_ssim,
             "clients": [{"ssim": list(c.ssim), "attacker_ssim": c.attacker_ssim,
                          "relative_loss": c.relative_loss, "iterations": c.iterations,
                          "stop": c.stop, "labels_right": c.labels_right,
                          "labels_inferred": c.labels_inferred} for c in r.clients]}
            for r in evaluation.rows]
    return {"model": "lenet", "init": "pytorch default", "parameters": evaluation.parameters,
            "config": {"dataset": config.dataset, "clients": config.clients,
                       "count": config.count, "plan": asdict(config.plan),
                       "checkpoints": list(config.checkpoints),
                       "pretrain_epochs": config.pretrain_epochs,
                       "defences": [d.name for d in config.defences],
                       "attackers": [a.value for a in config.attackers],
                       "restarts": config.restarts, "iterations": config.iterations,
                       "seed": config.seed,
                       "sensitivity_samples": config.sensitivity_samples},
            "trained_accuracy": evaluation.trained_accuracy,
            "victim_labels": [c.labels.tolist() for c in evaluation.victims.clients],
            "rows": rows, "training_runs": [asdict(r) for r in runs],
            "seconds": evaluation.seconds}


def write_outputs(evaluation: UploadEvaluation, runs: Sequence[TrainRun], out: Path
                  ) -> tuple[Path, Path]:
    """Write uploads.md (both tables) and uploads.json into *out* (created)."""
    out.mkdir(parents=True, exist_ok=True)
    table, data = out / "uploads.md", out / "uploads.json"
    table.write_text(uploads_table(evaluation) + "\n" + defences_table(evaluation, runs))
    data.write_text(json.dumps(_json_data(evaluation, runs), indent=2) + "\n")
    return table, data
