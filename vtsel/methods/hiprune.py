"""HiPrune: anchors from an object-centric middle layer, their neighbours, registers from the end.

Source: Jizhihui Liu, Feiyi Du, Guangdao Zhu, Niu Lian, Jun Li, Bin Chen, "HiPrune:
Training-Free Visual Token Pruning via Hierarchical Attention in Vision-Language Models",
arXiv 2508.00553 (2025). Checked against the abstract and the authors' released code
(github.com/Danielement321/HiPrune: the README's method and hyperparameter table, and LLaVA's
``encode_images``); the paper's method section itself was not at hand. Middle layers of a ViT
attend to the main objects, deep layers spread attention over the image; HiPrune keeps, in
this order:

1. anchors: the ``round(alpha * keep / 5)`` tokens with the highest attention in the object
   layer (α, "the proportion of anchor and buffer tokens", is 0.1 by default: anchors and
   buffers take a tenth of the budget together, 5 tokens per anchor);
2. buffers: each anchor's 4 grid neighbours (above, below, left, right);
3. registers: the rest of the budget, the tokens with the highest attention in the output
   layer (the layer the features come from) among those not kept yet.

The attention a token "has" in a layer is the attention it receives, averaged over heads and
over all queries (the column mean of the head-averaged map, CLS column dropped) — not the CLS
row, since HiPrune is meant for encoders without a CLS token. The object layer is the 9th of
CLIP ViT-L/14's 24 layers (1-based) for LLaVA-1.5 and LLaVA-NeXT; ``object_layer`` scales it
to other depths. ``select`` takes both maps stacked as (B, 2, L) = (object layer, output
layer): ``vtsel extract`` stores them as ``recv_attn.npy`` with ``received_attention: true``,
and the VLM integrations compute them. A single (B, L) map serves both roles, which keeps the
budget split but not the hierarchy: what ``vtsel eval`` falls back to on shards that store only
the CLS map (``attn.npy``).

Where this differs from the released code, deliberately:
- Neighbours are taken on the (H, W) grid: an anchor on the border keeps only the neighbours it
  has (2 in a corner, 3 on an edge). The code (LLaVA's ``encode_images``) adds -1, +1, -W and
  +W to flat indices, clamps them to [0, L - 1] and de-duplicates: an anchor at a row's end
  takes the next row's first token as "right", one at a row's start the previous row's last
  token as "left"; above the top row and below the bottom row clamp to the corner tokens 0 and
  L - 1, so a top- or bottom-edge anchor still gets 4 buffers, one of them that corner; fewer
  than 4 only when clamped indices coincide with each other or the anchor (anchors at or next
  to a corner). The paper says "spatially adjacent", which is what the grid gives.
- Anchors and buffers never overflow the budget: when they do not all fit (large ``alpha``,
  tiny budgets), anchors come first and buffers are ranked by the object layer's attention.
  The released code fails there (a negative register count).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from vtsel.methods.base import RECEIVED_ATTENTION, SelectionMethod, check_grid, sorted_topk

TOKENS_PER_ANCHOR = 5  # the anchor and its 4 buffers: HiPrune's alpha * keep / 5 anchors
OBJECT_LAYER_SHARE = 9 / 24  # HiPrune's object layer: the 9th of CLIP ViT-L/14's 24 (1-based)


def object_layer(num_layers: int, feature_layer: int) -> int:
    """HiPrune's object layer (1-based) in a ``num_layers`` tower read at ``feature_layer``
    (1-based block whose output the features are).

    The 9th of 24 scaled to the depth, ``max(1, round(9/24 * num_layers))`` with Python's
    round (4 of 12 blocks, 4.5 rounding to even; 15 of 40), and never past the feature layer,
    whose output is the last one computed.
    """
    return min(max(1, round(OBJECT_LAYER_SHARE * num_layers)), feature_layer)


class HiPruneStyle(SelectionMethod):
    """Keep object-layer anchors, their grid neighbours, then output-layer registers.

    Args:
        grid: (H, W) token grid of one crop; L must equal H*W.
        alpha: Share of the budget for anchors and their buffers together (HiPrune's α,
            0.1 by default): ``round(alpha * keep / 5)`` anchors, so at 0.1 budgets up to 25
            tokens get none and keep registers only, as in HiPrune.
    """

    name = "hiprune"
    needs_attention = True
    attention_maps: ClassVar[int] = 2  # (object layer, output layer)
    attention_source: ClassVar[str] = RECEIVED_ATTENTION

    def __init__(self, grid: tuple[int, int], alpha: float = 0.1) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must lie in [0, 1]")
        self.grid = tuple(grid)
        self.alpha = alpha

    def num_anchors(self, keep: int) -> int:
        """Anchor tokens for a budget of ``keep`` (Python's round, as the released code)."""
        return round(self.alpha * keep / TOKENS_PER_ANCHOR)

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        check_grid(self.name, self.grid, features.shape[1])
        object_attention, output_attention = _layer_maps(attention.float())  # (B, L) each
        is_anchor = torch.zeros_like(object_attention, dtype=torch.bool)  # (B, L)
        num_anchors = self.num_anchors(keep)
        if num_anchors > 0:
            is_anchor.scatter_(1, sorted_topk(object_attention, num_anchors), True)
        is_buffer = _grid_neighbours(is_anchor, self.grid) & ~is_anchor  # (B, L)
        # Tiers make one top-k do all three steps: every anchor outranks every buffer, which
        # outranks every register candidate. Within a tier a rank in [0, 1) decides: the
        # object layer's for anchors and buffers, the output layer's for the rest.
        tier = is_anchor.double() * 2 + is_buffer.double()  # (B, L)
        within_tier = torch.where(
            is_anchor | is_buffer, _rank_share(object_attention), _rank_share(output_attention)
        )
        return sorted_topk(tier + within_tier, keep)


def _layer_maps(attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(object layer, output layer) maps (B, L) from (B, 2, L), or one (B, L) map twice."""
    if attention.dim() == 2:
        return attention, attention
    return attention[:, 0], attention[:, 1]


def _rank_share(scores: torch.Tensor) -> torch.Tensor:
    """Each score's rank within its row of (B, L) divided by L: in [0, 1), higher is larger."""
    return scores.argsort(dim=-1).argsort(dim=-1).double() / scores.shape[-1]


def _grid_neighbours(is_marked: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, L) with a marked token directly above, below, left or right on the grid."""
    height, width = grid
    marked = F.pad(is_marked.view(-1, height, width), (1, 1, 1, 1))  # (B, H+2, W+2), False pad
    beside_marked = (
        marked[:, :-2, 1:-1] | marked[:, 2:, 1:-1] | marked[:, 1:-1, :-2] | marked[:, 1:-1, 2:]
    )  # (B, H, W): marked above | below | left | right
    return beside_marked.flatten(1)
