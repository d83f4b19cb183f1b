"""Mean scores per (method, keep) of the predictions, as CSV and as Markdown tables."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vtsel.outputs import atomic_open
from vtsel.vlm_eval.predictions import Prediction

SCORES_CSV = "scores.csv"
SCORES_MARKDOWN = "scores.md"
# Score field -> (table title, scale, decimals): scores in percent, as the paper's tables report.
TABLES = {
    "exact_match": ("Exact match (%)", 100.0, 1),
    "anls": ("ANLS (%)", 100.0, 1),
    "visual_tokens": ("Visual tokens per question", 1.0, 0),
}


@dataclass(frozen=True)
class Score:
    """The mean scores of one method at one budget over the questions answered so far."""

    method: str
    keep: float
    questions: int
    exact_match: float
    anls: float
    visual_tokens: float  # mean visual tokens the LLM read per layer and question


def summarize(predictions: Iterable[Prediction]) -> list[Score]:
    """Mean exact match and ANLS per (method, keep), methods in first-seen order, keep
    descending."""
    groups: dict[tuple[str, float], list[Prediction]] = {}
    for row in predictions:
        groups.setdefault((row.method, row.keep), []).append(row)
    method_order = list(dict.fromkeys(method for method, _ in groups))
    scores = [
        Score(
            method=method,
            keep=keep,
            questions=len(rows),
            exact_match=sum(row.exact_match for row in rows) / len(rows),
            anls=sum(row.anls for row in rows) / len(rows),
            visual_tokens=sum(row.visual_tokens for row in rows) / len(rows),
        )
        for (method, keep), rows in groups.items()
    ]
    return sorted(scores, key=lambda score: (method_order.index(score.method), -score.keep))


def write_scores_csv(scores: list[Score], path: str | Path) -> None:
    """One row per (method, keep): method, keep, questions, exact_match, anls, visual_tokens."""
    with atomic_open(Path(path), newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["method", "keep", "questions", "exact_match", "anls", "visual_tokens"])
        for score in scores:
            writer.writerow([score.method, score.keep, score.questions,
                             f"{score.exact_match:.4f}", f"{score.anls:.4f}",
                             f"{score.visual_tokens:.1f}"])


def markdown_tables(scores: list[Score]) -> str:
    """A methods x budgets table per score: exact match, ANLS, and the mean visual tokens per
    question (what ``vtsel flops --tokens`` turns into TFLOPs)."""
    methods = list(dict.fromkeys(score.method for score in scores))
    keeps = sorted({score.keep for score in scores}, reverse=True)
    by_cell = {(score.method, score.keep): score for score in scores}
    sections = []
    for field, (title, scale, decimals) in TABLES.items():
        lines = [
            f"### {title}",
            "",
            "| method | " + " | ".join(f"keep {keep:g}" for keep in keeps) + " |",
            "|---|" + "---|" * len(keeps),
        ]
        for method in methods:
            cells = [
                f"{scale * getattr(by_cell[method, keep], field):.{decimals}f}"
                if (method, keep) in by_cell else "–"
                for keep in keeps
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"
