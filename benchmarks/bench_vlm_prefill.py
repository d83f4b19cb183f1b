"""Prefill time and peak memory of a LLaVA-NeXT against the share of visual tokens kept, for
the selector (tokens chosen before the LLM) and FastV / PyramidDrop (dropped inside it).

    nice .venv/bin/python benchmarks/bench_vlm_prefill.py

The model is a random-weight ``LlavaNextForConditionalGeneration`` with LLaVA-NeXT's real image
geometry (336-px crops, patch 14: 24×24 tokens per crop, the real anyres pinpoints; a 512×512
photo becomes the base view + 2×2 crops, 2928 visual tokens) and a scaled-down model whose LLM
dominates: a 4-layer, 256-wide CLIP tower, a Llama of 16 layers × 768 (intermediate 2048;
16 layers so that FastV's two unpruned layers are 1/8 of them, not a quarter) and a selector
of 4 layers × 128. Per visual token the tower costs about 3% of the LLM's multiply-adds and
the selector 1%; at LLaVA-NeXT-7B sizes (CLIP-L, a 7B LLM, the 1024-wide 4-layer selector of
conf/llava_next.yaml) about 5% and 0.8%.

One prefill = ``prune_inputs`` (tower, selector, layout) + the model's forward over the whole
prompt (``logits_to_keep=1``), against the unpatched model's forward (tower + LLM). FastV and
PyramidDrop run at the same keep ratios, meaning the same visual tokens per LLM layer on
average (``vtsel.llm_methods``); budgets below their floor (K/L, 1/4) are left out. Every
repeat runs all keep ratios in a rotating order, so machine drift hits them alike; figures are
medians. Peak memory is the rise of the process's peak RSS over its RSS before the call (glibc is
told to map every large block, so freed activations leave RSS). FLOPs are counted once per keep
ratio with ``torch.utils.flop_counter`` under the math SDPA kernel, which spells attention out as
matmuls the counter sees. Writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from skimage import data
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaNextForConditionalGeneration

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' offline model builder

from benchmarks.report import BENCHMARKS_FILE, machine, update_section  # noqa: E402
from tests.tiny_vlms import (  # noqa: E402
    LLAVA_IMAGE_TOKENS,
    WORDS,
    Stack,
    tiny_llava_next,
    word_tokenizer,
)
from vtsel import Budget  # noqa: E402
from vtsel.inference import TokenSelector  # noqa: E402
from vtsel.integrations import LLMPruningHandle, PruningHandle, attach, prune_inputs  # noqa: E402
from vtsel.llm_methods import FastV, LLMMethod, PyramidDrop  # noqa: E402
from vtsel.models import FeatureSelector, SelectorConfig  # noqa: E402

THREADS = 2
REPEATS = 3
KEEP_RATIOS = (1.0, 0.5, 0.4, 0.25, 0.1)
UNPRUNED = "unpruned model"
LLM_SIDE: tuple[LLMMethod, ...] = (FastV(), PyramidDrop())
CROP, PATCH = 336, 14
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # LLaVA-NeXT's
TOWER = Stack(width=256, layers=4, heads=4, intermediate=4 * 256)
LLM = Stack(width=768, layers=16, heads=12, intermediate=2048)
VOCAB_SIZE = 32000  # Llama's: the embedding and LM head at their real size
SELECTOR = dict(dim=128, depth=4, num_heads=4)
TABLE_HEAD = (
    "| run | visual tokens per LLM layer | median prefill (s) | time ÷ unpruned | FLOPs ÷ unpruned "
    "| peak memory (MiB) | memory ÷ unpruned | each repeat (s) |\n|---|---|---|---|---|---|---|---|"
)
PROMPT = "describe the picture " * 12 + "<image> what is this"
M_MMAP_THRESHOLD = -3  # glibc mallopt: blocks above this many bytes are mmapped (and unmapped)


def build() -> tuple[LlavaNextForConditionalGeneration, Any, TokenSelector]:
    """(model, processor inputs for one photo, selector), all random weights, fp32, SDPA."""
    model, processor = tiny_llava_next(word_tokenizer(WORDS, **LLAVA_IMAGE_TOKENS), TOWER, LLM,
                                       crop=CROP, patch=PATCH, pinpoints=PINPOINTS,
                                       vocab_size=VOCAB_SIZE)
    inputs = processor(images=[Image.fromarray(data.astronaut())], text=[PROMPT],
                       return_tensors="pt")
    grid = (CROP // PATCH, CROP // PATCH)
    selector = TokenSelector(FeatureSelector(SelectorConfig(TOWER.width, grid, **SELECTOR)),
                             {"encoder": f"random CLIP {TOWER.layers}x{TOWER.width} at {CROP} px"})
    return model, inputs, selector


def prefill(model: Any, inputs: Any, handle: PruningHandle | LLMPruningHandle | None) -> float:
    """One prefill (see module doc); returns the visual tokens the LLM read per layer."""
    if handle is not None:
        inputs = prune_inputs(handle, inputs)
    with torch.no_grad():
        model(**inputs, logits_to_keep=1)
    if handle is None:
        return float((inputs["input_ids"] == model.config.image_token_id).sum())
    (tokens,) = handle.visual_tokens_read(inputs["input_ids"])
    return tokens


def runner(
    model: Any, inputs: Any, method: TokenSelector | LLMMethod | None, keep: float
) -> Callable[[], float]:
    """A prefill of the unpatched model (``method`` None) or with ``method`` at ``keep``."""
    def run() -> float:
        if method is None:
            return prefill(model, inputs, None)
        with attach(model, method, Budget(keep=keep)) as handle:
            return prefill(model, inputs, handle)

    return run


def feasible(method: LLMMethod, keep: float) -> bool:
    """Whether ``method`` can average ``keep`` over the benchmark LLM's layers."""
    try:
        method.schedule(LLM.layers, keep)
    except ValueError:
        return False
    return True


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def timed(run: Callable[[], float]) -> tuple[float, float]:
    """(seconds, peak MiB above the RSS before) of one call."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return seconds, (_status_kib("VmHWM") - before) / 1024


def counted_flops(run: Callable[[], float]) -> tuple[int, float]:
    """(FLOPs, visual tokens) of one call, attention included (math SDPA kernel)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        tokens = run()
    return counter.get_total_flops(), tokens


