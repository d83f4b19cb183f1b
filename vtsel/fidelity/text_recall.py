"""Text recall: the share of a crop's text-bearing tokens that a selection keeps.

Documents and charts carry their answers in text, and the paper's gains are largest on
OCR-heavy benchmarks, so a selection that drops text tokens is a bad one whatever its
reconstruction error. Text boxes come from ``<source_key>.regions.json`` files next to the
images (``vtsel demo-data`` writes them: ``{"width", "height", "boxes": [[x0, y0, x1, y1], ...]}``
in source pixels, x1 and y1 exclusive); each crop maps them through its ``crop_box`` onto its
token grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vtsel.data.format import SampleMeta

REGIONS_SUFFIX = ".regions.json"
CELLS_PER_TOKEN_SIDE = 8  # each token is measured on an 8x8 raster of its area


def text_cover(
    boxes: list[list[float]], crop_box: tuple[int, int, int, int], grid: tuple[int, int]
) -> np.ndarray:
    """The share of each token's area (H, W) that text boxes cover, in [0, 1].

    Token (r, c) sees the part of the crop box that the encoder's (H, W) grid gives it; its
    area is rastered into ``CELLS_PER_TOKEN_SIDE``² cells and a cell is covered when its centre
    lies in a box, so overlapping boxes count once.

    Args:
        boxes: Text boxes [x0, y0, x1, y1] in source-image pixels.
        crop_box: [x0, y0, x1, y1] of the crop in the same pixels.
        grid: (H, W) token grid of the crop.
    """
    height, width = grid
    cells = CELLS_PER_TOKEN_SIDE
    left, top, right, bottom = crop_box
    x_centres = left + (np.arange(width * cells) + 0.5) * (right - left) / (width * cells)
    y_centres = top + (np.arange(height * cells) + 0.5) * (bottom - top) / (height * cells)
    covered = np.zeros((height * cells, width * cells), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        in_cols = (x_centres >= x0) & (x_centres < x1)  # (W*cells,)
        in_rows = (y_centres >= y0) & (y_centres < y1)  # (H*cells,)
        covered |= in_rows[:, None] & in_cols[None, :]
    return covered.reshape(height, cells, width, cells).mean(axis=(1, 3))  # (H, W)


def text_recall(keep_mask: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
    """Share of text-bearing tokens kept, per crop: (B, L) 0/1 and (B, L) bool -> (B,).

    NaN for a crop without text-bearing tokens (a photo), so means can leave it out.
    """
    text = text_tokens.float()
    kept_text = (keep_mask.float() * text).sum(dim=-1)  # (B,)
    num_text = text.sum(dim=-1)  # (B,)
    return torch.where(num_text > 0, kept_text / num_text.clamp(min=1), torch.nan)


class TextRegions:
    """Text-bearing tokens of each crop, from the ``regions.json`` files under a folder.

    Args:
        root: The folder the shards were extracted from: a crop of source key ``k`` looks for
            ``<root>/<k>.regions.json``; a source without one has no known text.
        min_cover: A token is text-bearing when text covers at least this share of its area.
    """

    def __init__(self, root: str | Path, min_cover: float = 0.25) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"regions folder {self.root} does not exist: give the folder the shards were "
                f"extracted from (where <source_key>{REGIONS_SUFFIX} files lie)"
            )
        if not 0.0 < min_cover <= 1.0:
            raise ValueError(f"text_min_cover must lie in (0, 1], got {min_cover}")
        self.min_cover = min_cover
        self._boxes: dict[str, list[list[float]] | None] = {}

    def boxes(self, source_key: str) -> list[list[float]] | None:
        """The text boxes of a source image, or None if it has no regions file."""
        if source_key not in self._boxes:
            path = self.root / f"{source_key}{REGIONS_SUFFIX}"
            self._boxes[source_key] = _read_boxes(path) if path.is_file() else None
        return self._boxes[source_key]

    def text_tokens(self, metas: list[SampleMeta]) -> torch.Tensor:
        """(B, L) bool: the text-bearing tokens of each crop (all False without regions)."""
        rows = []
        for meta in metas:
            boxes = self.boxes(meta.source_key) or []
            cover = text_cover(boxes, meta.crop_box, meta.grid)  # (H, W)
            rows.append(torch.from_numpy(cover.reshape(-1) >= self.min_cover))  # (L,)
        return torch.stack(rows)


def _read_boxes(path: Path) -> list[list[float]]:
    """The ``boxes`` of a regions file, or an error naming the file."""
    try:
        boxes = [[float(v) for v in box] for box in json.loads(path.read_text())["boxes"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a regions file with a 'boxes' list: {err}") from err
    if any(len(box) != 4 for box in boxes):
        raise ValueError(f"{path}: every box must be [x0, y0, x1, y1]")
    return boxes
