"""``evaluate``: every method x budget on held-out shards, scored by one independent judge.

The question it answers before any VLM is run: at each budget, how much of what matters does
each selection method keep? "What matters" is eq. 1 of the paper, measured with a reconstructor
that no method trained (the judge), plus the share of text tokens kept where text is known.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vtsel.budget import Budget
from vtsel.fidelity.gate import check_judge
from vtsel.fidelity.judge import Judge
from vtsel.fidelity.lineup import Lineup, build_lineup, method_names
from vtsel.fidelity.metrics import reconstruction_scores
from vtsel.fidelity.report import (
    SAMPLE_COLUMNS,
    EvalReport,
    SampleLog,
    iter_samples,
    summarize,
    write_csv,
    write_report,
)
from vtsel.fidelity.shards import EvalBatch, HeldOutShards
from vtsel.fidelity.text_recall import TextRegions, text_recall
from vtsel.inference import WEIGHTS_FILE
from vtsel.methods.base import attention_input
from vtsel.outputs import write_atomically

PAPER_KEEP_RATIOS = (0.056, 0.111, 0.222, 0.40, 0.50)  # Table 1: 160..1440 of 2880 tokens
SETTINGS_FILE = "eval.json"


class JudgeGateError(ValueError):
    """The judge failed its sanity gate on the shards to evaluate: its table would mislead."""


def keep_budgets(keep: Sequence[float], paper_budgets: bool) -> list[Budget]:
    """The paper's budgets (unless turned off) and ``keep``, ascending."""
    ratios = sorted({*(PAPER_KEEP_RATIOS if paper_budgets else ()), *(float(r) for r in keep)})
    if not ratios:
        raise ValueError("no budgets: give --keep ratios or leave the paper's budgets on")
    bad = [r for r in ratios if not 0.0 < r <= 1.0]
    if bad:
        raise ValueError(f"keep ratios must lie in (0, 1], got {bad}")
    return [Budget(keep=ratio) for ratio in ratios]


def evaluate(
    shards: str,
    judge: str | Path,
    out: str | Path,
    selector: str | Path | None = None,
    methods: Sequence[str] | None = None,
    keep: Sequence[float] = (),
    paper_budgets: bool = True,
    regions: str | Path | None = None,
    text_min_cover: float = 0.25,
    device: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
    tensorboard: bool = True,
    allow_failed_judge: bool = False,
    image_metrics: bool = True,
) -> EvalReport:
    """Score selection methods on held-out shards with an independent judge; write the report.

    Writes into ``out``: ``samples.csv`` (method x budget x crop), ``results.csv`` (method x
    budget), ``report.md`` (a table per metric, best per column bold), ``metrics.png`` and a
    TensorBoard event file under ``tensorboard/``. A killed run resumes from ``samples.csv`` when
    called again with the same settings.

    Args:
        shards: Held-out feature shards (folder, glob, brace pattern; ``::`` joins several),
            from images the selector and the judge never trained on.
        judge: A judge checkpoint (a ``JudgeModule`` fit, ``conf/judge/*.yaml``).
        out: Folder for the report files.
        selector: An exported selector folder (``vtsel export``); adds method ``selector``.
        methods: Method names (``vtsel.methods.METHODS``); default: every baseline, plus
            ``selector`` when one is given.
        keep: Keep ratios to score besides the paper's 5.6, 11.1, 22.2, 40 and 50%.
        paper_budgets: Include the paper's budgets.
        regions: Folder the shards were extracted from, holding ``<source_key>.regions.json``
            text boxes; without it, no text recall.
        text_min_cover: Share of a token's area text must cover for it to count as text.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: Crops per forward pass of the judge.
        seed: Seed of the random method (each crop's subset is fixed by seed and content).
        tensorboard: Also write the figures and scalars for TensorBoard.
        allow_failed_judge: Score and report even when the judge fails its sanity gate
            (``vtsel.fidelity.gate``), under a banner saying so; for debugging a judge, never
            for numbers to quote.
        image_metrics: Also rebuild the image and score PSNR and SSIM; off, only the
            feature reconstructor runs (about half the time on a CPU).

    Raises:
        JudgeGateError: The judge failed its sanity gate on these shards (and
            ``allow_failed_judge`` is False); the message gives the gate's figures.
    """
    names = method_names(methods, selector)
    compute_device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    the_judge = Judge.from_checkpoint(judge).to(compute_device)
    grid = the_judge.contract.grid
    budgets = keep_budgets(keep, paper_budgets)
    num_tokens = grid[0] * grid[1]
    held_out = HeldOutShards(shards, the_judge.contract, the_judge.image_size)
    lineup = build_lineup(
        names, grid, the_judge.contract, held_out.has_attention, selector, compute_device, seed,
        held_out.has_received_attention,
    )
    text_regions = TextRegions(regions, text_min_cover) if regions is not None else None
    gate = check_judge(the_judge, (batch.feats for batch in held_out.batches(batch_size)), seed)
    if not gate.passed and not allow_failed_judge:
        raise JudgeGateError(
            f"the judge {judge} fails its sanity gate on {shards}, so its table would not mean "
            f"anything:\n" + "\n".join(gate.lines())
        )
    notes = lineup.notes + _range_notes(budgets, num_tokens, the_judge.keep_range)
    settings = {
        "shards": shards,
        "judge": str(judge),
        "judge_sha256": _sha256(Path(judge)),
        "selector": None if selector is None else str(selector),
        "selector_sha256": None if selector is None else _sha256(Path(selector) / WEIGHTS_FILE),
        "methods": list(lineup.methods),
        "budgets": [b.keep for b in budgets],
        "seed": seed,
        "regions": None if regions is None else str(regions),
        "text_min_cover": text_min_cover,
        "image_metrics": image_metrics,
    }
    out_dir = Path(out)
    done_keys = _resume(out_dir, settings, len(lineup.methods) * len(budgets))
    log = SampleLog(out_dir / "samples.csv")
    try:
        with _progress() as progress:
            task = progress.add_task("evaluating", total=held_out.num_samples)
            progress.advance(task, len(done_keys))
            for batch in held_out.batches(batch_size, skip=done_keys):
                rows = _score_batch(batch, the_judge, lineup, budgets, text_regions, image_metrics)
                log.append(rows)
                progress.advance(task, len(batch.keys))
    finally:
        log.close()
    summary = summarize(iter_samples(log.path), list(lineup.methods), budgets, num_tokens)
    report = EvalReport(summary, list(lineup.methods), budgets, num_tokens, notes, gate)
    write_report(out_dir, report, settings, tensorboard)
    return report


