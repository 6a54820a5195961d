"""Learning-curve plots from runs' metrics.jsonl files."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.jsonl (a row that is not valid JSON, e.g. cut by a crash, is skipped)."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_learning_curves(runs: dict[str, list[dict[str, float]]], path: str | Path, *, title: str = "",
                         skip_steps: int = 0) -> Path:
    """Success rate and the task channel's episode reward against env steps, one line per run label.

    The task channel (not the total return) keeps runs with different reward wrappers comparable. Points before
    `skip_steps` are left out: at first only short, mostly successful episodes have ended.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (success_axis, return_axis) = plt.subplots(1, 2, figsize=(11, 4))
    curves = []  # (axis, label, steps, values)
    for label, rows in runs.items():
        reward_key = "reward/task" if any("reward/task" in row for row in rows) else "charts/episodic_return"
        for axis, key in ((success_axis, "charts/success_rate"), (return_axis, reward_key)):
            points = [(row["global_step"], row[key]) for row in rows if key in row and row["global_step"] > skip_steps]
            if points:
                steps, values = zip(*points, strict=True)
                curves.append((axis, label, list(steps), list(values)))
    scale = _smoothing_steps([steps for *_, steps, _ in curves])
    for axis, label, steps, values in curves:
        axis.plot(steps, _smooth(steps, values, scale), label=label)
    success_axis.set(xlabel="env steps", ylabel="success rate (training episodes)", ylim=(-0.02, 1.02))
    return_axis.set(xlabel="env steps", ylabel="task reward per episode")
    for axis in (success_axis, return_axis):
        axis.grid(alpha=0.3)
        if not axis.lines:  # a budget within the warm-up: say why the axes are empty
            axis.text(0.5, 0.5, f"no rows logged after the first {skip_steps:,} env steps", ha="center",
                      va="center", transform=axis.transAxes)
        elif len(runs) > 1:
            axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_seed_bands(runs: dict[str, list[list[dict[str, float]]]], path: str | Path, *, title: str = "",
                    skip_steps: int = 0, points: int = 100) -> Path:
    """Training success against env steps: per label, the mean over seeds as a line and the min–max over seeds as a
    shaded band (the legend says so).

    `runs` maps a label to the metrics rows of each seed; every seed's smoothed curve is interpolated onto one
    grid of env steps so seeds with different logging steps average correctly.
    """
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    logged: dict[str, list[tuple[list[float], list[float]]]] = {}
    for label, seeds in runs.items():
        logged[label] = []
        for rows in seeds:
            pairs = [(row["global_step"], row["charts/success_rate"]) for row in rows
                     if "charts/success_rate" in row and row["global_step"] > skip_steps]
            if pairs:
                steps, values = zip(*pairs, strict=True)
                logged[label].append((list(steps), list(values)))
    scale = _smoothing_steps([steps for curves in logged.values() for steps, _ in curves])
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, seeds in logged.items():
        curves = [(np.asarray(steps, dtype=float), np.asarray(_smooth(steps, values, scale)))
                  for steps, values in seeds]
        if not curves:
            continue
        grid = np.linspace(max(c[0][0] for c in curves), min(c[0][-1] for c in curves), points)
        stacked = np.stack([np.interp(grid, steps, values) for steps, values in curves])
        label = textwrap.fill(f"{label} ({len(curves)} seeds)", 70)
        line = axis.plot(grid, stacked.mean(0), label=label)[0]
        axis.fill_between(grid, stacked.min(0), stacked.max(0), color=line.get_color(), alpha=0.2)
    axis.set(xlabel="env steps", ylabel="success rate (training episodes)", ylim=(-0.02, 1.02), title=title)
    axis.grid(alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    if any(len(curves) > 1 for curves in logged.values()):  # else a reader may take the band for a confidence interval
        handles.append(Patch(color="grey", alpha=0.2))
        labels.append("line: mean over seeds; band: min–max over seeds")
    if any(len(label) > 40 for label in runs):  # long labels (config differences) would hide the curves
        axis.legend(handles, labels, loc="upper left", bbox_to_anchor=(0, -0.15), fontsize="small")
    else:
        axis.legend(handles, labels)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return Path(path)


def _smoothing_steps(curves: list[list[float]]) -> float:
    """The env steps over which `_smooth` keeps `weight` of the past, one for a whole figure: the median logging
    interval of the curve that logs most often, so that curve looks as a TensorBoard-smoothed one does."""
    import numpy as np

    intervals = [float(np.median(np.diff(steps))) for steps in curves if len(steps) > 1]
    return min((i for i in intervals if i > 0), default=1.0)


def _smooth(steps: list[float], values: list[float], scale: float, weight: float = 0.8) -> list[float]:
    """Exponential moving average in env steps: the past keeps `weight` per `scale` env steps, so a run that logs
    every 2,000 steps is smoothed as one logging every 500 is (an EMA per logged row, TensorBoard's, smooths a
    rarely logging run over more env steps and draws it lagging)."""
    out, last, previous = [], values[0], steps[0]
    for step, value in zip(steps, values, strict=True):
        keep = weight ** (max(step - previous, 0) / scale)
        last = keep * last + (1 - keep) * value
        previous = step
        out.append(last)
    return out
