"""The crops a VLM cuts from an image, so that features come from exactly what it encodes.

A selector is trained per vision encoder on the tokens of its crops. LLaVA-NeXT does not see one
centre square: it sees the whole image squashed to a square plus a grid of tiles of an
aspect-preserving, padded resize; InternVL sees tiles of a resize to the closest tiled aspect
ratio plus a thumbnail. Each plan here reproduces one family's geometry and resampling, checked
pixel for pixel against transformers' own image processors (``tests/test_crops.py``).

Resampling runs either with PIL (the VLMs' reference code and transformers' ``*Pil``
processors) or with torchvision on uint8 tensors (transformers' default processors). The two
differ by a few grey levels, so a plan names the one the VLM's pipeline uses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvF

RESAMPLE_FILTERS = {
    "nearest": (Image.Resampling.NEAREST, tvF.InterpolationMode.NEAREST),
    "bilinear": (Image.Resampling.BILINEAR, tvF.InterpolationMode.BILINEAR),
    "bicubic": (Image.Resampling.BICUBIC, tvF.InterpolationMode.BICUBIC),
    "lanczos": (Image.Resampling.LANCZOS, tvF.InterpolationMode.LANCZOS),
}
BACKENDS = ("pil", "torchvision")
# LLaVA-1.6's canvases for its 336-px CLIP tower, as (height, width): 1x2, 2x1, 2x2, 1x3, 3x1.
LLAVA_NEXT_PINPOINTS_336 = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Crop:
    """One encoder input of an image, in the VLM's own crop order."""

    index: int  # position in the VLM's crop order
    box: Box  # x0, y0, x1, y1 in source pixels; beyond the image where the VLM pads
    view: Image.Image  # size x size RGB: exactly what the encoder sees, before normalisation


class CropPlan(ABC):
    """How one VLM family turns an image into square encoder inputs.

    Args:
        resample: Filter of every resize: ``nearest``, ``bilinear``, ``bicubic`` or
            ``lanczos``; the VLM processor's ``resample`` (bicubic for CLIP, LLaVA, InternVL).
        backend: ``pil`` or ``torchvision``: which library resizes (see the module doc).
    """

    def __init__(self, resample: str = "bicubic", backend: str = "pil") -> None:
        if resample not in RESAMPLE_FILTERS:
            raise ValueError(f"resample={resample!r} is not one of {sorted(RESAMPLE_FILTERS)}")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {list(BACKENDS)}")
        self.resample = resample
        self.backend = backend

    def crops(self, image: Image.Image, size: int) -> list[Crop]:
        """The crops of an RGB image for an encoder with ``size`` x ``size`` inputs."""
        if image.mode != "RGB":
            raise ValueError(f"{type(self).__name__} needs an RGB image, got mode {image.mode!r}")
        if size < 1 or min(image.size) < 1:
            raise ValueError(f"cannot crop a {image.width}x{image.height} image to side {size}")
        return self._crops(image, size)

    def describe(self) -> dict[str, Any]:
        """JSON-able settings: two plans that describe alike cut the same crops."""
        return {
            "plan": type(self).__name__,
            "resample": self.resample,
            "backend": self.backend,
            **self._settings(),
        }

    @abstractmethod
    def _crops(self, image: Image.Image, size: int) -> list[Crop]:
        """``crops`` on an RGB image and a positive size."""

    def _settings(self) -> dict[str, Any]:
        """The subclass's own arguments, for ``describe``."""
        return {}

    def _resize(self, image: Image.Image, width: int, height: int) -> Image.Image:
        """``image`` resized to ``width`` x ``height`` with this plan's filter and backend."""
        pil_filter, torch_filter = RESAMPLE_FILTERS[self.resample]
        if self.backend == "pil":
            return image.resize((width, height), pil_filter)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, h, w) uint8
        resized = tvF.resize(pixels, [height, width], interpolation=torch_filter, antialias=True)
        return Image.fromarray(resized.permute(1, 2, 0).numpy())

    def _whole(self, image: Image.Image, size: int, index: int) -> Crop:
        """The whole image squashed to a square: LLaVA-NeXT's base image, InternVL's thumbnail."""
        return Crop(index, (0, 0, image.width, image.height), self._resize(image, size, size))


