"""``vtsel flops``: what the visual tokens cost a VLM's LLM at each budget, plus the selector.

The paper (§5.3, Table 1) counts only the FLOPs attributable to vision tokens, following FastV
(Chen et al. 2024, arXiv 2403.06764) and PyramidDrop (Xing et al. 2025, arXiv 2410.17247 §4.1):
per LLM layer, over n tokens of width d with FFN width m,

    4·n·d²  (Q, K, V and output projections)  +  2·n²·d  (QKᵀ and attention·V)  +  3·n·d·m

where FastV writes 2·n·d·m for a two-matrix FFN and PyramidDrop counts the three matrices of
LLaMA's SwiGLU FFN (gate, up, down) as 3·n·d·m. Each term is a count of multiply-accumulates,
which this convention calls FLOPs (twice as many floating-point operations are executed). The
paper's §5.3 prints the 2·n·d·m form, but its Table 1 brackets (≈21 TFLOPs at 2880 tokens of
Vicuna-7B, ≈10 at 1440, ≈8 at 1152, ≈4 at 640) are those of the 3·n·d·m form; 2·n·d·m would
give 16.7, 8.0, 6.1 and 3.3. The convention also counts K and V at full width, so for LLMs
with grouped-query attention (Mistral, Qwen2.5) it overstates the projections, as the
papers whose numbers it reproduces do.

The selector runs once per crop, before any token is dropped, over its own grid. Its cost is
counted in the same units by PyTorch's FLOP counter on a forward pass of the real
architecture built from the export's or preset's widths (on the meta device: no memory, no
weights), halved to multiply-accumulates.

FastV and PyramidDrop (``--method fastv|pdrop``) drop tokens inside the LLM, so each layer is
counted over the tokens it reads (``vtsel.llm_methods.tokens_by_layer``), as PyramidDrop's
§4.1 does; at keep ρ the layers read ρ·n on average, so only the quadratic term separates
their cost from a tower method's. The one attention row they rank by is not counted (one key
projection at each ranking layer, under 0.5% of a 32-layer LLM's cost).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from vtsel.arglists import comma_list
from vtsel.inference import CONFIG_FILE
from vtsel.llm_methods import LLM_METHODS, LLMMethod, build_llm_method, tokens_by_layer
from vtsel.models import FeatureSelector, SelectorConfig
from vtsel.models.selector import tokens_for_ratio

TERA = 1e12
SWIGLU_MATRICES = 3  # gate, up and down projections of a LLaMA-style FFN
TOWER = "tower"  # tokens chosen before the LLM (the selector and every vtsel.methods baseline)


@dataclass(frozen=True)
class LanguageModel:
    """The widths of a VLM's LLM and how many visual tokens it receives per image.

    Args:
        hidden: Hidden size d.
        ffn: FFN intermediate size m.
        layers: Decoder layers l.
        crops: Crops (or tiles, or frames) per image, each encoded on its own; the selector
            runs once on each.
        tokens_per_crop: Visual tokens one crop hands the LLM.
        ffn_matrices: Weight matrices of the FFN: 3 for SwiGLU (every preset), 2 for an MLP.
    """

    hidden: int
    ffn: int
    layers: int
    crops: int
    tokens_per_crop: int
    ffn_matrices: int = SWIGLU_MATRICES

    @property
    def full_tokens(self) -> int:
        """Visual tokens of one image without pruning, n."""
        return self.crops * self.tokens_per_crop


# The LLMs of the paper's VLMs (widths from each LLM's published config.json).
PRESETS: dict[str, LanguageModel] = {
    # Table 1: Open-LLaVA-NeXT on Vicuna-7B, anyres with 4 crops + the overview, 24x24 each.
    "llava-next-vicuna-7b": LanguageModel(4096, 11008, 32, crops=5, tokens_per_crop=576),
    # Table 2: LLaVA-1.6 on Mistral-7B, the same 5 x 576 tokens.
    "llava-next-mistral-7b": LanguageModel(4096, 14336, 32, crops=5, tokens_per_crop=576),
    # Figure 3 / Table 4: InternVL3 on Qwen2.5-1.5B and Qwen2.5-7B; a 448 px tile gives 256
    # tokens after pixel shuffle, and dynamic tiling uses up to 12 tiles plus a thumbnail.
    "internvl3-2b": LanguageModel(1536, 8960, 28, crops=13, tokens_per_crop=256),
    "internvl3-8b": LanguageModel(3584, 18944, 28, crops=13, tokens_per_crop=256),
}


def llm_layer_macs(tokens: int, hidden: int, ffn: int, ffn_matrices: int = SWIGLU_MATRICES) -> int:
    """Multiply-accumulates of one decoder layer over ``tokens`` visual tokens (module doc)."""
    projections = 4 * tokens * hidden * hidden
    attention = 2 * tokens * tokens * hidden
    feed_forward = ffn_matrices * tokens * hidden * ffn
    return projections + attention + feed_forward


def llm_macs(model: LanguageModel, tokens: int | list[int]) -> int:
    """Multiply-accumulates the LLM spends on ``tokens`` visual tokens in every layer, or on
    ``tokens[l]`` in layer l."""
    per_layer = [tokens] * model.layers if isinstance(tokens, int) else tokens
    return sum(llm_layer_macs(count, model.hidden, model.ffn, model.ffn_matrices)
               for count in per_layer)


def selector_config_of(source: str | Path) -> SelectorConfig:
    """The selector of an export folder, its ``config.json``, or a fit preset YAML.

    A preset is resolved exactly as ``vtsel fit --config`` resolves it (defaults filled in),
    so the selector is the one the fit would train.
    """
    path = Path(source)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"selector source {source} not found: give an export folder, its {CONFIG_FILE}, "
            f"or a fit preset such as conf/llava_next.yaml"
        )
    if path.suffix == ".json":
        return SelectorConfig.from_dict(json.loads(path.read_text()), str(path))
    # Lightning is only needed for presets.
    from vtsel.train.fit import resolve_fit_config
    from vtsel.train.selector_module import selector_config

    config = resolve_fit_config(["--config", str(path)])
    return selector_config({**config.model.init_args.as_dict(), **config.data.as_dict()})


def selector_macs_per_crop(config: SelectorConfig) -> int:
    """Multiply-accumulates of scoring one crop: PyTorch's FLOP count of the forward, halved.

    The count covers every matrix product the selector runs (input projection, Q/K/V/output
    projections, attention, MLP and head); norms and activations are not counted, as in the
    LLM convention.
    """
    with torch.device("meta"):
        selector = FeatureSelector(config)
        features = torch.empty(1, config.num_tokens, config.feature_dim)  # (1, L, C), one crop
    with FlopCounterMode(display=False) as counter:
        selector.scores(features)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class BudgetCost:
    """The cost of one token budget, in multiply-accumulates (the convention's FLOPs)."""

    tokens: int
    keep_ratio: float
    llm: int
    selector: int  # 0 at the full budget: nothing is selected
    full_llm: int  # the LLM's cost without pruning, the reference of ``ratio_to_full``

    @property
    def total(self) -> int:
        return self.llm + self.selector

    @property
    def ratio_to_full(self) -> float:
        return self.total / self.full_llm


def budget_costs(
    model: LanguageModel,
    budgets: list[int],
    selector_per_crop: int = 0,
    llm_method: LLMMethod | None = None,
) -> list[BudgetCost]:
    """The cost of each budget (visual tokens per image, 1..n) with the selector on every crop,
    or under ``llm_method``'s schedule at keep = budget / n (``tokens``: the layers' mean).

    The full budget keeps every token, so no selector runs there and its row is the unpruned
    model's cost.
    """
    full_tokens, full_llm = model.full_tokens, llm_macs(model, model.full_tokens)
    costs = []
    for tokens in budgets:
        if not 1 <= tokens <= full_tokens:
            raise ValueError(f"budget of {tokens} tokens outside [1, {full_tokens}] (n)")
        keep = tokens / full_tokens
        if llm_method is not None:
            per_layer = tokens_by_layer(llm_method.schedule(model.layers, keep), model.layers,
                                        full_tokens)
            costs.append(BudgetCost(round(sum(per_layer) / model.layers), keep,
                                    llm_macs(model, per_layer), 0, full_llm))
            continue
        selector = 0 if tokens == full_tokens else model.crops * selector_per_crop
        costs.append(BudgetCost(tokens, keep, llm_macs(model, tokens), selector, full_llm))
    return costs


_COLUMNS = ("tokens", "keep", "LLM TFLOPs", "selector TFLOPs", "total TFLOPs", "of full")


def _cells(cost: BudgetCost) -> tuple[str, ...]:
    return (
        str(cost.tokens),
        f"{cost.keep_ratio:.1%}",
        f"{cost.llm / TERA:.2f}",
        f"{cost.selector / TERA:.3f}",
        f"{cost.total / TERA:.2f}",
        f"{cost.ratio_to_full:.1%}",
    )


def markdown_table(costs: list[BudgetCost]) -> str:
    """The costs as a Markdown table, one row per budget."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_cells(cost)) + " |" for cost in costs]
    return "\n".join(lines)


def rich_table(costs: list[BudgetCost], title: str) -> Table:
    """The costs as a Rich table for the terminal."""
    table = Table(title=title)
    for column in _COLUMNS:
        table.add_column(column, justify="right")
    for cost in costs:
        table.add_row(*_cells(cost))
    return table


def _language_model(model: str, overrides: dict[str, int | None]) -> LanguageModel:
    if model not in PRESETS:
        raise ValueError(f"unknown --model {model!r}; presets: {', '.join(PRESETS)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    return replace(PRESETS[model], **given)


def flops(
    model: str = "llava-next-vicuna-7b",
    tokens: str | None = None,
    keep: str | None = None,
    selector: str | None = None,
    hidden: int | None = None,
    ffn: int | None = None,
    layers: int | None = None,
    crops: int | None = None,
    tokens_per_crop: int | None = None,
    method: str = TOWER,
    markdown: bool = False,
) -> list[BudgetCost]:
    """Print the vision-token TFLOPs of a VLM's LLM at token budgets, with the selector's cost.

    FLOPs follow the FastV/PyramidDrop convention of the paper's §5.3 (a multiply-accumulate
    counts as one): per layer 4nd² + 2n²d + 3ndm over the n visual tokens kept, plus the
    selector run once on each crop. Give the budgets as ``--tokens`` or ``--keep``.

    Args:
        model: LLM preset: llava-next-vicuna-7b, llava-next-mistral-7b, internvl3-2b,
            internvl3-8b. ``--hidden`` etc. override its fields.
        tokens: Visual tokens kept per image, comma-separated, e.g. ``2880,1440,640``.
        keep: Shares of the visual tokens kept, comma-separated, e.g. ``1.0,0.5,0.1``
            (default when ``--tokens`` is not given: 1.0,0.5,0.4,0.25,0.1).
        selector: The selector whose cost is added: an export folder, its config.json, or a
            fit preset (``conf/llava_next.yaml``). Without it the selector column is 0.
        hidden: LLM hidden size d.
        ffn: LLM FFN intermediate size m.
        layers: LLM decoder layers.
        crops: Crops per image (the selector runs on each).
        tokens_per_crop: Visual tokens each crop hands the LLM.
        method: ``tower`` (tokens chosen before the LLM: the selector, every baseline of
            ``vtsel.methods``), ``fastv`` or ``pdrop`` (dropped inside the LLM; ``tokens`` is
            then the mean over its layers).
        markdown: Print a Markdown table instead of the terminal table.
    """
    overrides = {"hidden": hidden, "ffn": ffn, "layers": layers, "crops": crops,
                 "tokens_per_crop": tokens_per_crop}
    language_model = _language_model(model, overrides)
    if tokens is not None and keep is not None:
        raise ValueError("give the budgets as --tokens or as --keep, not both")
    if tokens is not None:
        budgets = comma_list(tokens, int, "--tokens")
    else:
        ratios = comma_list(keep or "1.0,0.5,0.4,0.25,0.1", float, "--keep")
        if not all(0.0 < ratio <= 1.0 for ratio in ratios):
            raise ValueError(f"--keep ratios must lie in (0, 1], got {keep}")
        budgets = [tokens_for_ratio(language_model.full_tokens, ratio) for ratio in ratios]
    if method not in (TOWER, *LLM_METHODS):
        raise ValueError(f"unknown --method {method!r}; valid: {TOWER}, {', '.join(LLM_METHODS)}")
    llm_method = None if method == TOWER else build_llm_method(method)
    if llm_method is not None and selector:
        raise ValueError(f"--selector adds the selector's cost to tower selection; --method "
                         f"{method} drops tokens inside the LLM and runs no selector")
    per_crop = selector_macs_per_crop(selector_config_of(selector)) if selector else 0
    costs = budget_costs(language_model, budgets, per_crop, llm_method)
    if markdown:
        print(markdown_table(costs))
    else:
        title = (f"{model}: d={language_model.hidden}, m={language_model.ffn}, "
                 f"{language_model.layers} layers, {language_model.crops} crops x "
                 f"{language_model.tokens_per_crop} tokens")
        if llm_method is not None:
            title += f"; {method}: tokens = mean over the layers"
        Console().print(rich_table(costs, title))
    return costs
