"""Drawing the paper's Figure 1 from tensors: torch only, so inference tools need no Lightning.

``vtsel.train.callbacks.SelectionImages`` (TensorBoard, during training) and ``vtsel visualize`` (a
PNG for any image file) draw the same panels with these helpers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DROPPED_BRIGHTNESS = 0.25  # dropped tokens stay faintly visible, so one sees what was lost
SEPARATOR_WIDTH = 2  # white pixels between two panels


def overlay_mask(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Darken the pixels of dropped tokens: (B, 3, S, S) in [0, 1], (B, H, W) 0/1 -> (B, 3, S, S).

    Token (i, j) of the grid covers a block of S/H x S/W pixels (nearest upsampling), as the
    encoder's patches cover the crop. Kept pixels are returned unchanged.
    """
    keep = F.interpolate(mask[:, None].float(), size=image.shape[-2:], mode="nearest")
    return torch.where(keep.bool(), image, image * DROPPED_BRIGHTNESS)  # keep: (B, 1, S, S)


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two panels (3, S, S) with a thin white separator -> (3, S, 2S + SEPARATOR_WIDTH)."""
    separator = left.new_ones(left.shape[0], left.shape[1], SEPARATOR_WIDTH)
    return torch.cat([left, separator, right], dim=-1)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 by rounding (SummaryWriter truncates floats, shifting kept pixels)."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)
