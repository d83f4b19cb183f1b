"""The methods an evaluation compares, built from their names and checked against the data.

Every method of ``vtsel.methods`` is named by its registry name; ``selector`` is the trained
selector of an export folder. A method that ranks by encoder attention is skipped, with a note,
when the shards carry none; one that ranks by the attention tokens receive (HiPrune) ranks by
the CLS map instead, with a note, when the shards store only that (no ``recv_attn.npy``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vtsel.contract import FeatureContract
from vtsel.inference import TokenSelector
from vtsel.methods import METHODS, LearnedSelection, SelectionMethod
from vtsel.methods.base import RECEIVED_ATTENTION
from vtsel.methods.registry import check_method_names

BASELINES = ("random", "uniform", "spread", "norm", "divprune", "pact", "visionzip", "hiprune")


def method_names(methods: Sequence[str] | None, selector: str | Path | None) -> list[str]:
    """The names to evaluate: the baselines (+ ``selector`` when an export is given) by default.

    Raises:
        ValueError: An unknown name, a repeated one, or ``selector`` without an export.
    """
    names = list(methods) if methods else [*BASELINES, *(["selector"] if selector else [])]
    check_method_names(names)
    if len(set(names)) != len(names):
        raise ValueError(f"methods are listed more than once: {names}")
    if "selector" in names and selector is None:
        raise ValueError("method 'selector' needs the exported selector's folder (--selector)")
    return names


@dataclass
class Lineup:
    """The methods to score, by name, and why any asked-for method is left out."""

    methods: dict[str, SelectionMethod]
    notes: list[str]


def build_lineup(
    names: Sequence[str],
    grid: tuple[int, int],
    contract: FeatureContract,
    has_attention: bool,
    selector: str | Path | None,
    device: torch.device,
    seed: int = 0,
    has_received_attention: bool = False,
) -> Lineup:
    """Build each named method for this grid, seed and device; skip attention methods without
    attention, and note the ones that fall back to the CLS map. ``random`` draws each crop's
    subset from the seed and the crop's content, so a crop keeps the same tokens in any batch
    and in a resumed run."""
    methods: dict[str, SelectionMethod] = {}
    notes = []
    for name in names:
        method_class = METHODS[name]
        if method_class.needs_attention and not has_attention:
            notes.append(
                f"{name}: skipped, it ranks tokens by the encoder's attention and these shards "
                f"store none (no attn.npy); extract with attention to include it"
            )
            continue
        if method_class.attention_source == RECEIVED_ATTENTION and not has_received_attention:
            notes.append(
                f"{name}: ranks by the CLS attention (attn.npy) in every layer role, since these "
                f"shards store no received attention (recv_attn.npy); extract with "
                f"received_attention: true for its own maps"
            )
        if name == "selector":
            methods[name] = LearnedSelection(_load_selector(selector, contract).to(device))
            continue
        offered = {"grid": grid, "seed": seed}  # given to the methods whose constructor takes it
        accepted = inspect.signature(method_class).parameters
        methods[name] = method_class(**{k: v for k, v in offered.items() if k in accepted})
    return Lineup(methods, notes)


def _load_selector(directory: str | Path, contract: FeatureContract) -> TokenSelector:
    """The exported selector, refused if it was trained on other features than the judge."""
    selector = TokenSelector.from_pretrained(directory)
    contract.check(
        selector.contract, f"the selector in {directory} was trained on",
        "the judge and shards are", "evaluate it on its own encoder's features",
    )
    return selector

