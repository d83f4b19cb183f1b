"""What ``vtsel export`` records of how a selector was made, for its model card: the fit's data
and length from the checkpoint, the encoder layer from the shards' manifest, and the tables of
a ``vtsel eval`` report if one is given."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from vtsel.budget import Budget
from vtsel.data.format import read_sizes
from vtsel.data.manifest import Manifest, find_manifest, read_manifest
from vtsel.fidelity import PAPER_KEEP_RATIOS
from vtsel.fidelity.metrics import METRICS
from vtsel.fidelity.report import markdown_tables


def train_manifest(trained: dict[str, Any]) -> Manifest | None:
    """The manifest of the checkpoint's training shards, if they are a local folder that
    still has one (shards written before manifests, or moved, have none)."""
    spec = trained.get("datamodule_hyper_parameters", {}).get("train_shards")
    folder = Path(spec) if spec else None
    if folder is None or not folder.is_dir():
        return None
    path = find_manifest(folder)
    return read_manifest(path) if path is not None else None


def trained_on(trained: dict[str, Any], manifest: Manifest | None) -> dict[str, Any]:
    """The fit's data and length as the checkpoint records them (its datamodule settings and
    step counter), with the shards' sample count and source images where they are known."""
    data = trained.get("datamodule_hyper_parameters", {})
    spec = data.get("train_shards")
    facts: dict[str, Any] = {"train_shards": spec}
    if spec and Path(spec).is_dir():
        facts["samples"] = sum(read_sizes(Path(spec)).values())
    if manifest is not None:
        facts["source_images"] = manifest.inputs.get("count")
    facts["image_size"] = data.get("image_size")
    facts["optimizer_steps"] = trained.get("global_step")
    return {key: value for key, value in facts.items() if value is not None}


def evaluation(report: Path, num_tokens: int) -> dict[str, str]:
    """The tables of a ``vtsel eval`` ``results.csv`` at the paper's budgets (all its budgets
    if it has none of them), as ``report.md`` draws them.

    Raises:
        ValueError: The file is not a ``results.csv``.
    """
    try:
        with report.open(newline="") as handle:
            rows = [_parse(row) for row in csv.DictReader(handle)]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{report} is not a `vtsel eval` results.csv ({err!r})") from None
    if not rows:
        raise ValueError(f"{report} holds no results: is the evaluation finished?")
    ratios = sorted({row["keep_ratio"] for row in rows})
    paper = [r for r in ratios if any(math.isclose(r, p) for p in PAPER_KEEP_RATIOS)]
    budgets = [Budget(keep=ratio) for ratio in paper or ratios]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    return {"report": str(report), "tables": markdown_tables(rows, methods, budgets, num_tokens)}


def _parse(row: dict[str, str]) -> dict[str, Any]:
    """A results.csv row with numbers as numbers (an empty metric cell is NaN)."""
    parsed: dict[str, Any] = {"method": row["method"], "keep_ratio": float(row["keep_ratio"])}
    for metric in METRICS:
        parsed[metric.name] = float(row[metric.name]) if row[metric.name] else math.nan
    return parsed
