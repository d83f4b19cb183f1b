"""The Feature Selector (paper §4.1.1): scores every token and draws a keep/drop mask."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vtsel.models.blocks import TokenTransformer

MaskEstimator = Literal["gumbel", "straight_through"]


@dataclass
class Selection:
    """What the selector hands the reconstructor."""

    selected: torch.Tensor  # (B, L, C) kept tokens, dropped ones replaced by the mask embedding
    mask: torch.Tensor  # (B, L) 1 = keep, 0 = drop; carries the estimator's gradient in training
    keep_logits: torch.Tensor  # (B, L) keep-minus-drop logit, the ranking used at inference


class FeatureSelector(nn.Module):
    """Transformer over encoder tokens with a two-way (drop, keep) head.

    Features are standardised per token (LayerNorm without affine) before anything else:
    encoders such as CLIP carry a few channels with activations hundreds of times larger than the
    rest, which would otherwise dominate both the selector's input and the reconstruction loss.
    The same normalised features are the reconstruction target, so ``normalize`` is public.

    Args:
        feature_dim: Width C of the encoder's tokens.
        grid_size: (H, W) token grid of one crop; L = H*W.
        dim: Width of the transformer.
        depth: Number of transformer layers (paper: 4).
        num_heads: Attention heads.
        tau: Gumbel-Softmax temperature. It does not change which mask is drawn (hard samples
            keep a token with probability sigmoid(keep logit) at any tau), only how the
            gradient spreads over the logits: 2 gave the selector a clearer edge over random
            selection than 1, and 0.3 let the keep ratio run to 1 (see README, "Choices").
        estimator: ``gumbel`` (paper) or ``straight_through`` (appendix B.1 ablation: softmax
            without Gumbel noise, hard argmax forward, soft gradient backward).
        init_keep_ratio: Keep probability of every token at initialisation, set through the head's
            bias; starting inside the band (q, p) means the regulariser is silent at step 0 and
            the reconstruction loss alone decides which tokens matter.
    """

    def __init__(
        self,
        feature_dim: int,
        grid_size: tuple[int, int],
        dim: int = 512,
        depth: int = 4,
        num_heads: int = 8,
        tau: float = 2.0,
        estimator: MaskEstimator = "gumbel",
        init_keep_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < init_keep_ratio < 1.0:
            raise ValueError(f"init_keep_ratio must lie in (0, 1), got {init_keep_ratio}")
        self.feature_dim = feature_dim
        self.grid_size = tuple(grid_size)
        self.tau = tau
        self.estimator = estimator
        self.trunk = TokenTransformer(feature_dim, dim, depth, num_heads, self.grid_size)
        self.head = nn.Linear(dim, 2)  # logits for (drop, keep)
        nn.init.trunc_normal_(self.head.weight, std=0.02)  # small: logits start near the bias
        keep_bias = math.log(init_keep_ratio / (1 - init_keep_ratio))
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([0.0, keep_bias]))
        self.mask_embedding = nn.Parameter(torch.zeros(feature_dim))  # E_masked, shared by all

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-token standardisation of raw encoder features (B, L, C) -> (B, L, C)."""
        return F.layer_norm(feats, (self.feature_dim,))

    def head_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """(drop, keep) logits for normalised features: (B, L, C) -> (B, L, 2)."""
        return self.head(self.trunk(normed))

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Keep-minus-drop logit per token of raw features: (B, L, C) -> (B, L). Higher = keep."""
        logits = self.head_logits(self.normalize(feats))
        return logits[..., 1] - logits[..., 0]

    def draw_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard 0/1 keep mask (B, L) from (B, L, 2) logits, differentiable by the estimator."""
        if self.estimator == "gumbel":
            return F.gumbel_softmax(logits, tau=self.tau, hard=True)[..., 1]
        soft = (logits / self.tau).softmax(dim=-1)
        hard = F.one_hot(soft.argmax(dim=-1), 2).to(soft.dtype)
        return (hard - soft.detach() + soft)[..., 1]

    def apply_mask(self, normed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace dropped tokens by the shared mask embedding: (B, L, C), (B, L) -> (B, L, C)."""
        keep = mask.unsqueeze(-1).to(normed.dtype)
        return keep * normed + (1 - keep) * self.mask_embedding.to(normed.dtype)

    def forward(self, normed: torch.Tensor, mask: torch.Tensor | None = None) -> Selection:
        """Select from normalised features (B, L, C).

        Without ``mask`` the mask is drawn by the estimator (training) or is ``keep_logit > 0``
        (eval). A given ``mask`` (B, L) (top-k, random, ...) is applied as it is.
        """
        logits = self.head_logits(normed)  # (B, L, 2)
        keep_logits = logits[..., 1] - logits[..., 0]  # (B, L)
        if mask is None:
            mask = self.draw_mask(logits) if self.training else (keep_logits > 0).to(normed.dtype)
        return Selection(self.apply_mask(normed, mask), mask, keep_logits)


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """0/1 mask (B, L) keeping the ``keep`` highest-scoring tokens of each row of (B, L)."""
    keep = max(1, min(keep, scores.shape[-1]))
    idx = scores.topk(keep, dim=-1).indices  # (B, k)
    return torch.zeros_like(scores).scatter_(-1, idx, 1.0)


def tokens_for_ratio(num_tokens: int, ratio: float) -> int:
    """Token budget for a keep ratio, at least one token."""
    return max(1, round(num_tokens * ratio))
