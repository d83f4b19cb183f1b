"""HiPrune-style selection: attention anchors, their grid neighbours, then more attention.

Source: Jizhihui Liu, Feiyi Du, Guangdao Zhu, Niu Lian, Jun Li, Bin Chen, "HiPrune:
Training-Free Visual Token Pruning via Hierarchical Attention in Vision-Language Models",
2025, arXiv 2508.00553. HiPrune observes that middle layers of a ViT attend to object-centric
regions and deep layers to global context, and keeps three kinds of tokens: anchors (highest
attention in an object-centric middle layer), buffers (tokens spatially adjacent to the
anchors, for continuity) and registers (tokens with strong attention in a deep layer, for
global summary). It is training-free and needs no [CLS] token.

Simplified here, because a vtsel shard carries at most one attention map (B, L):
- anchors, buffers and registers are all ranked by that one map, so registers are simply the
  highest-attention tokens outside anchors and buffers;
- "adjacent" is taken as the 4-neighbourhood (up, down, left, right) on the (H, W) grid;
- the budget split (``anchor_fraction`` of the budget for anchors, up to 4 buffers each, the
  rest registers; buffers ranked by attention when they do not all fit) is our choice. We do
  not know the paper's exact split, layer indices or tie rules, and did not reproduce them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vtsel.methods.base import SelectionMethod, check_grid, sorted_topk


class HiPruneStyle(SelectionMethod):
    """Keep attention anchors, then their grid neighbours, then top attention (see module doc).

    Args:
        grid: (H, W) token grid of one crop; L must equal H*W.
        anchor_fraction: Share of the budget given to anchor tokens (at least one). With 0.1,
            anchors and their buffers take at most half the budget.
    """

    name = "hiprune"
    needs_attention = True

    def __init__(self, grid: tuple[int, int], anchor_fraction: float = 0.1) -> None:
        if not 0.0 < anchor_fraction <= 1.0:
            raise ValueError(f"anchor_fraction={anchor_fraction} must lie in (0, 1]")
        self.grid = tuple(grid)
        self.anchor_fraction = anchor_fraction

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        check_grid(self.name, self.grid, features.shape[1])
        num_anchors = max(1, round(self.anchor_fraction * keep))
        anchor_idx = sorted_topk(attention.float(), num_anchors)  # (B, n_anchor)
        is_anchor = torch.zeros_like(attention, dtype=torch.bool).scatter_(1, anchor_idx, True)
        is_buffer = _grid_neighbours(is_anchor, self.grid) & ~is_anchor  # (B, L)
        # Tiers make one top-k do all three steps: every anchor outranks every buffer, which
        # outranks every other token; within a tier the attention rank (in [0, 1)) decides.
        tier = is_anchor.double() * 2 + is_buffer.double()  # (B, L)
        attention_rank = attention.argsort(dim=-1).argsort(dim=-1).double() / attention.shape[1]
        return sorted_topk(tier + attention_rank, keep)


def _grid_neighbours(is_marked: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, L) with a marked token directly above, below, left or right on the grid."""
    height, width = grid
    marked = F.pad(is_marked.view(-1, height, width), (1, 1, 1, 1))  # (B, H+2, W+2), False pad
    beside_marked = (
        marked[:, :-2, 1:-1] | marked[:, 2:, 1:-1] | marked[:, 1:-1, :-2] | marked[:, 1:-1, 2:]
    )  # (B, H, W): marked above | below | left | right
    return beside_marked.flatten(1)
