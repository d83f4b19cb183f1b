"""The interface every token-selection baseline implements, and the helpers they share.

An evaluation compares the trained selector against these methods under the same per-crop
budget, so they all take the same inputs (raw encoder tokens, a token count, optionally the
encoder's attention maps) and return the same thing: kept grid positions in spatial order, one
row per crop. Spatial order matters because a VLM consumes the kept tokens as a sequence whose
order carries position; it also makes two methods' outputs comparable by equality.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from vtsel.models.selector import topk_mask


class SelectionMethod(ABC):
    """A training-free way to keep ``keep`` of the L tokens of each crop.

    Subclasses implement ``_select`` on validated inputs; ``select`` (also ``__call__``) checks
    shapes and the budget once, here, so every method refuses bad input with the same words.
    """

    name: ClassVar[str]
    needs_attention: ClassVar[bool] = False
    attention_maps: ClassVar[int] = 1
    """Attention maps the method reads, one per encoder layer: ``select`` takes them stacked as
    (B, attention_maps, L) when above 1, and always accepts a single (B, L) map."""

    def select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Kept token indices (B, keep) long, ascending in each row.

        Args:
            features: Raw encoder tokens (B, L, C), one row per crop.
            keep: Tokens to keep per crop, 1 <= keep <= L.
            attention: Attention (B, L) each token receives in the encoder (which map, each
                method's docstring says), or (B, n, L) maps of n layers for a method with
                ``attention_maps`` = n > 1; required by methods with ``needs_attention``,
                ignored by the others.
        """
        if features.dim() != 3:
            raise ValueError(
                f"{self.name}: features must be (B, L, C), got {tuple(features.shape)}"
            )
        batch, num_tokens, _ = features.shape
        if not 1 <= keep <= num_tokens:
            raise ValueError(f"{self.name}: keep={keep} must lie in [1, {num_tokens}] (L)")
        if attention is None and self.needs_attention:
            raise ValueError(f"{self.name} ranks tokens by encoder attention: pass attention")
        if attention is not None:
            self._check_attention(attention, batch, num_tokens)
        return self._select(features, keep, attention)

    __call__ = select

    def _check_attention(self, attention: torch.Tensor, batch: int, num_tokens: int) -> None:
        """Refuse attention that is neither (B, L) nor, for multi-layer methods, (B, n, L)."""
        shapes = [(batch, num_tokens)]
        if self.attention_maps > 1:
            shapes.append((batch, self.attention_maps, num_tokens))
        if tuple(attention.shape) not in shapes:
            allowed = " or ".join(str(shape) for shape in shapes)
            raise ValueError(
                f"{self.name}: attention must be {allowed} for features of {batch} crops of "
                f"{num_tokens} tokens, got {tuple(attention.shape)}"
            )

    @abstractmethod
    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        """``select`` on inputs already checked: (B, L, C), 1 <= keep <= L -> (B, keep)."""


def sorted_topk(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (B, keep) of the ``keep`` highest scores of each row of (B, L), ascending.

    Built on the selector's ``topk_mask`` so that baselines and the trained selector break
    ties and count budgets identically; reading the mask's nonzeros row by row yields the
    positions already in spatial order.
    """
    keep_mask = topk_mask(scores, keep).bool()  # (B, L), exactly `keep` per row
    return keep_mask.nonzero()[:, 1].view(scores.shape[0], keep)


def evenly_spaced(count: int, picks: int, device: torch.device | None = None) -> torch.Tensor:
    """``picks`` distinct positions (picks,) spread evenly over ``range(count)``, ascending.

    Each position is the centre of one of ``picks`` equal slices, so the ends are not favoured
    over the middle (a pick of 1 lands in the middle, not at 0).
    """
    if not 0 <= picks <= count:
        raise ValueError(f"cannot pick {picks} distinct positions out of {count}")
    slice_centres = (torch.arange(picks, device=device, dtype=torch.float64) + 0.5) * count / picks
    return slice_centres.floor().long()


def check_grid(name: str, grid: tuple[int, int], num_tokens: int) -> None:
    """Refuse features whose token count does not fill the method's (H, W) grid."""
    height, width = grid
    if height * width != num_tokens:
        raise ValueError(
            f"{name}: grid {height}x{width} has {height * width} tokens, features have {num_tokens}"
        )
