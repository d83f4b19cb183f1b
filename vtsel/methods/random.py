"""Uniform random selection: the floor every other method has to beat.

The paper (§5) evaluates random selection at matched ratios on every task, to show how much a
task suffers from pruning at all; this is that baseline. No source paper beyond that.
"""

from __future__ import annotations

import torch

from vtsel.methods.base import SelectionMethod, sorted_topk


class RandomSelection(SelectionMethod):
    """Keep a uniformly random subset of ``keep`` tokens per crop.

    The top ``keep`` of i.i.d. uniform scores is a uniform random subset. Scores are drawn on a
    CPU generator seeded afresh on every call, so a given seed and batch shape give the same
    subsets on any device and in every evaluation run; rows of a batch draw different
    numbers from one stream, so a crop's subset depends on its row (unlike the deterministic
    methods, selecting a row alone does not reproduce its row in the batch).

    Args:
        seed: Seed of the generator.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        random_scores = torch.rand(features.shape[:2], generator=generator)  # (B, L)
        return sorted_topk(random_scores, keep).to(features.device)
