"""A nested spread-out order of grid positions: where to put k tokens so that they cover a crop.

Reconstruction from kept tokens leans on spatial context (a dropped token is rebuilt mostly from
kept neighbours), so a good kept set covers the crop before it concentrates on detail. A
per-token score that depends on content alone cannot spread: neighbouring tokens of one region
look alike, score alike, and are kept or dropped together. The farthest-point order below is
content-free and nested (its first k positions are spread for every k), so it can serve as the
selector's coverage prior and, alone, as the ``spread`` baseline.
"""

from __future__ import annotations

import torch


def farthest_point_order(grid: tuple[int, int]) -> torch.Tensor:
    """Every position of an (H, W) grid (L,) long, in farthest-point order.

    Starts at the position nearest the centre; each next position is the one farthest (in grid
    units) from all chosen so far, ties to the lowest row-major index. Deterministic. Computed
    on the CPU whatever the default device (a model built on ``meta`` still gets its prior).
    """
    height, width = grid
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device="cpu"),
        torch.arange(width, dtype=torch.float64, device="cpu"),
        indexing="ij",
    )
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=-1)  # (L, 2)
    centre = positions.mean(dim=0)
    chosen = [int((positions - centre).norm(dim=-1).argmin())]
    dist_to_chosen = (positions - positions[chosen[0]]).norm(dim=-1)  # (L,)
    for _ in range(height * width - 1):
        dist_to_chosen[chosen[-1]] = -1.0  # never again
        nxt = int(dist_to_chosen.argmax())
        chosen.append(nxt)
        dist_to_chosen = torch.minimum(dist_to_chosen, (positions - positions[nxt]).norm(dim=-1))
    return torch.tensor(chosen, device="cpu")


def coverage_prior(grid: tuple[int, int]) -> torch.Tensor:
    """``-log(1 + rank)`` of each position (L,) in the farthest-point order: 0 for the first.

    Logarithmic, so the first picks are far apart in score (a few tokens go where they cover
    most) while later ranks sit close together and content decides among them.
    """
    order = farthest_point_order(grid)
    rank = torch.empty(order.numel(), dtype=torch.float32, device="cpu")
    rank[order] = torch.arange(order.numel(), dtype=torch.float32, device="cpu")
    return -torch.log1p(rank)
