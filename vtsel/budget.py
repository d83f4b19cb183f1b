"""How many tokens to keep, and which of them by score: the one budget type and the one mask
function of ``TokenSelector.select``, the VLM integrations and ``vtsel eval``.

A keep ratio is spelled ``keep`` everywhere (``Budget(keep=0.4)``, ``select(keep=0.4)``,
``--keep 0.4``), a count ``k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vtsel.models.selector import tokens_for_ratio


@dataclass(frozen=True)
class Budget:
    """How many tokens to keep: exactly one of ``keep``, ``k``, ``threshold``.

    Args:
        keep: Share of each crop's tokens to keep, in (0, 1]; rounded by ``tokens_for_ratio``,
            at least one token.
        k: Tokens to keep per crop (fewer if a crop has fewer).
        threshold: Keep every token whose keep logit exceeds it (0 = the selector's own
            decision); score-based methods only, and the number kept varies with the content.
        per_image: Spend one budget (``keep`` of all the group's tokens, or ``k`` in total)
            across the crops of an image, or the frames of a clip, by score: a busy crop keeps
            more than a blank one. Score-based methods only.
    """

    keep: float | None = None
    k: int | None = None
    threshold: float | None = None
    per_image: bool = False

    def __post_init__(self) -> None:
        given = {"keep": self.keep, "k": self.k, "threshold": self.threshold}
        if sum(value is not None for value in given.values()) != 1:
            raise ValueError(f"give exactly one of keep, k, threshold; got {given}")
        if self.keep is not None and (
            isinstance(self.keep, bool) or not 0.0 < self.keep <= 1.0
        ):
            raise ValueError(f"keep={self.keep!r} must lie in (0, 1]")
        if self.k is not None:
            if isinstance(self.k, bool) or not isinstance(self.k, int):
                raise ValueError(f"k={self.k!r} must be an int, the number of tokens to keep")
            if self.k < 1:
                raise ValueError(f"k={self.k}: keep at least one token")
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not math.isfinite(self.threshold):
                raise ValueError(f"threshold={self.threshold!r} must be a finite number")
            if self.per_image:
                raise ValueError("threshold with per_image: a threshold has no budget to share "
                                 "across crops; drop per_image")

    def tokens(self, available: int) -> int:
        """Tokens to keep out of ``available`` candidates (none when there are none)."""
        if available == 0:
            return 0
        if self.keep is not None:
            return tokens_for_ratio(available, self.keep)
        if self.k is not None:
            return min(self.k, available)
        raise ValueError("a threshold budget keeps a content-dependent number of tokens")

    def label(self, available: int) -> str:
        """``25% (144)``: the share and what it comes to out of ``available`` tokens."""
        share = f"{100 * self.keep:.3g}%" if self.keep is not None else f"k={self.k}"
        return f"{share} ({self.tokens(available)})"


def mask_from_scores(
    scores: torch.Tensor,
    budget: Budget,
    candidates: torch.Tensor | None = None,
    groups: list[slice] | None = None,
) -> torch.Tensor:
    """Keep mask (N, L) bool from keep scores (N, L): the top of each crop, of each group of
    crops (``budget.per_image``), or every score above the threshold; among ``candidates``
    (N, L) bool only (all tokens if None). ``groups`` are the row slices of crops that share
    one budget (all N rows if None). Ties go to the lower position."""
    if candidates is None:
        candidates = torch.ones_like(scores, dtype=torch.bool)
    if budget.threshold is not None:
        return (scores > budget.threshold) & candidates
    ranked = scores.float().masked_fill(~candidates, float("-inf"))  # (N, L)
    if budget.per_image:
        keep = torch.zeros_like(candidates)
        for rows in groups if groups is not None else [slice(0, scores.shape[0])]:
            pool = ranked[rows].flatten()  # (n*L,) the group's crops side by side
            pool_rank = pool.argsort(descending=True, stable=True).argsort()  # 0 = best
            group_keep = pool_rank < budget.tokens(int(candidates[rows].sum()))
            keep[rows] = group_keep.view_as(keep[rows])
        return keep
    per_crop = torch.tensor(
        [budget.tokens(available) for available in candidates.sum(dim=1).tolist()],
        device=scores.device,
    )  # (N,)
    rank = ranked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (N, L) 0 = best
    return rank < per_crop[:, None]
