"""Metric vs keep ratio, one line per method: as a PNG and in TensorBoard.

TensorBoard scalars need an integer step, so the step of ``eval/<metric>/<method>`` is the keep
ratio in thousandths (56 = 5.6%); the figure itself goes under IMAGES as ``eval/metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: nothing global, no display needed
from torch.utils.tensorboard import SummaryWriter

from vtsel.fidelity.metrics import METRICS


def plot_metrics(summary: list[dict], methods: Sequence[str]) -> Figure:
    """One panel per metric that has values: x = keep ratio (%), a line per method."""
    shown = [m for m in METRICS if any(not math.isnan(row[m.name]) for row in summary)]
    columns = min(3, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    for index, metric in enumerate(shown):
        axes = figure.add_subplot(rows, columns, index + 1)
        for method in methods:
            points = sorted(
                (100 * row["keep_ratio"], row[metric.name])
                for row in summary
                if row["method"] == method and not math.isnan(row[metric.name])
            )
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", label=method)
        axes.set_title(metric.title, fontsize=9)
        axes.set_xlabel("tokens kept per crop (%)")
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=8)
    return figure


def write_tensorboard(summary: list[dict], figure: Figure, log_dir: Path) -> None:
    """Every method x budget x metric as a scalar, and the figure, into one event file."""
    with SummaryWriter(str(log_dir)) as writer:
        for row in summary:
            step = round(1000 * row["keep_ratio"])
            for metric in METRICS:
                if not math.isnan(row[metric.name]):
                    writer.add_scalar(f"eval/{metric.name}/{row['method']}", row[metric.name], step)
        writer.add_figure("eval/metrics", figure)
