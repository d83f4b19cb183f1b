"""What choosing the tokens costs, per method, and the trained selector against the encoder.

    nice .venv/bin/python benchmarks/bench_selection.py

At LLaVA-NeXT's geometry (one CLIP ViT-L/14-336 crop: 24×24 tokens of 1024 channels):

1. Selection time per crop: every method of ``vtsel.methods`` (and the trained selector, built
   at the widths of ``conf/llava_next.yaml`` with random weights) picks 64, 144 and 288 tokens
   (11, 25, 50%) from a batch of 8 crops of random features; methods that read attention get a
   random softmax map per layer. Median over repeats, runners interleaved.
2. Selector overhead: the selector's forward over the encoder's forward on one crop, both
   measured in this run with their repeats interleaved; the FLOPs torch counts for each go
   beside it. The encoder is open_clip's ViT-L-14-336 with random weights, read at its
   penultimate block without CLS, as ``vtsel extract`` runs it for this preset.

Prints the figures and rewrites this benchmark's sections of BENCHMARKS.md at the repo root.
"""

from __future__ import annotations

import inspect
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.progress import track
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import BENCHMARKS_FILE, machine, update_section  # noqa: E402
from vtsel.extract.encoders import OpenClipEncoder  # noqa: E402
from vtsel.inference import TokenSelector  # noqa: E402
from vtsel.methods import (  # noqa: E402
    METHODS,
    LearnedSelection,
    SelectionMethod,
    build_method,
)
from vtsel.models import FeatureSelector, SelectorConfig  # noqa: E402

THREADS = 1  # the machine is shared: one thread each keeps runners from starving each other
PRESET = REPO / "conf" / "llava_next.yaml"
ENCODER_NAME = "ViT-L-14-336-quickgelu"  # conf/extract/llava_next.yaml, here without weights
BATCH = 8
BUDGETS = (64, 144, 288)
SELECTION_REPEATS, OVERHEAD_REPEATS = 5, 9
MIN_MEASURED_SECONDS = 0.05  # fast methods are called in a loop until this much time passes
OVERHEAD_GOAL = 0.05
Runner = Callable[[], Any]


def llava_selector() -> TokenSelector:
    """A TokenSelector at the LLaVA-NeXT preset's widths, with seeded random weights."""
    preset = yaml.safe_load(PRESET.read_text())
    model = preset["model"]["init_args"]
    data = yaml.safe_load((PRESET.parent / preset["data"]).read_text())
    torch.manual_seed(0)
    selector = FeatureSelector(SelectorConfig(
        feature_dim=data["feature_dim"],
        grid_size=tuple(data["grid_size"]),
        dim=model["dim"],
        depth=model["selector_depth"],
        num_heads=model["num_heads"],
        tau=model["tau"],
    ))
    config = {"encoder": data["encoder"], "dim": model["dim"], "depth": model["selector_depth"]}
    return TokenSelector(selector, config | {"num_heads": model["num_heads"]})


def random_inputs(selector: TokenSelector) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, L, C) and two attention maps (B, 2, L) (a middle and the feature layer)."""
    height, width = selector.selector.config.grid_size
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(
        BATCH, height * width, selector.selector.config.feature_dim, generator=generator
    )
    attention = torch.randn(BATCH, 2, height * width, generator=generator).softmax(dim=-1)
    return features, attention


def selection_runners(selector: TokenSelector) -> dict[str, Runner]:
    """One runner per (method, budget): a call of ``select`` on the whole batch."""
    features, attention = random_inputs(selector)
    grid = selector.selector.config.grid_size
    methods: list[SelectionMethod] = [
        build_method(name, grid=grid) if takes_grid(name) else build_method(name)
        for name in METHODS
        if name != "selector"
    ]
    methods.append(LearnedSelection(selector))
    runners: dict[str, Runner] = {}
    for method, keep in ((method, keep) for method in methods for keep in BUDGETS):
        # HiPrune reads a middle layer and the feature layer; VisionZip the feature layer only.
        maps = attention if method.attention_maps == 2 else attention[:, 1]
        runners[f"{method.name}@{keep}"] = lambda m=method, k=keep, a=maps: m(features, k, a)
        if merges(method):  # also what the method hands on: its merged tokens
            runners[f"{method.name} + merge@{keep}"] = lambda m=method, k=keep, a=maps: (
                m.kept_features(features, m(features, k, a), a)
            )
    return runners


def takes_grid(name: str) -> bool:
    """Whether the method registered as ``name`` is built on the token grid (uniform, spread,
    HiPrune)."""
    return "grid" in inspect.signature(METHODS[name]).parameters


def merges(method: SelectionMethod) -> bool:
    """Whether ``method`` hands on other values than its kept tokens (VisionZip, PACT)."""
    return type(method).kept_features is not SelectionMethod.kept_features


def seconds_per_call(run: Runner, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def interleaved_times(
    runners: dict[str, Runner], repeats: int, what: str
) -> dict[str, list[float]]:
    """Seconds per call of every runner in every repeat, the runners' order rotating.

    A first call warms each runner up and sets how many calls one measurement averages, so a
    sub-millisecond method is timed over at least ``MIN_MEASURED_SECONDS``.
    """
    calls = {
        name: max(1, math.ceil(MIN_MEASURED_SECONDS / seconds_per_call(run, 1)))
        for name, run in runners.items()
    }
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in track(range(repeats), description=what):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(seconds_per_call(runners[name], calls[name]))
    return times


def load_note(start: float) -> str:
    """The 1-minute load average when a part started and now: how shared the machine was."""
    now = os.getloadavg()[0]
    return f"\nLoad average (1 min): {start:.1f} at the start, {now:.1f} at the end.\n"


def counted_flops(run: Runner) -> int:
    """FLOPs torch counts for one call: linear layers, matmuls and convolutions.

    nn.MultiheadAttention's fused inference path is switched off while counting, since the
    counter does not see inside it. The attention products of the CPU kernel for
    ``scaled_dot_product_attention`` are not counted either (about 9% of either model here).
    """
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            run()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return counter.get_total_flops()


def selection_section(times: dict[str, list[float]], selector: TokenSelector) -> str:
    height, width = selector.selector.config.grid_size
    num_tokens, widths = height * width, selector.config
    method_names = list(dict.fromkeys(name.split("@")[0] for name in times))

    def per_crop_ms(method: str, keep: int) -> str:
        return f"{1000 * statistics.median(times[f'{method}@{keep}']) / BATCH:.2f}"

    header = " | ".join(f"{keep} ({100 * keep / num_tokens:.0f}%)" for keep in BUDGETS)
    rows = "\n".join(
        f"| {method} | " + " | ".join(per_crop_ms(method, keep) for keep in BUDGETS) + " |"
        for method in method_names
    )
    return f"""Machine: {machine(THREADS)}.

