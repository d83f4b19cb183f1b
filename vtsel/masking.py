"""Random keep masks over a range of keep ratios: what an unbiased reconstructor trains on.

Eq. 1 of the paper compares two token subsets by how well a reconstructor R rebuilds all tokens
from each. If R is trained together with one selector it learns that selector's habits, and the
comparison favours it. A reconstructor trained on uniformly random subsets of every size in a
range has no preferred selector: this module draws those subsets.
"""

from __future__ import annotations

import torch

from vtsel.models.selector import tokens_for_ratio


def check_keep_range(keep_range: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` as floats, refusing a range outside (0, 1] or upside down."""
    low, high = float(keep_range[0]), float(keep_range[1])
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"random_keep_range needs 0 < low <= high <= 1, got {list(keep_range)}")
    return low, high


def random_keep_counts(
    batch: int,
    num_tokens: int,
    keep_range: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Tokens to keep (B,) per crop: a keep ratio drawn uniformly from ``keep_range``, rounded
    as every budget is (``tokens_for_ratio``). CPU numbers, from ``generator`` if given."""
    low, high = check_keep_range(keep_range)
    ratios = low + (high - low) * torch.rand(batch, generator=generator)  # (B,)
    return torch.tensor([tokens_for_ratio(num_tokens, float(r)) for r in ratios])


def random_keep_masks(
    batch: int,
    num_tokens: int,
    keep_range: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A 0/1 keep mask (B, L): row i keeps a uniformly random subset of k_i tokens.

    Each row's budget comes from ``random_keep_counts``, so the masks cover the whole range of
    budgets an evaluation asks about. Numbers come from ``generator`` on the CPU (the global
    generator if None), so a seeded call gives the same masks on any device.
    """
    counts = random_keep_counts(batch, num_tokens, keep_range, generator)  # (B,)
    random_scores = torch.rand(batch, num_tokens, generator=generator)  # (B, L)
    ranks = random_scores.argsort(dim=-1).argsort(dim=-1)  # (B, L) 0 = lowest score
    keep = ranks >= num_tokens - counts[:, None]  # the k_i highest scores of row i
    return keep.float().to(device)


def sampled_topk_mask(
    keep_logits: torch.Tensor, counts: torch.Tensor, tau: float
) -> torch.Tensor:
    """Keep mask (B, L) of the top k_i of logistic-perturbed keep logits, straight-through.

    Forward: exactly ``counts[i]`` tokens of row i, drawn without replacement with the odds the
    logits give (the Gumbel-top-k trick; logistic noise is what the Gumbel-Softmax over
    (drop, keep) adds to the keep-minus-drop logit). Backward: the gradient of
    ``sigmoid((perturbed - threshold) / tau)``, the threshold halfway between the k-th and the
    (k+1)-th perturbed logit. The threshold moves with the logits, so the gradient only
    reorders tokens: raising every logit alike changes nothing, and this term cannot push the
    share eq. 8's mask keeps (which the band governs).

    Args:
        keep_logits: (B, L) keep-minus-drop logits.
        counts: (B,) tokens to keep per row, each in [1, L].
        tau: Temperature of the relaxation.
    """
    num_tokens = keep_logits.shape[-1]
    uniform = torch.rand_like(keep_logits, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
    perturbed = keep_logits.float() + uniform.log() - (-uniform).log1p()  # (B, L)
    ranked, order = perturbed.sort(dim=-1, descending=True)  # (B, L) each
    last_kept = (counts.to(ranked.device) - 1)[:, None]  # (B, 1) position of the k-th
    first_dropped = (last_kept + 1).clamp(max=num_tokens - 1)  # the k-th itself when k = L
    threshold = (ranked.gather(-1, last_kept) + ranked.gather(-1, first_dropped)) / 2  # (B, 1)
    soft = torch.sigmoid((perturbed - threshold) / tau)  # (B, L)
    rank = order.argsort(dim=-1)  # (B, L) 0 = largest perturbed logit
    hard = (rank <= last_kept).float()  # exactly k_i per row
    return (hard - soft.detach() + soft).to(keep_logits.dtype)
