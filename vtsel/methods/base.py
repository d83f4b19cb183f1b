"""The interface every token-selection baseline implements, and the helpers they share.

An evaluation compares the trained selector against these methods under the same per-crop
budget, so they all take the same inputs (raw encoder tokens, a token count, optionally the
encoder's attention maps) and return the same thing: kept grid positions in spatial order, one
row per crop. Spatial order matters because a VLM consumes the kept tokens as a sequence whose
order carries position; it also makes two methods' outputs comparable by equality.

Some methods hand on more than a subset: VisionZip (and PACT) merge dropped tokens into kept
ones. ``kept_features`` says what a method hands on at its kept positions (by default the
tokens themselves), so the evaluation's judge and the VLM integrations read every method's
output through one call instead of knowing which methods merge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch

from vtsel.models.selector import topk_mask

CLS_ATTENTION = "attention"  # batch key: the feature layer's CLS→patch attention (B, L)
RECEIVED_ATTENTION = "received_attention"  # batch key: attention patches receive (B, 2, L)


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
    attention_source: ClassVar[str] = CLS_ATTENTION
    """Which stored attention the method ranks by: the feature layer's CLS→patch row
    (``CLS_ATTENTION``) or the attention each patch receives (``RECEIVED_ATTENTION``); see
    ``attention_input``."""

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

    def kept_features(
        self,
        features: torch.Tensor,
        indices: torch.Tensor,
        attention: torch.Tensor | None = None,
        metric: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the method hands on (B, keep, C) for ``indices = select(features, keep,
        attention)``: the kept tokens unchanged, unless the method merges (VisionZip, PACT)
        and overrides this to fold the dropped tokens into the kept ones. ``metric`` (B, L, D)
        is what a merge measures similarity on where the caller has it (VisionZip: the
        feature layer's attention keys); None: the features themselves."""
        return gather_tokens(features, indices)

    def kept_on_grid(
        self, features: torch.Tensor, indices: torch.Tensor, attention: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``features`` (B, L, C) with the kept positions holding ``kept_features``: what a
        consumer that reads tokens by grid position (the judge, a VLM layout) must be given."""
        kept = self.kept_features(features, indices, attention).to(features.dtype)  # (B, k, C)
        return features.scatter(1, indices[..., None].expand(-1, -1, features.shape[-1]), kept)

    @abstractmethod
    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        """``select`` on inputs already checked: (B, L, C), 1 <= keep <= L -> (B, keep)."""


def attention_input(
    method: SelectionMethod, maps: Mapping[str, torch.Tensor | None]
) -> torch.Tensor | None:
    """The attention ``method`` ranks by among the ``maps`` stored with a batch (keyed by
    ``CLS_ATTENTION`` (B, L) and ``RECEIVED_ATTENTION`` (B, 2, L)): its own source when the
    shards have it, else the CLS map (older shards), None without either."""
    own = maps.get(method.attention_source)
    return own if own is not None else maps.get(CLS_ATTENTION)


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows (B, k, C) of ``tokens`` (B, L, C) at ``indices`` (B, k)."""
    return tokens.gather(1, indices[..., None].expand(-1, -1, tokens.shape[-1]))


def sorted_topk(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (B, keep) of the ``keep`` highest scores of each row of (B, L), ascending.

    Built on the selector's ``topk_mask`` so that baselines and the trained selector break
    ties and count budgets identically; reading the mask's nonzeros row by row yields the
    positions already in spatial order.
    """
    if keep == 0:  # VisionZip with a CLS slot may leave no patch dominant
        return torch.zeros(scores.shape[0], 0, dtype=torch.long, device=scores.device)
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
