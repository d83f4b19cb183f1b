"""The trained selector (``vtsel export``'s folder) as one selection method among the others.

Evaluation and the VLM integrations treat every method alike; wrapping ``TokenSelector`` in the
``SelectionMethod`` interface lets "ours" stand in any list next to random or DivPrune.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vtsel.inference import TokenSelector
from vtsel.methods.base import SelectionMethod, sorted_topk


class LearnedSelection(SelectionMethod):
    """Keep the ``keep`` tokens with the highest keep logits of an exported selector.

    Args:
        selector: A loaded ``TokenSelector``, or the folder ``vtsel export`` wrote.
    """

    name = "selector"

    def __init__(self, selector: TokenSelector | str | Path) -> None:
        if not isinstance(selector, TokenSelector):
            selector = TokenSelector.from_pretrained(selector)
        self.selector = selector

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        keep_logits = self.selector.scores(features)  # (B, L)
        return sorted_topk(keep_logits, keep)
