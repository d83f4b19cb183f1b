"""``vtsel eval``: the command line of ``evaluate``, with lists typed the way people type them."""

from __future__ import annotations

from rich.console import Console

from vtsel.arglists import comma_list
from vtsel.fidelity.runner import evaluate


def eval_command(
    shards: str,
    judge: str,
    out: str,
    selector: str | None = None,
    methods: str | None = None,
    keep: str | None = None,
    paper_budgets: bool = True,
    regions: str | None = None,
    text_min_cover: float = 0.25,
    device: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
    tensorboard: bool = True,
    allow_failed_judge: bool = False,
    image_metrics: bool = True,
) -> None:
    """Score token-selection methods on held-out shards with an independent judge.

    Every method keeps the same number of tokens per crop at each budget; a judge (a fit of
    conf/judge/<preset>.yaml: reconstructors trained on drawn mask families, never on a trained
    selector's masks) rebuilds the dropped tokens and the image from what each keeps. The judge
    must first pass a sanity gate on these shards (its error falls with the budget, it beats
    training-free interpolation, it does not favour the masks it saw most), or no table is
    printed. Writes results.csv, samples.csv, report.md (the gate's figures, then a table per
    metric, best per column bold), metrics.png and a TensorBoard run into --out; run again with
    the same arguments to resume a killed evaluation.

    Args:
        shards: Held-out feature shards (folder, glob, brace pattern), from images neither the
            selector nor the judge trained on.
        judge: Checkpoint of a judge fit (conf/judge/<preset>.yaml), e.g.
            runs/demo/judge/checkpoints/best-epoch023.ckpt.
        out: Folder for the report files.
        selector: Folder written by `vtsel export`; adds method 'selector'.
        methods: Comma-separated method names (random, uniform, spread, norm, divprune,
            pact, visionzip, hiprune, selector); default: all baselines, plus selector when
            given.
        keep: Comma-separated keep ratios scored besides the paper's (5.6, 11.1, 22.2, 40, 50%).
        paper_budgets: Include the paper's budgets.
        regions: Folder the shards were extracted from, with <source_key>.regions.json text
            boxes (vtsel demo-data writes them); adds text recall.
        text_min_cover: Share of a token's area text must cover for it to count as text.
        device: auto (CUDA if available), cpu, cuda or cuda:N.
        batch_size: Crops per forward pass.
        seed: Seed of the random method.
        tensorboard: Also write a TensorBoard run (scalars per method, the plot).
        allow_failed_judge: Print the table even if the judge fails its sanity gate, under a
            banner saying so (to debug a judge; such numbers are not to be quoted).
        image_metrics: Also rebuild the image and score PSNR and SSIM (false: features only,
            about half the time on a CPU).
    """
    report = evaluate(
        shards,
        judge,
        out,
        selector=selector,
        methods=None if methods is None else comma_list(methods, str, "--methods"),
        keep=() if keep is None else comma_list(keep, float, "--keep"),
        paper_budgets=paper_budgets,
        regions=regions,
        text_min_cover=text_min_cover,
        device=device,
        batch_size=batch_size,
        seed=seed,
        tensorboard=tensorboard,
        allow_failed_judge=allow_failed_judge,
        image_metrics=image_metrics,
    )
    console = Console()
    console.print(report.files["report"].read_text(), markup=False, highlight=False, soft_wrap=True)
    for name, path in report.files.items():
        console.print(f"{name}: {path}", markup=False, highlight=False)
