"""The Figure-9 sweep's report: tables, the curve and reconstructions from a sweep folder.

Reads what :mod:`threshold_fl.app.privacy_sweep` wrote (``parameters.json``,
``results.jsonl``), complete or not, and writes into the same folder:

* ``figure9.md``: per (setting, attacker) and the worst case over attackers, the
  defender's worst case per image (the restart with the highest SSIM) as mean, standard
  deviation, min and max over the images done, for SSIM, MS-SSIM, UQI, VIF, PSNR and
  MSE; the mean SSIM of all restarts and of the attacker's own pick (lowest matching
  loss); convergence evidence (the largest relative matching loss among the best
  restarts, how many stopped at the iteration limit); the worst attacker per setting;
  and per-image SSIM of the worst case.  Rows say how many images they cover, so a
  partial sweep cannot pass for a complete one.
* ``figure9.png``: worst-case SSIM against the hidden fraction, top-s and random
  masks, one line per attacker (error bars: standard deviation over images), the
  paper's recipe as a marker.
* ``reconstructions.png``: the worst-case reconstruction per (setting, image).
"""

from __future__ import annotations

import base64
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from threshold_fl.app.privacy_sweep import PARAMETERS, RESULTS, load_results
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError

__all__ = ["Row", "read_sweep", "rows_of", "write_report"]

WORST = "worst case"
Record = dict[str, object]


@dataclass(frozen=True, eq=False)
class Row:
    """One setting and one attacker (or the worst case): the best restart per image,
    and every restart, keyed by image number."""

    setting: str
    attacker: str
    best: dict[int, Record]
    restarts: dict[int, list[Record]]

    def values(self, metric: str) -> list[float]:
        return [_score(self.best[n], metric) for n in sorted(self.best)]


def _score(record: Record, metric: str) -> float:
    value = cast(dict[str, object], record["scores"])[metric]  # checked by read_sweep
    return math.inf if value == "inf" else math.nan if value is None else float(cast(float, value))


#: What the report reads: of parameters.json, of each line of results.jsonl, of its scores.
_PARAMETER_FIELDS = ("image_size", "classes", "images", "restarts", "settings", "attackers")
_RECORD_FIELDS = ("setting", "attacker", "image", "victim", "restart", "hidden_fraction",
                  "scores", "relative_loss", "stop", "attacker_pick", "seconds")
_METRICS = ("ssim", "ms_ssim", "uqi", "vif", "psnr", "mse")


def read_sweep(out: Path) -> tuple[dict[str, object], list[Record]]:
    """The sweep's parameters and result lines, once they hold what the report reads:
    ParameterError naming the file, line and field otherwise."""
    path = out / PARAMETERS
    if not path.exists():
        raise ParameterError(f"{out} has no {PARAMETERS}: run threshold-fl attack sweep "
                             f"--out {out} first")
    try:
        parameters = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ParameterError(f"cannot read {path}: {error}; it was edited or damaged: "
                             "rerun the sweep into another --out") from None
    _check_parameters(path, parameters)
    records = load_results(out)
    for number, record in enumerate(records, 1):
        _check_record(out / RESULTS, number, record)
    return parameters, records


def _check_parameters(path: Path, parameters: object) -> None:
    def bad(what: str) -> ParameterError:
        return ParameterError(f"{path}: {what}; it was edited or damaged, or not written by "
                              "threshold-fl attack sweep")
    if not isinstance(parameters, dict):
        raise bad("not a JSON object")
    for field in _PARAMETER_FIELDS:
        if field not in parameters:
            raise bad(f"no {field!r}")
    for field in ("image_size", "images", "restarts"):
        value = parameters[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"{field!r} is {value!r}, not a positive integer")
    settings, attackers = parameters["settings"], parameters["attackers"]
    if not isinstance(settings, list) or not all(
            isinstance(s, dict) and {"name", "kind", "fraction"} <= set(s) for s in settings):
        raise bad("'settings' is not a list of settings with name, kind and fraction")
    if not isinstance(attackers, dict) or not all(
            isinstance(a, dict) and "iterations" in a for a in attackers.values()):
        raise bad("'attackers' does not map each attacker to its parameters (iterations)")


def _check_record(path: Path, number: int, record: Record) -> None:
    def bad(what: str) -> ParameterError:
        return ParameterError(f"{path} result line {number}: {what}; remove that line to "
                              "redo its cell")
    for field in _RECORD_FIELDS:
        if field not in record:
            raise bad(f"no {field!r}")
    scores = record["scores"]
    if not isinstance(scores, dict):
        raise bad("'scores' is not a JSON object")
    for metric in _METRICS:
        value = scores.get(metric, "missing")
        if value not in ("inf", None) and (isinstance(value, bool) or not isinstance(
                value, int | float)):
            raise bad(f"scores[{metric!r}] is {value!r}, not a number, \"inf\" or null")


