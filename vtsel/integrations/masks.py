"""How many tokens to keep, and which: a method's choice turned into a keep mask over crops.

Every model family reduces its images to the same thing before pruning: a batch of crops
(N, L, C) on one (H, W) grid, a mask of the positions the LLM would receive at all (LLaVA-NeXT's
unpad drops the letterbox padding of its high-resolution crops), and the groups of crops that
share one budget (an image, or a video's frames). This module decides the keep mask (N, L) from
those, for any method, so the families only lay out what is kept. ``kept_tokens`` also says
what the LLM reads at each kept position: the token itself, or for a method that merges
(VisionZip's contextual tokens) what ``SelectionMethod.kept_features`` hands on.

Budgets (``vtsel.budget``) count **candidate** tokens (the ones the LLM would receive):
``Budget(keep=0.4)`` keeps 40% of what the unpruned model feeds the LLM, not 40% of a crop that
is half padding.
"""

from __future__ import annotations

import copy
from itertools import groupby

import torch

from vtsel.budget import Budget, mask_from_scores
from vtsel.inference import TokenSelector
from vtsel.methods import LearnedSelection, SelectionMethod

Method = SelectionMethod | TokenSelector


def scorer_of(method: Method) -> TokenSelector | None:
    """The exported selector behind a score-based method, or None for index-only methods."""
    if isinstance(method, TokenSelector):
        return method
    if isinstance(method, LearnedSelection):
        return method.selector
    return None


def check_budget(method: Method, budget: Budget) -> None:
    """Refuse budgets that need per-token scores when the method only returns indices."""
    if scorer_of(method) is None and (budget.threshold is not None or budget.per_image):
        kind = "threshold" if budget.threshold is not None else "per_image"
        raise ValueError(
            f"a {kind} budget needs per-token keep scores, which only the trained selector "
            f"(TokenSelector or LearnedSelection) gives; {type(method).__name__} returns indices. "
            f"Use Budget(keep=...) or Budget(k=...) per crop with it"
        )


def kept_tokens(
    method: Method,
    features: torch.Tensor,
    grid: tuple[int, int],
    candidates: torch.Tensor,
    groups: list[slice],
    budget: Budget,
    attention: torch.Tensor | None = None,
    metric: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens to keep, (N, L) bool only ever at ``candidates``, and the tokens (N, L, C)
    the LLM reads at them (``features`` where the method hands on the tokens themselves).

    Args:
        method: A selection method or an exported selector.
        features: Crops (N, L, C) as the method was trained on / expects them.
        grid: (H, W) of one crop, H*W = L.
        candidates: (N, L) bool, the positions the LLM would receive without pruning; each
            crop's candidates form a rectangle of its grid (LLaVA-NeXT unpad cuts whole rows or
            columns), which is what index methods are run on, and merge within.
        groups: Row slices of crops sharing one budget (used with ``budget.per_image``).
        budget: How many to keep.
        attention: The attention (N, L) or (N, maps, L) methods that rank by it take.
        metric: What a merging method measures similarity on (N, L, D), if not the features
            (``attention.merge_metric``).
    """
    check_budget(method, budget)
    scorer = scorer_of(method)
    if scorer is not None:
        return mask_from_scores(scorer.scores(features), budget, candidates, groups), features
    return _select_in_boxes(method, features, grid, candidates, budget, attention, metric)


def _select_in_boxes(
    method: SelectionMethod,
    features: torch.Tensor,
    grid: tuple[int, int],
    candidates: torch.Tensor,
    budget: Budget,
    attention: torch.Tensor | None,
    metric: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep mask (N, L) and handed-on tokens (N, L, C) of an index method run on each crop's
    visible rectangle.

    Crops with the same rectangle go through the method in one call. A method with a grid of
    its own (uniform lattice, HiPrune's neighbours) is given the rectangle's grid, so it spreads
    its budget over what the LLM sees rather than over padding it would then lose.
    """
    keep = torch.zeros_like(candidates)
    handed_on = features.clone()  # (N, L, C)
    boxes = [_visible_box(crop_candidates, grid) for crop_candidates in candidates]
    by_box = sorted(range(len(boxes)), key=lambda row: boxes[row] or (-1,))
    for box, group in groupby(by_box, key=lambda row: boxes[row]):
        if box is None:  # a crop wholly inside the padding gives the LLM nothing
            continue
        rows = torch.tensor(list(group), device=features.device)
        top, bottom, left, right = box
        row_idx = torch.arange(top, bottom, device=features.device)
        col_idx = torch.arange(left, right, device=features.device)
        positions = (row_idx[:, None] * grid[1] + col_idx[None, :]).flatten()  # (h*w,) row-major
        box_attention = None if attention is None else attention[rows][..., positions]
        box_metric = None if metric is None else metric[rows][:, positions]  # (n, h*w, D)
        box_features = features[rows][:, positions]  # (n, h*w, C)
        box_method = _on_grid(method, (bottom - top, right - left))
        chosen = box_method.select(
            box_features, budget.tokens(positions.numel()), box_attention
        )  # (n, k) indices into the box
        keep[rows[:, None], positions[chosen]] = True
        handed_on[rows[:, None], positions[chosen]] = box_method.kept_features(
            box_features, chosen, box_attention, box_metric
        ).to(features.dtype)
    return keep, handed_on


def _visible_box(crop_candidates: torch.Tensor, grid: tuple[int, int]) -> tuple[int, ...] | None:
    """(top, bottom, left, right) of a crop's candidate rectangle, None if it has none."""
    plane = crop_candidates.view(grid)  # (H, W)
    rows = plane.any(dim=1).nonzero().squeeze(-1)
    cols = plane.any(dim=0).nonzero().squeeze(-1)
    if rows.numel() == 0:
        return None
    box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    if int(plane.sum()) != (box[1] - box[0]) * (box[3] - box[2]):
        raise ValueError(f"candidate tokens of a crop do not form a rectangle of its {grid} grid")
    return box


def _on_grid(method: SelectionMethod, grid: tuple[int, int]) -> SelectionMethod:
    """``method`` for crops of ``grid``: a copy with that grid if the method keeps one."""
    if getattr(method, "grid", None) in (None, grid):
        return method
    resized = copy.copy(method)
    resized.grid = grid
    return resized
