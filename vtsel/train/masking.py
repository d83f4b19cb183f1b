"""Keep masks drawn without a trained selector: what unbiased reconstructors learn from.

Eq. 1 of the paper compares two token subsets by how well a reconstructor R rebuilds the rest
from each. An R trained with one selector learns that selector's habits; an R trained only on
uniformly random subsets learns the habits of random subsets, which spread evenly, and then
scores every concentrated selection (DivPrune, VisionZip, any learned selector) as worse than it
is. So the judge learns from a mixture of mask *families*, each at budgets drawn per crop:

- ``random``: a uniformly random subset;
- ``clustered``: the top of a random smooth field over the grid (blobs of several sizes);
- ``blocky``: whole square blocks of 2-6 tokens, in random order;
- any training-free method of ``vtsel.methods`` (``uniform``, ``spread``, ``norm``,
  ``divprune``, ``visionzip``, ``hiprune``, ``pact``): its own choice at that budget, with at
  its kept positions what it hands on (VisionZip's and PACT's merged tokens), as ``vtsel
  eval`` will show them to the judge.

``projection`` (the top of the tokens' projection on a random direction: content-dependent,
irregular, like a learned selection) is kept out of training on purpose: the judge's sanity
gate checks on it that the judge does not favour the families it saw.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from vtsel.methods import METHODS
from vtsel.methods.base import CLS_ATTENTION, RECEIVED_ATTENTION, attention_input
from vtsel.models.selector import tokens_for_ratio

FIELD_FAMILIES = ("random", "clustered", "blocky", "projection")
METHOD_FAMILIES = ("uniform", "spread", "norm", "divprune", "visionzip", "hiprune", "pact")
HELD_OUT_FAMILY = "projection"  # never trained on: the gate's test of favouritism


def check_keep_range(keep_range: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` as floats, refusing a range outside (0, 1] or upside down."""
    low, high = float(keep_range[0]), float(keep_range[1])
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"keep_range needs 0 < low <= high <= 1, got {list(keep_range)}")
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


