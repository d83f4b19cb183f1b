"""The Feature Selector (paper §4.1.1): scores every token and draws a keep/drop mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vtsel.models.blocks import TokenTransformer, normalize_tokens
from vtsel.models.config import SelectorConfig
from vtsel.models.coverage import coverage_prior


@dataclass
class SelectorOutput:
    """What the selector hands the reconstructor."""

    mask: torch.Tensor  # (B, L) 1 = keep, 0 = drop; carries the estimator's gradient in training
    keep_logits: torch.Tensor  # (B, L) keep-minus-drop logit, the ranking used at inference


class FeatureSelector(nn.Module):
    """Transformer over encoder tokens with a two-way (drop, keep) head and a coverage prior.

    Raw features are standardised per token first (``normalize``, ``blocks.normalize_tokens``).

    The keep logit is the head's keep-minus-drop logit plus ``coverage`` times the grid's
    coverage prior (``coverage.coverage_prior``: 0 for the first position of a farthest-point
    order, ``-log(1 + rank)`` after). The head learns what content is worth keeping; the prior
    spreads the first picks over the crop, which a score of content alone cannot do (see
    README, "Choices"). ``coverage`` is fixed: learned, it grew until the prior alone ranked the
    tokens (eq. 8's reconstruction term pushes every logit down early in training, and a larger
    weight lowers all but the first). 0 turns the prior off.

    ``tau`` does not change which mask is drawn (hard samples keep a token with probability
    sigmoid(keep logit) at any tau), only how the gradient spreads over the logits. The
    ``straight_through`` estimator is softmax without Gumbel noise, hard argmax forward, soft
    gradient backward. ``init_keep_ratio`` is set through the head's bias, so inside the band
    (q, p) the regulariser is silent at step 0 and reconstruction alone decides which tokens
    matter.

    Args:
        config: Input contract and architecture (``SelectorConfig``).
    """

    def __init__(self, config: SelectorConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = TokenTransformer(
            config.feature_dim, config.dim, config.depth, config.num_heads, config.grid_size
        )
        self.head = nn.Linear(config.dim, 2)  # logits for (drop, keep)
        nn.init.trunc_normal_(self.head.weight, std=0.02)  # small: logits start near the bias
        prior = coverage_prior(config.grid_size)  # (L,) on the CPU, also for a model on meta
        keep_bias = _bias_for_keep_ratio(config.init_keep_ratio, config.coverage * prior)
        self.register_buffer("prior", prior.to(self.head.weight.device), persistent=False)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([0.0, keep_bias]))

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-token standardisation of raw encoder features (B, L, C) -> (B, L, C)."""
        return normalize_tokens(feats)

    def head_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """(drop, keep) logits for normalised features: (B, L, C) -> (B, L, 2), prior included."""
        logits = self.head(self.trunk(normed))  # (B, L, 2)
        prior = (self.config.coverage * self.prior).to(logits.dtype)  # (L,)
        return logits + torch.stack([torch.zeros_like(prior), prior], dim=-1)

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Keep-minus-drop logit per token of raw features: (B, L, C) -> (B, L). Higher = keep."""
        logits = self.head_logits(self.normalize(feats))
        return logits[..., 1] - logits[..., 0]

    def draw_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard 0/1 keep mask (B, L) from (B, L, 2) logits, differentiable by the estimator."""
        tau = self.config.tau
        if self.config.estimator == "gumbel":
            return F.gumbel_softmax(logits, tau=tau, hard=True)[..., 1]
        soft = (logits / tau).softmax(dim=-1)
        hard = F.one_hot(soft.argmax(dim=-1), 2).to(soft.dtype)
        return (hard - soft.detach() + soft)[..., 1]

    def forward(self, normed: torch.Tensor) -> SelectorOutput:
        """Select from normalised features (B, L, C): the estimator's mask in training,
        ``keep_logit > 0`` in eval."""
        logits = self.head_logits(normed)  # (B, L, 2)
        keep_logits = logits[..., 1] - logits[..., 0]  # (B, L)
        mask = self.draw_mask(logits) if self.training else (keep_logits > 0).to(normed.dtype)
        return SelectorOutput(mask, keep_logits)


def _bias_for_keep_ratio(keep_ratio: float, prior: torch.Tensor) -> float:
    """The keep bias b with mean(sigmoid(b + prior)) = keep_ratio over the L positions."""
    low, high = -100.0, 100.0
    for _ in range(100):  # bisection: the mean is increasing in b
        middle = (low + high) / 2
        if torch.sigmoid(middle + prior.double()).mean().item() < keep_ratio:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """0/1 mask (B, L) keeping the ``keep`` highest-scoring tokens of each row of (B, L)."""
    keep = max(1, min(keep, scores.shape[-1]))
    idx = scores.topk(keep, dim=-1).indices  # (B, k)
    return torch.zeros_like(scores).scatter_(-1, idx, 1.0)


def tokens_for_ratio(num_tokens: int, ratio: float) -> int:
    """Token budget for a keep ratio, at least one token."""
    return max(1, round(num_tokens * ratio))
