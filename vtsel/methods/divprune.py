"""DivPrune: keep the most diverse tokens by greedy max–min cosine distance.

Source: Saeed Ranjbar Alvar, Gursimran Singh, Mohammad Akbari, Yong Zhang, "DivPrune:
Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025, arXiv 2503.02175.
The paper casts pruning as a Max–Min Diversity Problem (keep the subset whose closest pair is
as far apart as possible, distance = 1 − cosine similarity of the tokens) and solves it
greedily: repeatedly add the token whose minimum distance to the tokens kept so far is largest.

Checked against the authors' released ``DivPrune`` function (github.com/vbdi/divprune, as
reproduced in public repositories that build on it); the paper's own algorithm listing was not
at hand:
- First pick: the token whose nearest other token is farthest away (the released code takes
  each column's second-smallest distance, the smallest being the token's distance to itself).
  This is the max–min rule applied before anything is kept, and makes the result
  deterministic; ties go to the lowest index, as with ``torch.argmax`` there.
- Later picks: the token with the largest minimum distance to the kept set. The released code
  recomputes that minimum over all kept rows at every step, O(k²·L); here each token's distance
  to the kept set is held in one (B, L) tensor and lowered with the new token's distance row
  after every pick, O(k·L) after the (B, L, L) similarity matrix the first pick needs. The
  order is the same (tests compare it with the naive rule).
- Kept tokens are excluded from later picks explicitly. The released code relies on their
  zero self-distance, so once only exact duplicates of kept tokens remain (all scores 0) it
  can pick a kept token again and return fewer distinct tokens than the budget.

Memory is B·L² floats (134 MB for B=32 crops of 1024 tokens). Features are the raw encoder
tokens, in float32; DivPrune applies the same rule to the projected visual tokens an LLM
receives, which these are not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vtsel.methods.base import SelectionMethod


class DivPrune(SelectionMethod):
    """Keep the ``keep`` tokens chosen greedily for max–min cosine distance (see module doc)."""

    name = "divprune"

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        return greedy_max_min_order(features, keep).sort(dim=-1).values


def cosine_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity (B, L, L) of the tokens of each crop (B, L, C), in float32."""
    unit = F.normalize(features.float(), dim=-1)  # (B, L, C)
    return unit @ unit.transpose(1, 2)


def greedy_max_min_order(features: torch.Tensor, keep: int) -> torch.Tensor:
    """Token indices (B, keep) in the order DivPrune's greedy pass picks them.

    The order is exposed because it is the algorithm: the first j picks are the answer for a
    budget of j, and tests check it on points whose max–min order is known.
    """
    similarity = cosine_similarity_matrix(features)  # (B, L, L)
    batch, num_tokens, _ = similarity.shape
    rows = torch.arange(batch, device=similarity.device)
    self_pairs = torch.eye(num_tokens, dtype=torch.bool, device=similarity.device)
    nearest_other_similarity = similarity.masked_fill(self_pairs, -torch.inf).amax(dim=-1)  # (B, L)
    picked = (1 - nearest_other_similarity).argmax(dim=-1)  # (B,) seed: most isolated token
    min_dist_to_kept = torch.full((batch, num_tokens), torch.inf, device=similarity.device)
    order = [picked]
    for _ in range(keep - 1):
        dist_to_picked = 1 - similarity[rows, picked]  # (B, L) the new token's distance row
        min_dist_to_kept = torch.minimum(min_dist_to_kept, dist_to_picked)
        min_dist_to_kept[rows, picked] = -torch.inf  # never pick a kept token again
        picked = min_dist_to_kept.argmax(dim=-1)  # (B,)
        order.append(picked)
    return torch.stack(order, dim=-1)  # (B, keep)