def rows_of(parameters: dict[str, object], records: Sequence[Record]) -> list[Row]:
    """Rows in the sweep's setting and attacker order, each followed by its worst case."""
    groups: dict[tuple[str, str], dict[int, list[Record]]] = defaultdict(
        lambda: defaultdict(list))
    for record in records:
        groups[str(record["setting"]), str(record["attacker"])][
            int(str(record["image"]))].append(record)
    settings = [str(s["name"]) for s in parameters["settings"]]  # type: ignore[attr-defined]
    attackers = list(parameters["attackers"])  # type: ignore[call-overload]
    rows = []
    for setting in settings:
        mine = [Row(setting, attacker, {n: max(found, key=lambda r: _score(r, "ssim"))
                                        for n, found in groups[setting, attacker].items()},
                    dict(groups[setting, attacker])) for attacker in attackers]
        rows.extend(mine)
        if len(mine) > 1:
            rows.append(_worst(setting, mine))
    return rows


def _worst(setting: str, rows: Sequence[Row]) -> Row:
    # Only images every attacker has done: a worst case over some attackers is not one.
    common = set.intersection(*(set(r.best) for r in rows))
    best = {n: max((r.best[n] for r in rows), key=lambda r: _score(r, "ssim"))
            for n in sorted(common)}
    # Restarts of different attackers do not pool: the row shows only its best ones.
    return Row(setting, WORST, best, {n: [] for n in common})


def _stat(values: list[float], form: str) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    if len(finite) < len(values):
        return "inf" if any(math.isinf(v) for v in values) else "n/a"
    return f"{np.mean(finite):{form}} ± {np.std(finite):{form}}"


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "-"


def _range(values: list[float]) -> str:
    return f"[{min(values):.2f}, {max(values):.2f}]" if values else "-"


