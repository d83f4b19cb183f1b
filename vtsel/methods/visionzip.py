"""VisionZip-style selection: dominant tokens by CLS attention plus merged contextual tokens.

Source: Senqiao Yang, Yukang Chen, Zhuotao Tian, Chengyao Wang, Jingyao Li, Bei Yu, Jiaya Jia,
"VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
arXiv 2412.04467. VisionZip keeps the "dominant" tokens that receive the most [CLS] attention
in the vision encoder, then builds a few "contextual" tokens from the rest: it picks evenly
spaced targets among them and merges every other remaining token into its most similar target.
With LLaVA-1.5 it keeps 54 + 10, 108 + 20 and 162 + 30 tokens, a dominant share of 54/64.

This is an approximation, not a reproduction:
- The attention is whatever single CLS→patch map the shards carry (VisionZip averages heads
  of the penultimate layer, which is what `vtsel extract` should store for it).
- Similarity is the cosine of the raw output tokens; VisionZip compares the attention keys.
- A contextual token becomes the plain average of its target and the tokens merged into it;
  the authors' exact aggregation is not reproduced.
- Targets are the centres of equal slices of the remaining tokens in row-major order.
``select`` returns the kept positions (dominant + contextual targets) like every method;
``merge`` turns them into the features VisionZip would hand on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vtsel.methods.base import SelectionMethod, evenly_spaced, sorted_topk

LLAVA_DOMINANT_SHARE = 54 / 64  # VisionZip's split for LLaVA-1.5 (also 108/128, 162/192)


class VisionZipStyle(SelectionMethod):
    """Keep the top-attention tokens and evenly spaced contextual tokens (see module doc).

    Args:
        dominant_fraction: Share of the budget given to dominant tokens; at least one token
            stays contextual whenever ``keep >= 2``, since contextual tokens are the method.
    """

    name = "visionzip"
    needs_attention = True

    def __init__(self, dominant_fraction: float = LLAVA_DOMINANT_SHARE) -> None:
        if not 0.0 < dominant_fraction <= 1.0:
            raise ValueError(f"dominant_fraction={dominant_fraction} must lie in (0, 1]")
        self.dominant_fraction = dominant_fraction

    def num_dominant(self, keep: int) -> int:
        """Dominant tokens for a budget of ``keep``: the rest of the budget is contextual."""
        return 1 if keep == 1 else min(keep - 1, max(1, round(self.dominant_fraction * keep)))

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        num_tokens = features.shape[1]
        num_dominant = self.num_dominant(keep)
        dominant_idx = sorted_topk(attention.float(), num_dominant)  # (B, n_dom)
        rest_idx = _complement(dominant_idx, num_tokens)  # (B, L - n_dom) ascending
        targets = evenly_spaced(num_tokens - num_dominant, keep - num_dominant, features.device)
        contextual_idx = rest_idx[:, targets]  # (B, n_ctx)
        return torch.cat([dominant_idx, contextual_idx], dim=-1).sort(dim=-1).values

    def merge(
        self, features: torch.Tensor, indices: torch.Tensor, attention: torch.Tensor
    ) -> torch.Tensor:
        """Features (B, keep, C) of ``select``'s tokens, each contextual one merged with its group.

        Dominant tokens are returned unchanged. Every token ``indices`` drops joins the kept
        contextual token most similar to it by cosine, which becomes the average of itself and
        its joiners. ``attention`` must be the map given to ``select``: the sorted indices no
        longer say which tokens are dominant, the attention ranking recovers it exactly.

        Args:
            features: Raw tokens (B, L, C).
            indices: ``select(features, keep, attention)``, (B, keep).
            attention: CLS→patch attention (B, L).
        """
        batch, keep = indices.shape
        dominant_idx = sorted_topk(attention.float(), self.num_dominant(keep))  # (B, n_dom)
        is_dominant = torch.zeros_like(attention, dtype=torch.bool).scatter_(1, dominant_idx, True)
        kept_is_dominant = is_dominant.gather(1, indices)  # (B, keep)
        if (kept_is_dominant.sum(-1) != dominant_idx.shape[1]).any():
            raise ValueError(f"{self.name}: indices do not hold this attention's dominant tokens")
        kept_feats = features.gather(1, indices[..., None].expand(-1, -1, features.shape[-1]))
        contextual_idx = indices[~kept_is_dominant].view(batch, -1)  # (B, n_ctx)
        if contextual_idx.shape[1] == 0:
            return kept_feats
        merged = _merge_into_targets(features, contextual_idx, indices)  # (B, n_ctx, C)
        return kept_feats.masked_scatter(~kept_is_dominant[..., None], merged)


def _complement(picked_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Positions (B, L - n) not in ``picked_idx`` (B, n) (distinct per row), ascending."""
    batch = picked_idx.shape[0]
    not_picked = torch.ones(batch, num_tokens, dtype=torch.bool, device=picked_idx.device)
    not_picked.scatter_(1, picked_idx, False)
    return not_picked.nonzero()[:, 1].view(batch, -1)


def _merge_into_targets(
    features: torch.Tensor, target_idx: torch.Tensor, kept_idx: torch.Tensor
) -> torch.Tensor:
    """Average each target token (B, T) with the dropped tokens closest to it by cosine.

    Tokens in ``kept_idx`` (B, k) are not dropped and join no target. Returns (B, T, C) in the
    features' dtype; sums are taken in float32.
    """
    feats = features.float()  # (B, L, C)
    channels = feats.shape[-1]
    target_feats = feats.gather(1, target_idx[..., None].expand(-1, -1, channels))  # (B, T, C)
    similarity = F.normalize(feats, dim=-1) @ F.normalize(target_feats, dim=-1).transpose(1, 2)
    nearest_target = similarity.argmax(dim=-1)  # (B, L)
    is_dropped = torch.ones_like(nearest_target, dtype=torch.bool).scatter_(1, kept_idx, False)
    weight = is_dropped.float()  # (B, L) 1 = merged into its nearest target
    sums = target_feats.scatter_add(
        1, nearest_target[..., None].expand(-1, -1, channels), feats * weight[..., None]
    )  # (B, T, C) target + its dropped tokens
    counts = torch.ones_like(target_feats[..., 0]).scatter_add(1, nearest_target, weight)  # (B, T)
    return (sums / counts[..., None]).to(features.dtype)
