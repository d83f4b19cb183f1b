"""Spread: the first ``keep`` positions of a farthest-point order of the grid, for every crop.

A content-free baseline, like the uniform grid, but nested: the positions kept at a small budget
stay kept at every larger one, and each new one goes where the kept set leaves the widest gap.
It is the trained selector's coverage prior on its own (``vtsel.models.coverage``), so it shows
what the selector's learned, content-dependent part adds. No source paper: farthest-point
sampling is the classic way to cover a domain with few samples.
"""

from __future__ import annotations

import torch

from vtsel.methods.base import SelectionMethod, check_grid
from vtsel.models.coverage import farthest_point_order


class SpreadOrder(SelectionMethod):
    """Keep the first ``keep`` positions of the grid's farthest-point order.

    Args:
        grid: (H, W) token grid of one crop; L must equal H*W.
    """

    name = "spread"

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.order = farthest_point_order(self.grid)  # (L,)

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        batch, num_tokens, _ = features.shape
        check_grid(self.name, self.grid, num_tokens)
        kept_idx = self.order[:keep].sort().values.to(features.device)  # (keep,)
        return kept_idx.repeat(batch, 1)  # (B, keep)
