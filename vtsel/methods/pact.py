"""PACT: prune the unimportant tokens, then cluster the rest with DBDPC and merge each cluster.

Source: Mohamed Dhouib, Davide Buscaldi, Sonia Vanier, Aymen Shabou, "PACT: Pruning and
Clustering-Based Token Reduction for Faster Visual Language Models", CVPR 2025,
arXiv 2504.08966. Checked against the authors' released code (github.com/orailix/PACT:
``transformers/PACT/utils.py`` for DBDPC and the merge, the Qwen2 decoder for EUTI,
``configs/pact.json`` for the defaults used here). PACT runs inside the LLM, at layer 4:

1. EUTI (Efficient Unimportant Tokens Identification): a global query q̄, the mean query of
   the tokens up to the image's last (system prompt and image), scores every visual token by
   ``s_i = ‖h_i‖₂ · mean_heads softmax_j(q̄·k_j / √d)_i`` (its hidden state's norm times the
   attention the mean query pays it: no attention matrix is built, so FlashAttention still
   works; queries and keys before the rotary embedding); the top ``int(0.55 · L)`` stay
   (``pruning_tokeep_percentage_value = 0.55``), the rest are pruned.
2. DBDPC (Distance Bounded Density Peak Clustering) on the tokens left, with the cosine
   distance ``d_ij = 1 − cos`` of their keys (after the rotary embedding): density ``ρ_i =
   Σ_j exp(−(d_ij / d_n)²)`` with ``d_n = 2``; in decreasing density, a token becomes a
   cluster centre when it is farther than ``d_c`` from every centre chosen before it (the
   released code reaches the same centres in rounds: a token whose denser tokens are all
   farther than ``d_c`` is a centre, and the tokens within ``d_c`` of new centres leave the
   race). Every token joins its nearest centre, so no member lies farther than ``d_c`` from
   its centre.
3. Retrieval: a pruned token joins its nearest centre too if it lies within ``α·d_c``
   (``α = 1.5``); the others are dropped.
4. Merge: each centre is replaced by the mean of its cluster (``take_mean``), at the centre's
   position.

The budget. PACT's output count follows from the pruning share and ``d_c`` (0.21 in the
released config, a cosine distance between LLM keys) and varies per image; here ``select``
must keep exactly ``keep`` tokens. The pruning share stays the paper's (0.55 of L, or
``keep`` tokens when that is more: a share is meaningful on any features, a distance is not),
and ``d_c`` is searched per crop: the smallest cut-off at which DBDPC makes at most ``keep``
clusters, the tightest distance bound the budget allows. The clustering only changes where
``d_c`` crosses a pairwise distance of the unpruned tokens, so a bisection over those
distances (and −1, below all of them: every token its own centre) finds it. The centre count
need not fall monotonically with ``d_c``, nor by one at a time: when that cut-off gives fewer
than ``keep`` centres, the candidate just below it (more than ``keep``) is used and its
``keep`` densest centres are kept (DBDPC's pass stopped after ``keep`` centres); the members
of the others join their nearest kept centre. A budget at or above the pruning share leaves
nothing to cluster: ``d_c`` is −1, the kept tokens are EUTI's top ``keep`` and nothing is
merged into them.

Where this differs from PACT, because a ``SelectionMethod`` sees encoder tokens, not the LLM:
- EUTI's queries and keys, the clustering keys and the merged hidden states are all the
  encoder tokens themselves (one head, identity projections): the score is ``‖x_i‖₂ ·
  softmax_j(x̄·x_j / √C)_i`` with ``x̄`` the crop's mean token, and distances are cosine
  distances of the tokens. PACT takes them from LLM layer 4, after the projector.
- The global query averages the crop's tokens, and the softmax runs over them; PACT's runs
  over the system prompt and all of the image's tokens.
- PACT reduces an image's tokens together; here each crop on its own, at its own budget.
- PACT gives each kept token its cluster's size as a proportional-attention weight in the LLM;
  ``kept_features`` hands on the merged values only.
- Ties: density ties go to the lower index (the released code ranks them by ``argsort``,
  whose order among equals is unspecified); EUTI ties as ``sorted_topk`` breaks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vtsel.methods.base import SelectionMethod, gather_tokens, sorted_topk

UNPRUNED_SHARE = 0.55  # configs/pact.json: pruning_tokeep_percentage_value
DENSITY_DISTANCE = 2.0  # d_n: DBDPC(dc=2) in the released code
RETRIEVAL_FACTOR = 1.5  # α: coef_pruned
BELOW_EVERY_DISTANCE = -1.0  # a d_c at which every token is its own centre


@dataclass(frozen=True)
class ClusterPlan:
    """What PACT decides for a batch: ``centre_idx`` (B, keep) ascending, the unpruned tokens
    ``is_unpruned`` (B, L), and the cut-off ``cutoff`` (B,) found for each crop."""

    centre_idx: torch.Tensor
    is_unpruned: torch.Tensor
    cutoff: torch.Tensor


class PACT(SelectionMethod):
    """Keep the DBDPC cluster centres of the tokens EUTI does not prune (see module doc).

    Args:
        unpruned_share: Share of the L tokens EUTI keeps for clustering (never fewer than
            ``keep``).
        density_distance: ``d_n``, the distance scale of DBDPC's density.
        retrieval_factor: ``α``: a pruned token joins its nearest centre within ``α·d_c``.
    """

    name = "pact"

    def __init__(
        self,
        unpruned_share: float = UNPRUNED_SHARE,
        density_distance: float = DENSITY_DISTANCE,
        retrieval_factor: float = RETRIEVAL_FACTOR,
    ) -> None:
        if not 0.0 < unpruned_share <= 1.0:
            raise ValueError(f"unpruned_share={unpruned_share} must lie in (0, 1]")
        if density_distance <= 0.0 or retrieval_factor < 0.0:
            raise ValueError(
                f"density_distance={density_distance} must be > 0 and retrieval_factor="
                f"{retrieval_factor} >= 0"
            )
        self.unpruned_share = unpruned_share
        self.density_distance = density_distance
        self.retrieval_factor = retrieval_factor

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        return self.plan(features, keep).centre_idx

    def plan(self, features: torch.Tensor, keep: int) -> ClusterPlan:
        """EUTI's pruning and the DBDPC centres for an exact budget, for (B, L, C) tokens."""
        num_tokens = features.shape[1]
        num_unpruned = max(keep, int(num_tokens * self.unpruned_share))
        unpruned_idx = sorted_topk(euti_log_scores(features), num_unpruned)  # (B, n)
        unpruned = gather_tokens(features.float(), unpruned_idx)  # (B, n, C)
        distance = cosine_distances(unpruned, unpruned)  # (B, n, n)
        denser = density_order(distance, self.density_distance)  # (B, n, n)
        is_centre, cutoff = centres_for_budget(distance, denser, keep)  # (B, n), (B,)
        is_unpruned = torch.zeros(features.shape[:2], dtype=torch.bool, device=features.device)
        is_unpruned.scatter_(1, unpruned_idx, True)
        centre_idx = unpruned_idx[is_centre].view(-1, keep)  # (B, keep), ascending as n is
        return ClusterPlan(centre_idx, is_unpruned, cutoff)

    def merge(
        self,
        features: torch.Tensor,
        indices: torch.Tensor,
        attention: torch.Tensor | None = None,
        metric: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each centre of ``indices = select(features, keep)`` replaced by its cluster's mean
        (B, keep, C): the unpruned tokens that are nearest to it, and the pruned ones nearest
        to it within ``α·d_c``. The plan is recomputed from ``features``, since the indices
        alone say neither which tokens were pruned nor the cut-off; indices that are not this
        plan's centres are refused. ``metric`` is not used: the plan's distances are on the
        features, which on encoder tokens stand in for PACT's LLM-layer keys."""
        plan = self.plan(features, indices.shape[1])
        if not torch.equal(plan.centre_idx, indices):
            raise ValueError(f"{self.name}: indices are not the centres select chooses")
        return merge_clusters(features, plan, self.retrieval_factor)

    kept_features = merge  # what PACT hands on: each centre merged with its cluster


def euti_log_scores(features: torch.Tensor) -> torch.Tensor:
    """log EUTI score (B, L): ``log ‖x_i‖ + log softmax_j(x̄·x_j / √C)_i``, in float32.

    The log keeps large ``x̄·x`` from overflowing and ranks as the score does.
    """
    tokens = features.float()  # (B, L, C)
    global_query = tokens.mean(dim=1, keepdim=True)  # (B, 1, C)
    logits = (global_query @ tokens.transpose(1, 2)).squeeze(1) / math.sqrt(tokens.shape[-1])
    return logits.log_softmax(dim=-1) + tokens.norm(dim=-1).log()  # (B, L)


def cosine_distances(tokens: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """``1 − cos`` (B, n, m) between (B, n, C) and (B, m, C), float32, clamped at 0."""
    unit, unit_others = F.normalize(tokens.float(), dim=-1), F.normalize(others.float(), dim=-1)
    return (1 - unit @ unit_others.transpose(1, 2)).clamp(min=0)


def density_order(distance: torch.Tensor, density_distance: float) -> torch.Tensor:
    """``denser[b, i, j]``: token j precedes token i in DBDPC's order (B, n, n), bool.

    The order is by density ``Σ_j exp(−(d_ij / d_n)²)``, highest first, ties to the lower index.
    """
    density = torch.exp(-((distance / density_distance) ** 2)).sum(dim=-1)  # (B, n)
    order = density.argsort(dim=-1, descending=True, stable=True)  # (B, n) densest first
    position = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )  # (B, n) 0 = densest
    return position[:, None, :] < position[:, :, None]


def dbdpc_centres(
    distance: torch.Tensor, denser: torch.Tensor, cutoff: torch.Tensor
) -> torch.Tensor:
    """DBDPC's centres (B, n) bool at a cut-off ``d_c`` per crop (B,).

    The sequential rule (in density order, a token is a centre iff it lies farther than
    ``d_c`` from every earlier centre) computed in rounds: an undecided token with no
    undecided denser token within ``d_c`` is a centre, since its denser tokens within
    ``d_c`` are all decided non-centres; tokens within ``d_c`` of a new centre are decided
    non-centres. The densest undecided token is decided each round, so at most n rounds run.
    """
    near = distance <= cutoff[:, None, None]  # (B, n, n)
    # 0/1 floats: "has a neighbour among" as a product summed (on CPU far faster than any()).
    near_denser, near_any = (near & denser).float(), near.float()  # (B, n, n)
    undecided = torch.ones(distance.shape[:2], dtype=torch.bool, device=distance.device)
    is_centre = torch.zeros_like(undecided)
    while undecided.any():
        blocked = (near_denser * undecided.float()[:, None, :]).sum(dim=-1) > 0  # (B, n)
        new_centre = undecided & ~blocked
        covered = (near_any * new_centre.float()[:, None, :]).sum(dim=-1) > 0  # near a new one
        is_centre |= new_centre
        undecided &= ~(new_centre | covered)
    return is_centre


def centres_for_budget(
    distance: torch.Tensor, denser: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``keep`` centres (B, n) bool per crop and the cut-off ``d_c`` (B,) they come from.

    Bisection over each crop's candidate cut-offs, ascending: −1 (every token a centre, n >=
    ``keep`` of them) and the pairwise distances (the last of which leaves one centre). It
    keeps ``hi`` a candidate with at most ``keep`` centres and ``lo`` the one before with more
    (or −1 when there is none), and stops when they are adjacent: ``hi`` is then the smallest
    cut-off found to meet the budget. When ``hi`` gives fewer than ``keep`` centres (the count
    jumped), ``lo``'s clustering is cut to its ``keep`` densest centres, at ``lo``'s cut-off.
    """
    batch, num_tokens, _ = distance.shape
    if keep == num_tokens:  # every token a centre: no need to search
        all_centres = torch.ones(batch, num_tokens, dtype=torch.bool, device=distance.device)
        return all_centres, torch.full((batch,), BELOW_EVERY_DISTANCE, device=distance.device)
    pair_i, pair_j = torch.triu_indices(num_tokens, num_tokens, 1, device=distance.device)
    below = torch.full((batch, 1), BELOW_EVERY_DISTANCE, device=distance.device)
    candidates = torch.cat([below, distance[:, pair_i, pair_j].sort(dim=-1).values], dim=-1)

    def centres_at(index: torch.Tensor) -> torch.Tensor:
        return dbdpc_centres(distance, denser, candidates.gather(1, index[:, None])[:, 0])

    hi = torch.full((batch,), candidates.shape[1] - 1, device=distance.device)  # (B,)
    lo = torch.full_like(hi, -1)
    hi_centres = centres_at(hi)  # (B, n)
    lo_centres = torch.ones_like(hi_centres)  # −1's clustering, used only once lo >= 0
    while (active := hi - lo > 1).any():
        mid = torch.where(active, (lo + hi) // 2, hi)
        is_centre = centres_at(mid)
        within = (is_centre.sum(dim=-1) <= keep)[:, None]  # (B, 1)
        hi_centres = torch.where(active[:, None] & within, is_centre, hi_centres)
        lo_centres = torch.where(active[:, None] & ~within, is_centre, lo_centres)
        hi = torch.where(active & within[:, 0], mid, hi)
        lo = torch.where(active & ~within[:, 0], mid, lo)
    exact = hi_centres.sum(dim=-1) == keep  # (B,)
    density_rank = (~denser).sum(dim=-1).float()  # (B, n): n = densest, 1 = sparsest
    densest = sorted_topk(density_rank.masked_fill(~lo_centres, -torch.inf), keep)  # (B, keep)
    cut_centres = torch.zeros_like(lo_centres).scatter_(1, densest, True)
    is_centre = torch.where(exact[:, None], hi_centres, cut_centres)
    cutoff = candidates.gather(1, torch.where(exact, hi, lo.clamp(min=0))[:, None])[:, 0]
    return is_centre, cutoff


def merge_clusters(
    features: torch.Tensor, plan: ClusterPlan, retrieval_factor: float
) -> torch.Tensor:
    """The mean (B, keep, C) of each centre's cluster, in the features' dtype (sums in float32).

    Every unpruned token joins its nearest centre by cosine distance, a pruned one only within
    ``retrieval_factor · cutoff``; each centre is a member of its own cluster.
    """
    tokens = features.float()  # (B, L, C)
    batch, keep = plan.centre_idx.shape
    to_centre = cosine_distances(tokens, gather_tokens(tokens, plan.centre_idx))  # (B, L, k)
    nearest_distance, nearest = to_centre.min(dim=-1)  # (B, L)
    own = torch.arange(keep, device=nearest.device).expand(batch, keep)
    nearest = nearest.scatter(1, plan.centre_idx, own)  # a centre's duplicate cannot take it
    retrieved = nearest_distance <= retrieval_factor * plan.cutoff[:, None]  # (B, L)
    joins = (plan.is_unpruned | retrieved).float()  # (B, L) 1 = a member of a cluster
    channels = tokens.shape[-1]
    sums = torch.zeros(batch, keep, channels, device=tokens.device).scatter_add(
        1, nearest[..., None].expand(-1, -1, channels), tokens * joins[..., None]
    )  # (B, k, C)
    sizes = torch.zeros(batch, keep, device=tokens.device).scatter_add(1, nearest, joins)
    return (sums / sizes[..., None]).to(features.dtype)  # sizes >= 1: the centre itself
