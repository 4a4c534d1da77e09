"""The privacy evaluation's outputs: a markdown table, the JSON data and a figure.

Split from :mod:`threshold_fl.app.privacy_eval` (which runs the attacks) so each stays
short.  Every score in the table has its convergence evidence beside it: the best
restarts' matching loss relative to the visible gradient (worst image) and how many of
them stopped at the iteration limit rather than by tolerance.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from threshold_fl.app.privacy_eval import MODEL, Evaluation, SettingOutcome
from threshold_fl.arrays import FloatArray
from threshold_fl.ml.image_metrics import METRICS

__all__ = ["markdown_table", "write_outputs"]


def _mean(row: SettingOutcome, metric: str) -> float | None:
    values = [o.scores[metric] for o in row.images]
    if any(v is None for v in values):
        return None
    return float(np.mean([v for v in values if v is not None]))


def _cell(value: float | None, form: str) -> str:
    if value is None:
        return "n/a"
    return "inf" if math.isinf(value) else format(value, form)


def _shape_line(evaluation: Evaluation) -> str:
    config, shape = evaluation.config, evaluation.config.shape
    what = "digits" if config.dataset == "digits" else "photo patches"
    return (f"LeNet {shape.channels}x{shape.image_size}x{shape.image_size}, "
            f"{shape.classes} classes ({evaluation.parameters:,} parameters, uniform(-0.5, "
            f"0.5) weights), {config.images} {what}, attackers "
            f"{', '.join(a.value for a in config.attackers)}, {config.restarts} restarts x "
            f"{config.iterations} iterations.")


def markdown_table(evaluation: Evaluation) -> str:
    """Setting, attacker, hidden fraction, scores and convergence evidence, as markdown."""
    lines = [
        _shape_line(evaluation) + " Scores: the best restart by SSIM (defender's worst "
        "case), mean over images; SSIM range in brackets; attacker SSIM: the restart with "
        "the lowest matching loss. Rel. loss: the best restarts' final matching loss "
        "relative to the visible gradient (L2 / ||g||^2, or 1 - cos for ig), largest over "
        "images; at limit: how many stopped at the iteration limit, not by tolerance.",
        "",
        "| setting | attacker | hidden | SSIM | MS-SSIM | UQI | VIF | PSNR dB | MSE "
        "| attacker SSIM | rel. loss | at limit | label inferred |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in evaluation.outcomes:
        ssim = row.ssim
        lines.append(
            f"| {row.setting.name} | {row.attacker} "
            f"| {np.mean([o.hidden_fraction for o in row.images]):.3f} "
            f"| {np.mean(ssim):.3f} [{min(ssim):.2f}, {max(ssim):.2f}] "
            f"| {_cell(_mean(row, 'ms_ssim'), '.3f')} | {_cell(_mean(row, 'uqi'), '.3f')} "
            f"| {_cell(_mean(row, 'vif'), '.3f')} | {_cell(_mean(row, 'psnr'), '.1f')} "
            f"| {_cell(_mean(row, 'mse'), '.1e')} "
            f"| {np.mean([o.attacker_ssim for o in row.images]):.3f} "
            f"| {max(o.relative_loss for o in row.images):.1e} "
            f"| {sum(o.stop == 'limit' for o in row.images)}/{len(row.images)} "
            f"| {sum(o.label_inferred for o in row.images)}/{len(row.images)} |")
    return "\n".join(lines) + "\n"


def _finite(value: float | None) -> float | str | None:
    # JSON has no infinity (PSNR of a perfect reconstruction).
    return "inf" if value is not None and math.isinf(value) else value


def _json_data(evaluation: Evaluation) -> dict[str, object]:
    config = asdict(evaluation.config)
    config["settings"] = [asdict(s) for s in evaluation.config.settings]
    config["attackers"] = [a.value for a in evaluation.config.attackers]
    rows = [{"setting": asdict(row.setting), "attacker": row.attacker,
             "seconds": row.seconds, "mean_ssim": float(np.mean(row.ssim)),
             "images": [{"hidden_fraction": o.hidden_fraction,
                         "scores": {k: _finite(o.scores[k]) for k in METRICS},
                         "attacker_ssim": o.attacker_ssim, "relative_loss": o.relative_loss,
                         "iterations": o.iterations, "stop": o.stop,
                         "label_inferred": o.label_inferred} for o in row.images]}
            for row in evaluation.outcomes]
    victims = [{"name": v.name, "label": v.label} for v in evaluation.victims]
    return {"model": MODEL, "parameters": evaluation.parameters,
            "init": "uniform(-0.5, 0.5)", "config": config, "victims": victims,
            "rows": rows, "seconds": evaluation.seconds}


def _shown(image: FloatArray) -> FloatArray:
    # (C, H, W) -> what imshow wants: (H, W) grey or (H, W, 3) colour.
    shown: FloatArray = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    return shown


def _save_figure(evaluation: Evaluation, path: Path) -> None:
    # The object API with an explicit Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows: list[tuple[str, list[FloatArray], tuple[float, ...] | None]] = [
        ("true image", [v.image for v in evaluation.victims], None)]
    rows += [(f"{o.setting.name}\n{o.attacker}", [i.image for i in o.images], o.ssim)
             for o in evaluation.outcomes]
    columns = len(evaluation.victims)
    figure = Figure(figsize=(1.3 * columns + 2.4, 1.3 * len(rows)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (name, images, scores) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(_shown(image), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            victim = evaluation.victims[c]
            title = (f"{victim.name}, label {victim.label}" if scores is None
                     else f"SSIM {scores[c]:.2f}")
            ax.set_title(title, fontsize=6)
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def write_outputs(evaluation: Evaluation, out: Path) -> tuple[Path, Path, Path]:
    """Write privacy.md, privacy.json and reconstructions.png into *out* (created)."""
    out.mkdir(parents=True, exist_ok=True)
    table, data, figure = out / "privacy.md", out / "privacy.json", out / "reconstructions.png"
    table.write_text(markdown_table(evaluation))
    data.write_text(json.dumps(_json_data(evaluation), indent=2) + "\n")
    _save_figure(evaluation, figure)
    return table, data, figure
