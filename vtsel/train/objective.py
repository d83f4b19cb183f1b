"""The training objective of paper eq. 8, with the appendix B.1 ablation selectable."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

Regularizer = Literal["band", "linear"]


@dataclass
class LossTerms:
    """Every term of the objective, kept apart so each can be logged."""

    total: torch.Tensor
    feature: torch.Tensor  # dist(F_rec, F)
    image: torch.Tensor  # dist(I_rec, I)
    keep_ratio: torch.Tensor  # L_pr, eq. 7: the share of tokens the mask keeps
    regularizer: torch.Tensor  # the L_pr penalty actually added
    reconstructor_loss: torch.Tensor | None = None  # decoupled: R on drawn mask families
    topk_loss: torch.Tensor | None = None  # reconstruction from the selector's top-k, if trained


def dropped_token_mse(
    feats_rec: torch.Tensor,  # (B, L, C)
    feats: torch.Tensor,  # (B, L, C) normalised target
    keep: torch.Tensor,  # (B, L) 1 = kept
) -> torch.Tensor:
    """Mean squared error over the dropped tokens of each crop (B,): what a kept set leaves to
    rebuild. A crop that drops nothing scores 0."""
    token_error = (feats_rec.float() - feats.float()).pow(2).mean(dim=-1)  # (B, L)
    dropped = 1.0 - keep.float()
    return (token_error * dropped).sum(dim=-1) / dropped.sum(dim=-1).clamp(min=1.0)


def band_penalty(
    keep_ratio: torch.Tensor, p: float, q: float, alpha_p: float, alpha_q: float
) -> torch.Tensor:
    """``alpha_p * max(L_pr, p) - alpha_q * min(L_pr, q)`` (eq. 4/8).

    Its gradient is +alpha_p above p (keep fewer), 0 inside [q, p] (reconstruction alone
    decides) and -alpha_q below q (keep more): a band rather than a pull towards zero, which is
    what stops the keep ratio from collapsing under Gumbel noise (appendix B.2).
    """
    return alpha_p * torch.clamp(keep_ratio, min=p) - alpha_q * torch.clamp(keep_ratio, max=q)


class SelectionObjective:
    """Reconstruction of features and image plus the keep-ratio penalty.

    ``dist`` is the mean squared error: the squared l2 distance averaged over elements, so the
    balance against the alpha-weighted penalty does not move with L, C or the image size.

    Args:
        p: Upper edge of the keep-ratio band.
        q: Lower edge of the keep-ratio band.
        alpha_p: Weight of the upper edge (alpha_1).
        alpha_q: Weight of the lower edge (alpha_2).
        regularizer: ``band`` (eq. 8) or ``linear`` (``alpha_p * L_pr``, the B.1 ablation).
        image_weight: Weight of the image term (1 in the paper).
    """

    def __init__(
        self,
        p: float = 0.6,
        q: float = 0.1,
        alpha_p: float = 0.1,
        alpha_q: float = 0.1,
        regularizer: Regularizer = "band",
        image_weight: float = 1.0,
    ) -> None:
        if not 0.0 <= q <= p <= 1.0:
            raise ValueError(f"the keep band needs 0 <= q <= p <= 1, got q={q}, p={p}")
        self.p, self.q = p, q
        self.alpha_p, self.alpha_q = alpha_p, alpha_q
        self.regularizer = regularizer
        self.image_weight = image_weight

    def penalty(self, keep_ratio: torch.Tensor) -> torch.Tensor:
        if self.regularizer == "linear":
            return self.alpha_p * keep_ratio
        return band_penalty(keep_ratio, self.p, self.q, self.alpha_p, self.alpha_q)

    def reconstruction(
        self,
        feats_rec: torch.Tensor,  # (B, L, C)
        feats: torch.Tensor,  # (B, L, C) normalised target
        image_rec: torch.Tensor,  # (B, 3, S, S)
        image: torch.Tensor,  # (B, 3, S, S)
        mask: torch.Tensor,  # (B, L)
    ) -> LossTerms:
        """The reconstruction terms alone (regularizer 0); ``penalized`` adds eq. 8's penalty for
        the learned mask."""
        feature = F.mse_loss(feats_rec.float(), feats.float())
        image_term = F.mse_loss(image_rec.float(), image.float())
        keep_ratio = mask.float().mean()
        total = feature + self.image_weight * image_term
        return LossTerms(total, feature, image_term, keep_ratio, torch.zeros_like(total))

    def penalized(self, terms: LossTerms) -> LossTerms:
        """Eq. 8: the reconstruction terms of the learned mask plus its keep-ratio penalty."""
        regularizer = self.penalty(terms.keep_ratio)
        return replace(terms, total=terms.total + regularizer, regularizer=regularizer)