def measure(model: Any, inputs: Any, selector: TokenSelector) -> dict[str, dict[str, Any]]:
    runs = {UNPRUNED: runner(model, inputs, None, 1.0)}
    runs |= {f"selector, keep {keep:.0%}": runner(model, inputs, selector, keep)
             for keep in KEEP_RATIOS}
    runs |= {f"{method.name}, keep {keep:.0%}": runner(model, inputs, method, keep)
             for method in LLM_SIDE for keep in KEEP_RATIOS if keep < 1 and feasible(method, keep)}
    results = {name: {"seconds": [], "mib": []} for name in runs}
    for name, run in runs.items():
        results[name]["flops"], results[name]["tokens"] = counted_flops(run)  # also warms up
    names = list(runs)
    for repeat in range(REPEATS):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            seconds, mib = timed(runs[name])
            results[name]["seconds"].append(seconds)
            results[name]["mib"].append(mib)
            print(f"repeat {repeat + 1}/{REPEATS} {name}: {seconds:.2f} s, +{mib:.0f} MiB",
                  flush=True)
    return results


def section(results: dict[str, dict[str, Any]], prompt_text_tokens: int) -> tuple[str, float]:
    base = results[UNPRUNED]
    base_seconds = statistics.median(base["seconds"])
    base_mib = statistics.median(base["mib"])
    rows = []
    for name, result in results.items():
        seconds, mib = statistics.median(result["seconds"]), statistics.median(result["mib"])
        rows.append(
            f"| {name} | {result['tokens']:.0f} | {seconds:.2f} | {seconds / base_seconds:.2f} | "
            f"{result['flops'] / base['flops']:.2f} | {mib:.0f} | {mib / base_mib:.2f} | "
            + ", ".join(f"{value:.2f}" for value in result["seconds"]) + " |"
        )
    at_40 = {name.split(",")[0]: statistics.median(result["seconds"]) / base_seconds
             for name, result in results.items() if name.endswith("keep 40%")}
    time_ratio = at_40["selector"]
    flops_ratio = results["selector, keep 40%"]["flops"] / base["flops"]
    others = ", ".join(f"{name} {ratio:.2f}" for name, ratio in at_40.items() if name != "selector")
    rows_text = "\n".join(rows)
    body = f"""Machine: {machine(THREADS)}.

Random-weight LlavaNextForConditionalGeneration, fp32, SDPA, batch 1: LLaVA-NeXT's real
geometry (336-px crops of 24×24 tokens, its anyres pinpoints; skimage's 512×512 astronaut
becomes the base view + 2×2 crops) with a scaled-down model whose LLM dominates: CLIP tower
{TOWER.layers} layers × {TOWER.width}, Llama {LLM.layers} layers × {LLM.width}
(intermediate {LLM.mlp_width}), selector 4 layers × {SELECTOR['dim']} (random
weights; ranking cost does not depend on them), {prompt_text_tokens} text tokens. One prefill =
`prune_inputs` (tower + selector + layout) + forward over the prompt (`logits_to_keep=1`); the
unpruned row is the unpatched model. The selector's keep ratios count the per-crop tokens;
newlines (one per grid row, 48) stay. FastV (K=2) and PyramidDrop (4 stages) read every
visual token, newlines included, and drop them inside the LLM so that its layers read the same
share on average; a budget below FastV's floor (2/{LLM.layers}) or PyramidDrop's (1/4) has no
row. {REPEATS} repeats in rotating order, medians; FLOPs counted once per row
(`torch.utils.flop_counter`, math SDPA kernel; FastV's and PyramidDrop's recomputed
attention row included). Peak memory = rise of peak RSS over the RSS before the call. Goal:
time at 40% ÷ unpruned ≤ 0.5, selector included.

{TABLE_HEAD}
{rows_text}

At 40% keep: the selector's time ratio **{time_ratio:.2f}** against a FLOPs ratio of
{flops_ratio:.2f}; at the same budget {others}.
"""
    return body, time_ratio


def main() -> None:
    torch.set_num_threads(THREADS)
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    model, inputs, selector = build()
    text_tokens = int((inputs["input_ids"] != model.config.image_token_id).sum())
    results = measure(model, inputs, selector)
    body, time_ratio = section(results, text_tokens)
    print(body)
    update_section("VLM prefill vs keep ratio (benchmarks/bench_vlm_prefill.py)", body)
    print(f"updated {BENCHMARKS_FILE}; the selector's time ratio at 40% = {time_ratio:.2f}")


if __name__ == "__main__":
    main()
