"""LLaVA-NeXT's anyres layout, pruned: which crop tokens the LLM can receive, and in what order.

LLaVA-NeXT feeds the LLM the base (low-resolution) crop's tokens, then its high-resolution crops
stitched into one grid, cut to the image's aspect ratio (``unpad``) and read row by row with an
``image_newline`` after each row. The layout here is computed on token ids with the model's own
``get_anyres_image_grid_shape`` and ``unpad_image``, so it cannot drift from the packing it
mirrors; at a 100% budget it gives the unpruned sequence exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    unpad_image,
)

NewlineRows = Literal["all", "kept"]
NEWLINE = -1  # marks an image_newline in a token order


@dataclass
class AnyresLayout:
    """Where one image's crop tokens go in the LLM's sequence."""

    candidates: torch.Tensor  # (n_crops, L) bool: positions that survive unpad
    stitched: torch.Tensor | None  # (R, C) crop-major ids of the unpadded grid; None: base only
    tokens_per_crop: int  # L

    @property
    def full_tokens(self) -> int:
        """Placeholders the unpruned prompt holds for this image."""
        if self.stitched is None:
            return self.tokens_per_crop + 1
        rows, cols = self.stitched.shape
        return self.tokens_per_crop + rows * (cols + 1)

    def order(self, keep: torch.Tensor, newline_rows: NewlineRows) -> torch.Tensor:
        """Crop-major ids (T,) of the kept tokens in the LLM's order, ``NEWLINE`` for newlines.

        Args:
            keep: (n_crops, L) bool keep mask of this image's crops.
            newline_rows: ``"all"``: every row of the unpadded grid ends with a newline;
                ``"kept"``: only rows that keep a token do.
        """
        flat_keep = keep.flatten()  # (n_crops*L,)
        base = flat_keep[: self.tokens_per_crop].nonzero().squeeze(-1)  # (k0,) raster order
        if self.stitched is None:
            return torch.cat([base, base.new_tensor([NEWLINE])])
        rows = self.stitched.shape[0]
        kept_grid = flat_keep[self.stitched]  # (R, C)
        row_newline = (kept_grid.any(dim=1, keepdim=True) if newline_rows == "kept"
                       else torch.ones_like(kept_grid[:, :1]))  # (R, 1)
        ids = torch.cat([self.stitched, self.stitched.new_full((rows, 1), NEWLINE)], dim=1)
        return torch.cat([base, ids[torch.cat([kept_grid, row_newline], dim=1)]])


def anyres_layout(
    image_size: torch.Tensor,
    num_crops: int,
    grid: tuple[int, int],
    pinpoints: list[list[int]],
    crop_size: int,
) -> AnyresLayout:
    """The layout of one image of (height, width) ``image_size`` cut into ``num_crops`` crops.

    Args:
        image_size: The image's original (height, width).
        num_crops: Base crop + high-resolution crops (``image_size_to_num_patches``).
        grid: (H, W) tokens of one crop.
        pinpoints: The model's ``image_grid_pinpoints``.
        crop_size: Pixels per crop side (the tower's ``image_size``).
    """
    height, width = grid
    per_crop = height * width
    if num_crops == 1:
        return AnyresLayout(torch.ones(1, per_crop, dtype=torch.bool), None, per_crop)
    rows, cols = get_anyres_image_grid_shape(image_size, pinpoints, crop_size)
    crop_ids = torch.arange(per_crop, num_crops * per_crop)  # the high-res crops' tokens
    stitched = (crop_ids.view(rows, cols, height, width).permute(0, 2, 1, 3)
                .reshape(rows * height, cols * width))  # (rows*H, cols*W) as pack does
    stitched = unpad_image(stitched[None], image_size)[0]  # (R, C) the image's aspect
    candidates = torch.zeros(num_crops * per_crop, dtype=torch.bool)
    candidates[:per_crop] = True  # the base crop is never unpadded
    candidates[stitched.flatten()] = True
    return AnyresLayout(candidates.view(num_crops, per_crop), stitched, per_crop)