def top_counts_mask(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """0/1 mask (B, L) keeping the ``counts[i]`` highest scores of row i of (B, L)."""
    ranks = scores.argsort(dim=-1, descending=True).argsort(dim=-1)  # (B, L) 0 = highest
    return (ranks < counts.to(scores.device)[:, None]).to(torch.float32)


def check_families(families: Mapping[str, float], held_out_allowed: bool = False) -> None:
    """Refuse unknown families, negative weights, an empty mixture and (unless allowed) the
    held-out family."""
    known = (*FIELD_FAMILIES, *METHOD_FAMILIES)
    unknown = [name for name in families if name not in known]
    if unknown:
        raise ValueError(f"unknown mask families {unknown}; known: {', '.join(known)}")
    if any(weight < 0 for weight in families.values()) or sum(families.values()) <= 0:
        raise ValueError(f"mask family weights must be >= 0 and not all 0, got {dict(families)}")
    if not held_out_allowed and families.get(HELD_OUT_FAMILY, 0) > 0:
        raise ValueError(
            f"mask family {HELD_OUT_FAMILY!r} is held out: the judge's sanity gate checks on it "
            f"that the judge does not favour the families it trained on"
        )


def family_draw(
    family: str,
    counts: torch.Tensor,
    grid: tuple[int, int],
    generator: torch.Generator | None = None,
    feats: torch.Tensor | None = None,
    attention: torch.Tensor | None = None,
    received_attention: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep masks (B, L) of one family, row i keeping ``counts[i]`` tokens, and the tokens
    (B, L, C) a reconstructor is shown: ``feats``, except at a merging method's kept positions.

    Field families draw from ``generator`` (CPU); method families run the method on the raw
    features (B, L, C) and, for attention-ranked ones, the attention they rank by: the CLS
    map (B, L), or for HiPrune the received maps (B, 2, L) when the shards store them.
    """
    batch, num_tokens = counts.numel(), grid[0] * grid[1]
    if family == "random":
        return top_counts_mask(torch.rand(batch, num_tokens, generator=generator), counts), feats
    if family == "clustered":
        return top_counts_mask(_smooth_fields(batch, grid, generator), counts), feats
    if family == "blocky":
        return top_counts_mask(_block_fields(batch, grid, generator), counts), feats
    if feats is None:
        raise ValueError(f"mask family {family!r} needs the crops' features")
    if family == "projection":
        direction = F.normalize(torch.randn(batch, feats.shape[-1], generator=generator), dim=-1)
        unit = F.normalize(feats.detach().float().cpu(), dim=-1)  # (B, L, C)
        return top_counts_mask(torch.einsum("blc,bc->bl", unit, direction), counts), feats
    maps = {CLS_ATTENTION: attention, RECEIVED_ATTENTION: received_attention}
    return _method_draw(family, counts, grid, feats, maps)


def mixture_masks(
    families: Mapping[str, float],
    counts: torch.Tensor,
    grid: tuple[int, int],
    generator: torch.Generator | None = None,
    feats: torch.Tensor | None = None,
    attention: torch.Tensor | None = None,
    received_attention: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep masks (B, L), each crop's family drawn with the given weights, its budget
    ``counts[i]``, and the tokens (B, L, C) shown with them (``family_draw``; attention maps
    as it takes them)."""
    names = [name for name, weight in families.items() if weight > 0]
    weights = torch.tensor([float(families[name]) for name in names])
    picks = torch.multinomial(weights, counts.numel(), replacement=True, generator=generator)
    masks = torch.zeros(counts.numel(), grid[0] * grid[1])
    shown = None if feats is None else feats.clone()
    for index, name in enumerate(names):
        rows = (picks == index).nonzero().squeeze(-1)
        if rows.numel():
            device_rows = None if feats is None else rows.to(feats.device)
            masks[rows], family_shown = family_draw(
                name, counts[rows], grid, generator,
                None if feats is None else feats[device_rows],
                *(None if maps is None else maps[rows.to(maps.device)]
                  for maps in (attention, received_attention)),
            )
            if shown is not None:
                shown[device_rows] = family_shown.to(shown.dtype)
    return masks, shown


def _method_draw(
    family: str,
    counts: torch.Tensor,
    grid: tuple[int, int],
    feats: torch.Tensor,
    maps: Mapping[str, torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the training-free method ``family`` keeps of each crop at its budget, ranking by
    its map among ``maps`` (``vtsel.methods.base.attention_input``), and the crops with what
    it hands on at the kept positions (``kept_on_grid``)."""
    method_class = METHODS[family]
    offered = {"grid": grid, "seed": 0}
    accepted = inspect.signature(method_class).parameters
    method = method_class(**{k: v for k, v in offered.items() if k in accepted})
    attention = attention_input(method, maps)
    if method_class.needs_attention and attention is None:
        raise ValueError(
            f"mask family {family!r} ranks tokens by encoder attention, and these shards "
            f"store none: extract with attention (attn.npy) or leave the family out"
        )
    masks = torch.zeros(counts.numel(), grid[0] * grid[1])
    shown = feats.detach().clone()  # (B, L, C)
    for keep in counts.unique().tolist():
        rows = (counts == keep).nonzero().squeeze(-1)
        device_rows = rows.to(feats.device)
        rows_attention = None if attention is None else attention[device_rows]
        kept_idx = method.select(feats[device_rows], int(keep), rows_attention)  # (b, keep)
        masks[rows] = torch.zeros(rows.numel(), masks.shape[1]).scatter_(1, kept_idx.cpu(), 1.0)
        shown[device_rows] = method.kept_on_grid(shown[device_rows], kept_idx, rows_attention)
    return masks, shown


def _smooth_fields(
    batch: int, grid: tuple[int, int], generator: torch.Generator | None
) -> torch.Tensor:
    """Gaussian-blurred white noise (B, L), blur width drawn per crop from 0.6 to 3.6 tokens."""
    height, width = grid
    fields = torch.empty(batch, height * width)
    sigmas = 0.6 + 3.0 * torch.rand(batch, generator=generator)
    noise = torch.randn(batch, 1, height, width, generator=generator)
    for i, sigma in enumerate(sigmas.tolist()):
        radius = math.ceil(3 * sigma)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * sigma * sigma))
        kernel = kernel / kernel.sum()
        field = F.conv2d(F.pad(noise[i : i + 1], (radius,) * 4, mode="replicate"),
                         kernel.view(1, 1, 1, -1))
        field = F.conv2d(field, kernel.view(1, 1, -1, 1))  # (1, 1, H, W)
        fields[i] = field.flatten()
    return fields


def _block_fields(
    batch: int, grid: tuple[int, int], generator: torch.Generator | None
) -> torch.Tensor:
    """Scores (B, L) constant on square blocks of side 2-6 (drawn per crop), blocks in random
    order, tokens in random order inside a block."""
    height, width = grid
    fields = torch.empty(batch, height * width)
    sides = torch.randint(2, 7, (batch,), generator=generator)
    for i, side in enumerate(sides.tolist()):
        blocks = torch.rand(math.ceil(height / side), math.ceil(width / side), generator=generator)
        field = blocks.repeat_interleave(side, 0).repeat_interleave(side, 1)[:height, :width]
        fields[i] = field.flatten() + 1e-3 * torch.rand(height * width, generator=generator)
    return fields


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
