"""Feature-norm top-k: keep the tokens with the largest activations.

A trivial, parameter-free ranking with no source paper of its own. It is here because ViT
tokens with large norms are known to be special (Darcet et al., "Vision Transformers Need
Registers", ICLR 2024, arXiv 2309.16588, find high-norm tokens that store global information),
and because it needs nothing but the features, so it bounds from below what a learned ranking
must add. In a vtsel prototype run it fell between the selector and random (README).
"""

from __future__ import annotations

import torch

from vtsel.methods.base import SelectionMethod, sorted_topk


class FeatureNormTopK(SelectionMethod):
    """Keep the ``keep`` tokens with the largest L2 norm (computed in float32)."""

    name = "norm"

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        token_norms = features.float().norm(dim=-1)  # (B, L)
        return sorted_topk(token_norms, keep)
