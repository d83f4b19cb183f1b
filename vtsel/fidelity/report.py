"""An evaluation's files: per-crop and per-budget CSVs, Markdown tables like the paper's Table 1.

``samples.csv`` has one row per method x budget x crop (appended while the evaluation runs, so a
killed run resumes from it); ``results.csv`` one row per method x budget, the mean over crops;
``report.md`` one table per metric, methods down, budgets across, the best of each column bold.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vtsel.budget import Budget
from vtsel.fidelity.gate import GateReport
from vtsel.fidelity.metrics import METRICS
from vtsel.fidelity.plots import plot_metrics, write_tensorboard
from vtsel.outputs import atomic_open, write_atomically

METRIC_COLUMNS = tuple(metric.name for metric in METRICS)
SAMPLE_COLUMNS = ("method", "keep_ratio", "keep_tokens", "key", "source_key", *METRIC_COLUMNS)
RESULT_COLUMNS = ("method", "keep_ratio", "keep_tokens", "samples", "text_samples", *METRIC_COLUMNS)


@dataclass
class EvalReport:
    """What ``evaluate`` measured and where it wrote it.

    Attributes:
        summary: One dict per method x budget (``results.csv``'s rows): ``method``,
            ``keep_ratio``, ``keep_tokens``, ``samples``, ``text_samples`` and each metric's mean.
        methods: The methods scored, in table order.
        budgets: The budgets, ascending.
        num_tokens: Tokens of one crop, which the budgets are shares of.
        notes: Methods skipped and other caveats, also written into ``report.md``.
        gate: The judge's sanity gate on these shards (``vtsel.fidelity.gate``).
        files: ``results``, ``samples``, ``report``, ``plot`` and (if written) ``tensorboard``.
    """

    summary: list[dict]
    methods: list[str]
    budgets: list[Budget]
    num_tokens: int
    notes: list[str]
    gate: GateReport
    files: dict[str, Path] = field(default_factory=dict)

    def value(self, method: str, keep_ratio: float, metric: str) -> float:
        """One metric's mean for a method at a budget, e.g. ``("selector", 0.25, "feat_mse")``."""
        for row in self.summary:
            if row["method"] == method and abs(row["keep_ratio"] - keep_ratio) < 1e-9:
                return float(row[metric])
        raise KeyError(f"no result for method {method!r} at keep ratio {keep_ratio}")


def summarize(
    sample_rows: Iterable[dict],
    methods: Sequence[str],
    budgets: Sequence[Budget],
    num_tokens: int,
) -> list[dict]:
    """One row per method x budget: each metric's mean over the crops that have it.

    Streams ``sample_rows`` (sums only), so a large ``samples.csv`` is never held in memory.
    Text recall is averaged over crops with text-bearing tokens only (``text_samples``); a mean
    over none is NaN.
    """
    sums: dict[tuple[str, float, str], float] = defaultdict(float)
    counts: Counter[tuple[str, float, str]] = Counter()
    for row in sample_rows:
        cell = (row["method"], float(row["keep_ratio"]))
        counts[(*cell, "samples")] += 1
        for metric in METRICS:
            if not math.isnan(row[metric.name]):
                sums[(*cell, metric.name)] += row[metric.name]
                counts[(*cell, metric.name)] += 1
    summary = []
    for method in methods:
        for budget in budgets:
            cell = (method, budget.keep)
            means = {
                metric.name: sums[(*cell, metric.name)] / counts[(*cell, metric.name)]
                if counts[(*cell, metric.name)]
                else math.nan
                for metric in METRICS
            }
            summary.append(
                {
                    "method": method,
                    "keep_ratio": budget.keep,
                    "keep_tokens": budget.tokens(num_tokens),
                    "samples": counts[(*cell, "samples")],
                    "text_samples": counts[(*cell, "text_recall")],
                    **means,
                }
            )
    return summary


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """All ``rows`` under a header, written atomically so no half file stays."""
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(_csv_row(row) for row in rows)


def _csv_row(row: dict) -> dict:
    """NaN (nothing to measure, e.g. text recall of a photo) as an empty cell."""
    return {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


class SampleLog:
    """``samples.csv``, appended batch by batch and flushed, so a killed run loses one batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.is_file()
        self._handle = path.open("a", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=list(SAMPLE_COLUMNS))
        if fresh:
            self._writer.writeheader()

    def append(self, rows: list[dict]) -> None:
        self._writer.writerows(_csv_row(row) for row in rows)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def iter_samples(path: Path) -> Iterator[dict]:
    """The complete rows of a ``samples.csv``, numbers as numbers; none if there is no file.

    A row cut short by a kill mid-write is left out (the caller rewrites the file without it).
    """
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if any(row.get(column) is None for column in SAMPLE_COLUMNS):
                continue
            try:
                yield _parse_sample(row)
            except ValueError:
                continue


def _parse_sample(row: dict[str, str]) -> dict:
    parsed: dict = dict(row)
    parsed["keep_ratio"] = float(row["keep_ratio"])
    parsed["keep_tokens"] = int(row["keep_tokens"])
    for metric in METRICS:
        parsed[metric.name] = float(row[metric.name]) if row[metric.name] else math.nan
    return parsed


def markdown_tables(
    summary: list[dict], methods: Sequence[str], budgets: Sequence[Budget], num_tokens: int
) -> str:
    """One table per metric (methods x budgets), the best value of each column in bold.

    A metric no crop has (text recall without regions files) gets no table.
    """
    by_cell = {(row["method"], row["keep_ratio"]): row for row in summary}
    tables = []
    for metric in METRICS:
        columns = [[by_cell[(m, b.keep)][metric.name] for m in methods] for b in budgets]
        if all(math.isnan(v) for column in columns for v in column):
            continue
        direction = "higher" if metric.higher_is_better else "lower"
        lines = [
            f"### {metric.title}, {direction} is better",
            "",
            "| method | " + " | ".join(budget.label(num_tokens) for budget in budgets) + " |",
            "|---|" + "---:|" * len(budgets),
        ]
        best = [metric.best(column) for column in columns]
        for row_index, method in enumerate(methods):
            cells = []
            for column, column_best in zip(columns, best, strict=True):
                value = column[row_index]
                text = metric.format(value)
                # compared as shown, so values that print alike are tied
                is_best = value == value and text == metric.format(column_best)
                cells.append(f"**{text}**" if is_best else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


def write_report(out_dir: Path, report: EvalReport, settings: dict, tensorboard: bool) -> None:
    """results.csv, report.md, metrics.png and the TensorBoard run of a finished evaluation;
    their paths into ``report.files``."""
    report.files.update(
        samples=out_dir / "samples.csv",
        results=out_dir / "results.csv",
        report=out_dir / "report.md",
        plot=out_dir / "metrics.png",
    )
    write_csv(report.files["results"], report.summary, RESULT_COLUMNS)
    tables = markdown_tables(report.summary, report.methods, report.budgets, report.num_tokens)
    header = _header(report.summary, settings, report.notes, report.gate)
    write_atomically(report.files["report"], header + tables)
    figure = plot_metrics(report.summary, report.methods)
    with atomic_open(report.files["plot"], "wb") as file:
        figure.savefig(file, dpi=120, format="png")
    if tensorboard:
        report.files["tensorboard"] = out_dir / "tensorboard"
        write_tensorboard(report.summary, figure, report.files["tensorboard"])


def _header(summary: list[dict], settings: dict, notes: list[str], gate: GateReport) -> str:
    num_crops = max((row["samples"] for row in summary), default=0)
    text_crops = max((row["text_samples"] for row in summary), default=0)
    banner = [] if gate.passed else [
        "**The judge FAILED its sanity gate: these numbers do not rank the methods.**", ""
    ]
    lines = [
        "# Token selection scored by an independent judge",
        "",
        *banner,
        f"- held-out shards `{settings['shards']}`: {num_crops} crops"
        + (f", {text_crops} with text regions" if settings["regions"] else ""),
        f"- judge `{settings['judge']}`: reconstructors trained on drawn mask families only "
        "(never a trained selector's)",
        *gate.lines(),
        *([f"- selector `{settings['selector']}`"] if settings["selector"] else []),
        "- budgets are tokens kept per crop; each value is the mean over crops (text recall: "
        f"over crops with text; a token is text when text covers >= "
        f"{100 * settings['text_min_cover']:g}% of it)",
        *(f"- note: {note}" for note in notes),
        "",
    ]
    return "\n".join(lines) + "\n"