class CenterCrop(CropPlan):
    """The largest centred square, resized: open_clip's eval transform, one crop per image.

    open_clip resizes the short side and then crops; cropping first keeps the box exact in
    source pixels.
    """

    def _crops(self, image: Image.Image, size: int) -> list[Crop]:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        box = (left, top, left + side, top + side)
        return [Crop(0, box, self._resize(image.crop(box), size, size))]


class Resize(CropPlan):
    """The whole image resized to a square, aspect ratio not kept: one crop per image."""

    def _crops(self, image: Image.Image, size: int) -> list[Crop]:
        return [self._whole(image, size, 0)]


class LlavaNextAnyres(CropPlan):
    """LLaVA-NeXT's "anyres": the base image, then the tiles of the best-fitting canvas.

    The canvas is the pinpoint that keeps the most source pixels after an aspect-preserving
    downscale (no credit for upscaling), and of those the one wasting the least area. The image
    is resized to fit it, centred on black padding, and cut into ``size`` tiles row by row.
    The base image (the whole image squashed to a square) comes first, as in transformers'
    ``LlavaNextImageProcessor``. A 2x2 canvas gives 5 crops (5 x 576 tokens at 336 px).

    Args:
        grid_pinpoints: Canvas sizes as (height, width), the checkpoint's
            ``image_grid_pinpoints`` (transformers' order); each a multiple of the crop size.
            None: LLaVA-1.6's pinpoints for its 336-px tower.
        resample, backend: As ``CropPlan``.
    """

    def __init__(
        self,
        grid_pinpoints: Sequence[Sequence[int]] | None = None,
        resample: str = "bicubic",
        backend: str = "pil",
    ) -> None:
        super().__init__(resample, backend)
        pinpoints = LLAVA_NEXT_PINPOINTS_336 if grid_pinpoints is None else grid_pinpoints
        self.grid_pinpoints = [(int(h), int(w)) for h, w in pinpoints]
        if not self.grid_pinpoints or min(min(p) for p in self.grid_pinpoints) < 1:
            raise ValueError(f"grid_pinpoints={grid_pinpoints!r}: need (height, width) pairs > 0")

    def canvas(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the pinpoint that fits a ``width`` x ``height`` image best."""
        best, best_kept, best_waste = self.grid_pinpoints[0], 0, math.inf
        for canvas_h, canvas_w in self.grid_pinpoints:
            scale = min(canvas_w / width, canvas_h / height)
            kept = min(int(width * scale) * int(height * scale), width * height)
            waste = canvas_w * canvas_h - kept
            if kept > best_kept or (kept == best_kept and waste < best_waste):
                best, best_kept, best_waste = (canvas_h, canvas_w), kept, waste
        return best

    def _crops(self, image: Image.Image, size: int) -> list[Crop]:
        canvas_h, canvas_w = self.canvas(image.width, image.height)
        if canvas_h % size or canvas_w % size:
            raise ValueError(
                f"grid pinpoint {canvas_h}x{canvas_w} (height x width) is not a multiple of the "
                f"crop size {size}: give pinpoints made of whole {size}-px tiles"
            )
        fit_w, fit_h = _fit_inside(image.width, image.height, canvas_w, canvas_h)
        left, top = (canvas_w - fit_w) // 2, (canvas_h - fit_h) // 2
        canvas = Image.new("RGB", (canvas_w, canvas_h))  # black, as the VLM pads
        canvas.paste(self._resize(image, fit_w, fit_h), (left, top))
        scale_x, scale_y = image.width / fit_w, image.height / fit_h
        crops = [self._whole(image, size, 0)]
        for y0 in range(0, canvas_h, size):
            for x0 in range(0, canvas_w, size):
                box = _scaled_box((x0 - left, y0 - top), size, scale_x, scale_y)
                crops.append(Crop(len(crops), box, canvas.crop((x0, y0, x0 + size, y0 + size))))
        return crops

    def _settings(self) -> dict[str, Any]:
        return {"grid_pinpoints": [list(p) for p in self.grid_pinpoints]}


class InternVLTiles(CropPlan):
    """InternVL's dynamic tiling: tiles of a resize to the closest tiled aspect ratio.

    Among the grids of ``cols`` x ``rows`` tiles with ``min_tiles <= cols * rows <= max_tiles``
    (fewest tiles first), the one whose ``cols / rows`` is closest to the image's aspect ratio
    wins; on a tie a grid with more tiles wins while the image's area exceeds half of the
    tiles' area. The image is resized (aspect not kept) to ``cols * size`` x ``rows * size``
    and cut into tiles row by row, followed by a thumbnail of the whole image when there is
    more than one tile.

    Args:
        min_tiles, max_tiles: Bounds on ``cols * rows`` (InternVL3: 1 and 12).
        thumbnail: Append the whole image squashed to one tile when there are several tiles.
        resample, backend: As ``CropPlan``.
    """

    def __init__(
        self,
        min_tiles: int = 1,
        max_tiles: int = 12,
        thumbnail: bool = True,
        resample: str = "bicubic",
        backend: str = "pil",
    ) -> None:
        super().__init__(resample, backend)
        if not 1 <= min_tiles <= max_tiles:
            raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
        self.min_tiles = min_tiles
        self.max_tiles = max_tiles
        self.thumbnail = thumbnail

    def tile_grid(self, width: int, height: int, size: int) -> tuple[int, int]:
        """(cols, rows) of tiles for a ``width`` x ``height`` image and ``size``-px tiles."""
        grids = [
            (cols, rows)
            for cols in range(1, self.max_tiles + 1)
            for rows in range(1, self.max_tiles + 1)
            if self.min_tiles <= cols * rows <= self.max_tiles
        ]
        grids.sort(key=lambda grid: grid[0] * grid[1])  # stable: fewest tiles first
        aspect, area = width / height, width * height
        best, best_diff = (1, 1), math.inf
        for cols, rows in grids:
            diff = abs(aspect - cols / rows)
            if diff < best_diff:
                best, best_diff = (cols, rows), diff
            elif diff == best_diff and area > 0.5 * size * size * cols * rows:
                best = (cols, rows)
        return best

    def _crops(self, image: Image.Image, size: int) -> list[Crop]:
        cols, rows = self.tile_grid(image.width, image.height, size)
        resized = self._resize(image, cols * size, rows * size)
        scale_x, scale_y = image.width / (cols * size), image.height / (rows * size)
        crops = []
        for row in range(rows):
            for col in range(cols):
                x0, y0 = col * size, row * size
                box = _scaled_box((x0, y0), size, scale_x, scale_y)
                crops.append(Crop(len(crops), box, resized.crop((x0, y0, x0 + size, y0 + size))))
        if self.thumbnail and len(crops) > 1:
            crops.append(self._whole(image, size, len(crops)))
        return crops

    def _settings(self) -> dict[str, Any]:
        return {
            "min_tiles": self.min_tiles,
            "max_tiles": self.max_tiles,
            "thumbnail": self.thumbnail,
        }


def _fit_inside(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[int, int]:
    """Size of an aspect-preserving resize that touches the canvas on its tighter side.

    The other side is rounded up (never past the canvas), as LLaVA-NeXT rounds it.
    """
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        return canvas_w, min(math.ceil(height * scale_w), canvas_h)
    return min(math.ceil(width * scale_h), canvas_w), canvas_h


def _scaled_box(origin: tuple[int, int], size: int, scale_x: float, scale_y: float) -> Box:
    """Source-pixel box of the ``size`` square at ``origin`` of a resized image."""
    x0, y0 = origin
    return (
        round(x0 * scale_x),
        round(y0 * scale_y),
        round((x0 + size) * scale_x),
        round((y0 + size) * scale_y),
    )