Milliseconds per crop to choose the kept tokens (`SelectionMethod.select` on a batch of
{BATCH} crops ÷ {BATCH}) at LLaVA-NeXT's geometry: {height}×{width} = {num_tokens} tokens of \
{selector.selector.config.feature_dim} channels, random
float32 features; `visionzip` and `hiprune` get random softmax attention (one map, and two
layers' maps). `visionzip + merge` and `pact + merge` also compute what the method hands the
LLM (`kept_features`): VisionZip's contextual tokens (target + mean of its joiners), PACT's
cluster means (which re-run its pruning and clustering, as the kept indices alone do not say
which tokens were pruned nor the cut-off). `selector` is a TokenSelector at
`conf/llava_next.yaml`'s widths (dim {widths["dim"]}, {widths["depth"]} layers, \
{widths["num_heads"]} heads) with random weights: its forward plus top-k. Median of
{SELECTION_REPEATS} repeats, all runners interleaved in rotating order.

| method | {header} |
|---|{"---|" * len(BUDGETS)}
{rows}
"""


def overhead_section(times: dict[str, list[float]], flops: dict[str, int]) -> tuple[str, float]:
    selector_s, encoder_s = (statistics.median(times[name]) for name in ("selector", "encoder"))
    ratio = selector_s / encoder_s
    per_repeat = [s / e for s, e in zip(times["selector"], times["encoder"], strict=True)]
    each = {name: ", ".join(f"{s:.2f}" for s in times[name]) for name in times}
    rows = [
        ("median seconds per crop", f"{selector_s:.3f}", f"{encoder_s:.3f}", f"**{ratio:.3f}**"),
        (
            "each repeat (s)",
            each["selector"],
            each["encoder"],
            f"{min(per_repeat):.3f}–{max(per_repeat):.3f}",
        ),
        (
            "GFLOPs of linear layers and convolutions",
            f"{flops['selector'] / 1e9:.1f}",
            f"{flops['encoder'] / 1e9:.1f}",
            f"{flops['selector'] / flops['encoder']:.3f}",
        ),
    ]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    body = f"""Machine: {machine(THREADS)}.

One crop (B=1), fp32, CPU. Encoder: open_clip `{ENCODER_NAME}` with random weights, up to its
penultimate block, CLS dropped (`OpenClipEncoder(..., layer=-2)`), on random pixels. Selector:
TokenSelector at `conf/llava_next.yaml`'s widths, `scores` (its forward). {OVERHEAD_REPEATS}
repeats, the two alternated in rotating order. FLOPs as torch's FlopCounterMode counts them
(attention products not included, about 9% more for either model). Goal: selector ÷ encoder
≤ {OVERHEAD_GOAL}.

| figure | selector | encoder | selector ÷ encoder |
|---|---|---|---|
{table}
"""
    return body, ratio


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.set_grad_enabled(False)
    selector = llava_selector()
    load_at_start = os.getloadavg()[0]
    selection_times = interleaved_times(
        selection_runners(selector), SELECTION_REPEATS, "selection methods"
    )
    selection_body = selection_section(selection_times, selector) + load_note(load_at_start)
    print(selection_body)

    encoder = OpenClipEncoder(ENCODER_NAME, None, layer=-2)
    pixels = torch.randn(1, 3, encoder.image_size, encoder.image_size)
    one_crop, _ = random_inputs(selector)
    overhead_runners: dict[str, Runner] = {
        "selector": lambda: selector.scores(one_crop[:1]),
        "encoder": lambda: encoder(pixels),
    }
    flops = {name: counted_flops(run) for name, run in overhead_runners.items()}
    load_at_start = os.getloadavg()[0]
    overhead_times = interleaved_times(overhead_runners, OVERHEAD_REPEATS, "selector vs encoder")
    overhead_body, ratio = overhead_section(overhead_times, flops)
    overhead_body += load_note(load_at_start)
    print(overhead_body)
    if ratio > OVERHEAD_GOAL:
        print(f"selector ÷ encoder = {ratio:.3f}, above the goal of {OVERHEAD_GOAL}")
    update_section("Selection time per crop (benchmarks/bench_selection.py)", selection_body)
    update_section(
        "Selector overhead on the encoder (benchmarks/bench_selection.py)", overhead_body
    )
    print(f"updated {BENCHMARKS_FILE}")


if __name__ == "__main__":
    main()
