"""VisionZip: dominant tokens by CLS attention, plus contextual tokens merged from the rest.

Source: Senqiao Yang, Yukang Chen, Zhuotao Tian, Chengyao Wang, Jingyao Li, Bei Yu, Jiaya Jia,
"VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
arXiv 2412.04467: dominant token selection and contextual token merging, as the authors'
released code does them (github.com/dvlab-research/VisionZip, ``CLIPVisionTower_VisionZip``
in ``visionzip/clip_encoder.py``). VisionZip runs inside the vision encoder, at the layer the
features come from (LLaVA's penultimate):

1. dominant tokens: the tokens with the highest CLS→patch attention, summed over heads;
2. contextual tokens: the remaining tokens, in grid order, are split into targets at every
   ``step = max(1, R // n_ctx)``-th position from the first (R remaining, n_ctx targets) and
   the others; each other token joins the target whose key is most similar by cosine, and a
   contextual token is its target **plus the mean of the tokens that joined it** (the target
   alone when none did): ``target + Σ joiners / n``, not an average of target and joiners.

With LLaVA-1.5 it keeps 54 + 10, 108 + 20 and 162 + 30 tokens, a dominant share of 54/64.

The CLS slot. VisionZip spends one dominant slot on the CLS token and hands it to the LLM:
``visionzip(model, dominant=54, contextual=10)`` feeds CLS + 53 patches + 10 contextual
tokens, 64 in all. vtsel's features have no CLS token and ``keep`` always counts patch tokens,
so ``cls_slot`` says who pays for CLS:

- ``cls_slot=False`` (default; what ``vtsel eval`` and the integrations use): every dominant
  slot goes to a patch, so ``keep=64`` is 54 dominant patches + 10 contextual. Every method
  is then compared on the same number of patch tokens, and the LLM receives no CLS token,
  as the unpruned LLaVA-NeXT/InternVL never give it one.
- ``cls_slot=True``: ``keep`` patch tokens go beside a CLS token the caller hands on, and the
  split is VisionZip's for ``keep + 1`` tokens, the CLS taking one dominant slot: ``keep=63``
  is 53 dominant patches + 10 contextual, the very patches VisionZip keeps for 54 + 10.

Where else this differs from VisionZip:
- Similarity is on the attention keys (averaged over heads) in VisionZip; ``merge`` takes them
  as ``metric`` when the caller has them (the LLaVA-NeXT integration recomputes them from the
  feature layer's k projection), and falls back to the output tokens themselves where there are
  no such keys: ``vtsel eval``'s shards store tokens and attention maps, not keys, and
  InternVL's pixel-shuffled tokens each merge four tower tokens.
- The kept tokens are returned in grid order, each contextual token at its target's position;
  VisionZip hands the LLM the dominant tokens in grid order and then the contextual ones.
``select`` returns the kept positions (dominant + contextual targets) like every method;
``merge`` (the method's ``kept_features``) turns them into the features VisionZip hands on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vtsel.methods.base import SelectionMethod, gather_tokens, sorted_topk

LLAVA_DOMINANT_SHARE = 54 / 64  # VisionZip's split for LLaVA-1.5 (also 108/128, 162/192)


class VisionZipStyle(SelectionMethod):
    """Keep the top CLS-attention tokens and evenly spaced contextual targets (see module doc).

    ``attention`` is the CLS→patch attention (B, L) of the feature layer, summed or averaged
    over heads (the ranking is the same).

    Args:
        dominant_fraction: Share of the budget given to dominant tokens; at least one token
            stays contextual whenever ``keep >= 2``, since contextual tokens are the method.
        cls_slot: Whether a CLS token the caller hands on beside the ``keep`` patch tokens
            takes one of the dominant slots (VisionZip's count, module doc); False gives every
            dominant slot to a patch.
    """

    name = "visionzip"
    needs_attention = True

    def __init__(
        self, dominant_fraction: float = LLAVA_DOMINANT_SHARE, cls_slot: bool = False
    ) -> None:
        if not 0.0 < dominant_fraction <= 1.0:
            raise ValueError(f"dominant_fraction={dominant_fraction} must lie in (0, 1]")
        self.dominant_fraction = dominant_fraction
        self.cls_slot = cls_slot

    def num_dominant(self, keep: int) -> int:
        """Dominant patch tokens for ``keep`` patch tokens: the rest of them are contextual.

        With ``cls_slot`` the split is made for the ``keep + 1`` tokens the LLM receives and
        the CLS token takes one dominant slot (so it can leave no patch dominant).
        """
        total = keep + 1 if self.cls_slot else keep
        share = round(self.dominant_fraction * total)
        dominant = 1 if total == 1 else min(total - 1, max(1, share))
        return dominant - 1 if self.cls_slot else dominant

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        num_tokens = features.shape[1]
        num_dominant = self.num_dominant(keep)
        dominant_idx = sorted_topk(attention.float(), num_dominant)  # (B, n_dom)
        rest_idx = _complement(dominant_idx, num_tokens)  # (B, L - n_dom) ascending
        targets = contextual_targets(num_tokens - num_dominant, keep - num_dominant)
        contextual_idx = rest_idx[:, targets.to(features.device)]  # (B, n_ctx)
        return torch.cat([dominant_idx, contextual_idx], dim=-1).sort(dim=-1).values

    def merge(
        self,
        features: torch.Tensor,
        indices: torch.Tensor,
        attention: torch.Tensor | None = None,
        metric: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Features (B, keep, C) of ``select``'s tokens, each contextual one merged with its group.

        Dominant tokens are returned unchanged. Every token ``indices`` drops joins the kept
        contextual token most similar to it by cosine, which becomes itself plus the mean of
        its joiners (itself alone if none joined), as VisionZip computes it. ``attention``
        must be the map given to ``select``: the sorted indices no longer say which tokens
        are dominant, the attention ranking recovers it exactly.

        Args:
            features: Raw tokens (B, L, C).
            indices: ``select(features, keep, attention)``, (B, keep).
            attention: CLS→patch attention (B, L).
            metric: What similarity is measured on, (B, L, D): VisionZip's head-averaged
                attention keys of the feature layer. Defaults to ``features``.
        """
        if attention is None:
            raise ValueError(f"{self.name}: merging needs the attention given to select")
        metric = features if metric is None else metric
        if metric.dim() != 3 or metric.shape[:2] != features.shape[:2]:
            raise ValueError(
                f"{self.name}: metric must be (B, L, D) with (B, L) = {tuple(features.shape[:2])}"
                f", got {tuple(metric.shape)}"
            )
        batch, keep = indices.shape
        dominant_idx = sorted_topk(attention.float(), self.num_dominant(keep))  # (B, n_dom)
        is_dominant = torch.zeros_like(attention, dtype=torch.bool).scatter_(1, dominant_idx, True)
        kept_is_dominant = is_dominant.gather(1, indices)  # (B, keep)
        if (kept_is_dominant.sum(-1) != dominant_idx.shape[1]).any():
            raise ValueError(f"{self.name}: indices do not hold this attention's dominant tokens")
        kept_feats = gather_tokens(features, indices)  # (B, keep, C)
        contextual_idx = indices[~kept_is_dominant].view(batch, -1)  # (B, n_ctx)
        if contextual_idx.shape[1] == 0:
            return kept_feats
        merged = _merge_into_targets(features, metric, contextual_idx, indices)  # (B, n_ctx, C)
        return kept_feats.masked_scatter(~kept_is_dominant[..., None], merged)

    kept_features = merge  # what VisionZip hands on: dominant tokens + merged contextual ones


def contextual_targets(num_remaining: int, num_contextual: int) -> torch.Tensor:
    """Positions (n_ctx,) among the R remaining tokens that become contextual targets.

    VisionZip's rule: every ``max(1, R // n_ctx)``-th position from the first, the first n_ctx.
    """
    step = max(1, num_remaining // max(1, num_contextual))
    return torch.arange(num_contextual) * step


def _complement(picked_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Positions (B, L - n) not in ``picked_idx`` (B, n) (distinct per row), ascending."""
    batch = picked_idx.shape[0]
    not_picked = torch.ones(batch, num_tokens, dtype=torch.bool, device=picked_idx.device)
    not_picked.scatter_(1, picked_idx, False)
    return not_picked.nonzero()[:, 1].view(batch, -1)


def _merge_into_targets(
    features: torch.Tensor, metric: torch.Tensor, target_idx: torch.Tensor, kept_idx: torch.Tensor
) -> torch.Tensor:
    """Each target token (B, T) plus the mean of the dropped tokens closest to it by cosine.

    Closeness is measured on ``metric`` (B, L, D), the sums on ``features`` (B, L, C). Tokens
    in ``kept_idx`` (B, k) are not dropped and join no target; a target none joined is
    returned as it is. Returns (B, T, C) in the features' dtype; sums are taken in float32.
    """
    feats = features.float()  # (B, L, C)
    channels = feats.shape[-1]
    target_feats = gather_tokens(feats, target_idx)  # (B, T, C)
    unit_metric = F.normalize(metric.float(), dim=-1)  # (B, L, D)
    target_metric = gather_tokens(unit_metric, target_idx)  # (B, T, D)
    similarity = unit_metric @ target_metric.transpose(1, 2)  # (B, L, T)
    nearest_target = similarity.argmax(dim=-1)  # (B, L)
    is_dropped = torch.ones_like(nearest_target, dtype=torch.bool).scatter_(1, kept_idx, False)
    weight = is_dropped.float()  # (B, L) 1 = joins its nearest target
    joiner_sums = torch.zeros_like(target_feats).scatter_add(
        1, nearest_target[..., None].expand(-1, -1, channels), feats * weight[..., None]
    )  # (B, T, C) sum of each target's joiners
    counts = torch.zeros_like(target_feats[..., 0]).scatter_add(1, nearest_target, weight)
    joiner_means = joiner_sums / counts.clamp(min=1)[..., None]  # (B, T, C), 0 without joiners
    return (target_feats + joiner_means).to(features.dtype)
