"""Spatially uniform selection: keep a regular lattice of grid positions.

The content-blind counterpart of random selection, and what pooling-based compressors (e.g.
LLaVA-NeXT-style 2x2 average pooling) approximate: every region of the crop keeps tokens in
proportion to its area. No source paper; the choices are ours.
"""

from __future__ import annotations

import torch

from vtsel.methods.base import SelectionMethod, check_grid, evenly_spaced


class UniformGrid(SelectionMethod):
    """Keep an evenly spaced rows x cols lattice of the (H, W) grid, filled up to ``keep``.

    The lattice is the largest rows*cols <= keep that fits the grid, preferring equal spacing
    along both axes; its points sit at the centres of equal cells, so keeping 4 of a 4x4 grid
    gives positions (1, 1), (1, 3), (3, 1), (3, 3) and no two kept tokens touch. The
    ``keep - rows*cols`` tokens a lattice cannot place are spread evenly over the remaining
    positions in row-major order. The same positions are kept for every crop.

    Args:
        grid: (H, W) token grid of one crop; L must equal H*W.
    """

    name = "uniform"

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid = tuple(grid)

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        batch, num_tokens, _ = features.shape
        check_grid(self.name, self.grid, num_tokens)
        kept_idx = self.positions(keep, features.device)  # (keep,)
        return kept_idx.repeat(batch, 1)  # (B, keep), rows not aliased

    def positions(self, keep: int, device: torch.device | None = None) -> torch.Tensor:
        """The ``keep`` kept positions (keep,) of the grid, ascending."""
        height, width = self.grid
        rows, cols = _lattice_shape(self.grid, keep)
        row_idx = evenly_spaced(height, rows, device)  # (rows,)
        col_idx = evenly_spaced(width, cols, device)  # (cols,)
        lattice_idx = (row_idx[:, None] * width + col_idx[None, :]).flatten()  # (rows*cols,)
        off_lattice = torch.ones(height * width, dtype=torch.bool, device=device)
        off_lattice[lattice_idx] = False
        rest_idx = off_lattice.nonzero().squeeze(-1)  # (L - rows*cols,) ascending
        fill_idx = rest_idx[evenly_spaced(rest_idx.numel(), keep - lattice_idx.numel(), device)]
        return torch.cat([lattice_idx, fill_idx]).sort().values


def _lattice_shape(grid: tuple[int, int], keep: int) -> tuple[int, int]:
    """(rows, cols) with rows*cols <= keep on an (H, W) grid: most points, then most even spacing.

    Even spacing means the row step H/rows and the column step W/cols are as close as possible,
    compared through rows/H and cols/W.
    """
    height, width = grid

    def preference(shape: tuple[int, int]) -> tuple[int, float]:
        rows, cols = shape
        return rows * cols, -abs(rows / height - cols / width)

    shapes = [(rows, min(width, keep // rows)) for rows in range(1, min(height, keep) + 1)]
    return max(shapes, key=preference)