def _score_batch(
    batch: EvalBatch,
    judge: Judge,
    lineup: Lineup,
    budgets: list[Budget],
    text_regions: TextRegions | None,
    image_metrics: bool,
) -> list[dict]:
    """Rows of ``samples.csv`` for every method x budget x crop of one batch."""
    device = judge.module.device
    feats = batch.feats.to(device)  # (B, L, C)
    images = batch.images.to(device)  # (B, 3, S, S)
    maps = batch.attention_maps(device)  # CLS (B, L) and received (B, 2, L) attention
    normed = judge.normalize(feats)  # (B, L, C)
    text_tokens = (
        text_regions.text_tokens(batch.metas).to(device)
        if text_regions is not None
        else torch.zeros(feats.shape[:2], dtype=torch.bool, device=device)
    )  # (B, L)
    rows = []
    for name, method in lineup.methods.items():
        for budget in budgets:
            tokens = budget.tokens(feats.shape[1])
            attention = attention_input(method, maps)
            kept_idx = method.select(feats, tokens, attention)  # (B, k)
            keep_mask = torch.zeros(feats.shape[:2], device=device).scatter_(1, kept_idx, 1.0)
            # what the method hands on at its kept positions (VisionZip's merged contextual
            # tokens); the judge passes them through, so every error is against the raw tokens
            judged = judge.normalize(method.kept_on_grid(feats, kept_idx, attention))  # (B, L, C)
            if image_metrics:
                feats_rec, image_rec = judge.reconstruct(judged, keep_mask)
                scores = reconstruction_scores(feats_rec, normed, keep_mask, image_rec, images)
            else:
                feats_rec = judge.reconstruct_features(judged, keep_mask)
                scores = reconstruction_scores(feats_rec, normed, keep_mask)
            scores["text_recall"] = text_recall(keep_mask, text_tokens)
            for i, (key, meta) in enumerate(zip(batch.keys, batch.metas, strict=True)):
                rows.append(
                    {
                        "method": name,
                        "keep_ratio": budget.keep,
                        "keep_tokens": tokens,
                        "key": key,
                        "source_key": meta.source_key,
                        **{metric: float(values[i]) for metric, values in scores.items()},
                    }
                )
    return rows


def _sha256(path: Path) -> str:
    """The file's content hash: a resumed run must score with the very same weights."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _range_notes(
    budgets: list[Budget], num_tokens: int, keep_range: tuple[float, float]
) -> list[str]:
    low, high = keep_range
    outside = [b.label(num_tokens) for b in budgets if not low <= b.keep <= high]
    if not outside:
        return []
    return [
        f"budgets {', '.join(outside)} lie outside the keep ratios the judge trained on "
        f"({100 * low:g}-{100 * high:g}%): its scores there are extrapolation"
    ]


def _resume(out_dir: Path, settings: dict, rows_per_key: int) -> set[str]:
    """Keys of the crops an earlier run with the same settings scored completely.

    A different earlier evaluation in ``out_dir`` is refused rather than overwritten.
    """
    settings_path = out_dir / SETTINGS_FILE
    samples_path = out_dir / "samples.csv"
    if settings_path.is_file():
        earlier = json.loads(settings_path.read_text())
        if earlier != settings:
            changed = sorted(k for k in {*earlier, *settings} if earlier.get(k) != settings.get(k))
            raise ValueError(
                f"{out_dir} holds an evaluation with other settings ({', '.join(changed)} "
                f"differ): give another out folder, or delete {out_dir} to start over"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(settings_path, json.dumps(settings, indent=1) + "\n")
    rows_of = Counter(row["key"] for row in iter_samples(samples_path))
    complete = {key for key, count in rows_of.items() if count == rows_per_key}
    # rewritten without the rows of a crop a kill cut short, which is scored again
    kept_rows = (row for row in iter_samples(samples_path) if row["key"] in complete)
    write_csv(samples_path, kept_rows, SAMPLE_COLUMNS)
    return complete


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