def _table(rows: Sequence[Row], images: int) -> list[str]:
    lines = [
        "| setting | attacker | images | hidden | SSIM mean ± sd | SSIM [min, max] "
        "| MS-SSIM | UQI | VIF | PSNR dB | MSE | all restarts SSIM | attacker pick SSIM "
        "| rel. loss (max) | at limit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        done = sorted(row.best)
        if not done:
            lines.append(f"| {row.setting} | {row.attacker} | 0/{images} |" + " - |" * 12)
            continue
        every = [_score(r, "ssim") for n in done for r in row.restarts[n]]
        picks = [_score(r, "ssim") for n in done for r in row.restarts[n]
                 if r["attacker_pick"]]
        best = [row.best[n] for n in done]
        losses = [float(str(r["relative_loss"])) for r in best]
        lines.append(
            f"| {row.setting} | {row.attacker} | {len(done)}/{images} "
            f"| {_mean_hidden(row):.3f} "
            f"| {_stat(row.values('ssim'), '.3f')} | {_range(row.values('ssim'))} "
            f"| {_stat(row.values('ms_ssim'), '.3f')} | {_stat(row.values('uqi'), '.3f')} "
            f"| {_stat(row.values('vif'), '.3f')} | {_stat(row.values('psnr'), '.1f')} "
            f"| {_stat(row.values('mse'), '.1e')} "
            f"| {_mean(every)} | {_mean(picks)} "
            f"| {max(losses):.1e} "
            f"| {sum(r['stop'] == 'limit' for r in best)}/{len(best)} |")
    return lines


def _worst_attackers(rows: Sequence[Row]) -> list[str]:
    lines = ["| setting | worst attacker | its mean SSIM | images |", "|---|---|---:|---:|"]
    by_setting: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.attacker != WORST and row.best:
            by_setting[row.setting].append(row)
    for setting, mine in by_setting.items():
        top = max(mine, key=lambda r: float(np.mean(r.values("ssim"))))
        lines.append(f"| {setting} | {top.attacker} | {np.mean(top.values('ssim')):.3f} "
                     f"| {len(top.best)} |")
    return lines


def _per_image(rows: Sequence[Row], victims: dict[int, str]) -> list[str]:
    numbers = sorted(victims)
    if not numbers:
        return ["(no image done yet)"]
    lines = ["| setting | " + " | ".join(victims[n] for n in numbers) + " |",
             "|---|" + "---:|" * len(numbers)]
    for row in rows:
        if row.attacker == WORST or len({r.attacker for r in rows if r.setting == row.setting}
                                        ) == 1:
            cells = [f"{_score(row.best[n], 'ssim'):.3f}" if n in row.best else "-"
                     for n in numbers]
            lines.append(f"| {row.setting} ({row.attacker}) | " + " | ".join(cells) + " |")
    return lines


def _header(parameters: dict[str, object], records: Sequence[Record]) -> str:
    attackers = cast(dict[str, dict[str, object]], parameters["attackers"])  # read_sweep
    budget = ", ".join(f"{name} {spec['iterations']} iterations" for name, spec
                       in attackers.items())
    settings = cast(list[object], parameters["settings"])
    cells = len(settings) * len(attackers) * int(str(parameters["images"])) * int(
        str(parameters["restarts"]))
    seconds = sum(float(str(r["seconds"])) for r in records)
    return (f"LeNet {parameters['image_size']}x{parameters['image_size']} colour, "
            f"{parameters['classes']} classes, uniform(-0.5, 0.5) weights; "
            f"{parameters['images']} photo patches x {parameters['restarts']} restarts; "
            f"{budget}. Cells (setting, attacker, image, restart) done: {len(records)} of "
            f"{cells}; attack time in them {seconds / 3600:.2f} h.")


def markdown(parameters: dict[str, object], records: Sequence[Record]) -> str:
    rows = rows_of(parameters, records)
    images = int(str(parameters["images"]))
    victims = {int(str(r["image"])): str(r["victim"]) for r in records}
    parts = [
        _header(parameters, records), "",
        "Per image the restart with the highest SSIM (the defender's worst case); then "
        "mean ± standard deviation and [min, max] over the images done. All restarts: "
        "mean SSIM of every restart; attacker pick: the restart with the lowest matching "
        "loss (what an attacker without the true image would choose). Rel. loss: the best "
        "restarts' final matching loss relative to the visible gradient (L2 / ||g||^2, or "
        "1 - cos for ig); at limit: how many of them stopped at the iteration limit.", "",
        *_table(rows, images), "", "Worst attacker per setting (highest mean SSIM):", "",
        *_worst_attackers(rows), "", "Per-image SSIM of the worst case:", "",
        *_per_image(rows, victims)]
    return "\n".join(parts) + "\n"


def _image(record: Record, side: int) -> FloatArray:
    raw = np.frombuffer(base64.b64decode(str(record["pixels"])), dtype=np.uint8)
    image: FloatArray = raw.reshape(-1, side, side).transpose(1, 2, 0) / 255.0
    return image


def _mean_hidden(row: Row) -> float:
    return float(np.mean([float(str(r["hidden_fraction"])) for r in row.best.values()]))


def _plot(parameters: dict[str, object], rows: Sequence[Row], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    kinds = {str(s["name"]): (str(s["kind"]), float(s["fraction"]))
             for s in parameters["settings"]}  # type: ignore[attr-defined]
    for ax, kind in zip(axes, ("top", "random"), strict=True):
        for attacker in sorted({r.attacker for r in rows}):
            points = [(kinds[r.setting][1], r.values("ssim")) for r in rows
                      if r.attacker == attacker and kinds[r.setting][0] in (kind, "none")
                      and r.best]
            if not points:
                continue
            points.sort()
            ax.errorbar([p[0] for p in points], [np.mean(p[1]) for p in points],
                        yerr=[np.std(p[1]) for p in points], marker="o", capsize=3,
                        label=attacker, linewidth=2.5 if attacker == WORST else 1.0,
                        # Dashed, so the attacker it coincides with stays visible.
                        linestyle="--" if attacker == WORST else "-")
        for r in rows:
            # Placed at what it hides (97 % on DLG's LeNet), not at its nominal 10 %.
            if (kind == "top" and kinds[r.setting][0] == "top+layers"
                    and r.attacker == WORST and r.best):
                ax.plot([_mean_hidden(r)], [np.mean(r.values("ssim"))], "k*",
                        markersize=12, label=f"{r.setting} (worst case)")
        ax.set_xlabel(f"hidden fraction ({kind} {'sensitivity' if kind == 'top' else 'mask'})")
        ax.set_ylim(-0.1, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SSIM of the best restart (mean ± sd over images)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _grid(rows: Sequence[Row], side: int, path: Path) -> bool:
    """Draw the worst-case reconstructions; False when there is none yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Worst-case rows where every attacker has an image done, else each attacker's.
    shown = ([r for r in rows if r.attacker == WORST and r.best]
             or [r for r in rows if r.best])
    numbers = sorted({n for r in shown for n in r.best})
    if not numbers:
        return False
    figure = Figure(figsize=(1.1 * len(numbers) + 2.4, 1.1 * len(shown)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(shown), len(numbers), squeeze=False)
    for i, row in enumerate(shown):
        for j, number in enumerate(numbers):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            record = row.best.get(number)
            if record is not None and "pixels" in record:
                ax.imshow(_image(record, side))
                ax.set_title(f"{record['attacker']} {_score(record, 'ssim'):.2f}", fontsize=5)
        axes[i][0].set_ylabel(row.setting, rotation=0, ha="right", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def write_report(out: Path) -> tuple[Path, ...]:
    """Write figure9.md, figure9.png and (once an image is done) reconstructions.png
    into sweep folder *out*; returns the paths written."""
    parameters, records = read_sweep(out)
    rows = rows_of(parameters, records)
    table, plot, grid = out / "figure9.md", out / "figure9.png", out / "reconstructions.png"
    table.write_text(markdown(parameters, records))
    _plot(parameters, rows, plot)
    drawn = _grid(rows, int(str(parameters["image_size"])), grid)
    return (table, plot, grid) if drawn else (table, plot)
