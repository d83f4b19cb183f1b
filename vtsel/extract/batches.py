"""Encoder input batches of a rank's work units, made in DataLoader workers.

Everything per image that is not the encoder runs here, off the process that drives the
accelerator: reading, decoding, cropping, normalising and PNG-encoding the reconstruction
target. Each worker takes whole units, so a unit's crops arrive in order from one worker and its
``UnitDone`` marker arrives with (or after) its last crop: the writer can commit it then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from vtsel.data.format import encode_png
from vtsel.extract.crops import CropPlan
from vtsel.extract.decode import MAX_IMAGE_PIXELS, UnusableImageError, decode_rgb
from vtsel.extract.inputs import SkippedInput, Source
from vtsel.extract.units import WorkUnit

log = logging.getLogger(__name__)

Batch = dict[str, Any]


class CropRecord(NamedTuple):
    """Everything about one crop the writer needs besides its features."""

    unit: int
    split: str
    source_key: str
    crop_index: int
    box: tuple[int, int, int, int]
    target_png: bytes  # the view at the target size, ``image.png``


class UnitDone(NamedTuple):
    """Sent after a unit's last crop: the unit can be committed."""

    unit: int
    images: int
    skipped: list[SkippedInput]


def keep_as_is(batch: Batch) -> Batch:
    """The DataLoader's collate function: batches are made by ``CropBatches`` itself."""
    return batch


class CropBatches(IterableDataset):
    """Batches ``{"pixels": (B, 3, S, S), "crops": [B CropRecord], "done": [UnitDone],
    "images": int}`` of the given units; ``images`` counts the source images finished since
    the previous batch (for progress). A batch may hold no crop, only ``done`` markers.

    Args:
        units: This rank's units; DataLoader worker w takes units w, w + n, ...
        crops: The crop plan.
        normalize: The encoder's view -> (3, S, S) input.
        image_size: The encoder's input side S.
        target_size: Side of the stored reconstruction target.
        batch_size: Crops per batch.
        max_image_pixels: Larger inputs are skipped before they are decoded.
    """

    def __init__(
        self,
        units: Sequence[WorkUnit],
        crops: CropPlan,
        normalize: Callable[[Image.Image], torch.Tensor],
        image_size: int,
        target_size: int,
        batch_size: int,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__()
        self.units = list(units)
        self.crops = crops
        self.normalize = normalize
        self.image_size = image_size
        self.target_size = target_size
        self.batch_size = batch_size
        self.max_image_pixels = max_image_pixels

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        units = self.units if worker is None else self.units[worker.id :: worker.num_workers]
        pixels: list[torch.Tensor] = []
        records: list[CropRecord] = []
        done: list[UnitDone] = []
        images = 0
        for unit in units:
            skipped: list[SkippedInput] = []
            for source, split in zip(unit.sources, unit.splits, strict=True):
                image = self._decode(source, skipped)
                for crop in [] if image is None else self.crops.crops(image, self.image_size):
                    pixels.append(self.normalize(crop.view))  # (3, S, S)
                    records.append(CropRecord(
                        unit.index, split, source.key, crop.index, crop.box, self._target(crop.view)
                    ))
                    if len(records) == self.batch_size:
                        yield self._batch(pixels, records, done, images)
                        pixels, records, done, images = [], [], [], 0
                images += 1
            done.append(UnitDone(unit.index, len(unit.sources), skipped))
        if records or done:
            yield self._batch(pixels, records, done, images)

    def _decode(self, source: Source, skipped: list[SkippedInput]) -> Image.Image | None:
        """The source as RGB, or None after logging and recording why it is skipped."""
        try:
            return decode_rgb(source.read(), self.max_image_pixels)
        except OSError as err:
            error = UnusableImageError("unreadable", f"{type(err).__name__}: {err}")
        except UnusableImageError as err:
            error = err
        log.warning("skipping %s: %s", source.where, error)
        skipped.append(SkippedInput(source.where, error.kind, error.detail))
        return None

    def _target(self, view: Image.Image) -> bytes:
        if view.size != (self.target_size, self.target_size):
            view = view.resize((self.target_size, self.target_size), Image.Resampling.BICUBIC)
        return encode_png(view)

    def _batch(
        self, pixels: list[torch.Tensor], records: list[CropRecord], done: list[UnitDone],
        images: int,
    ) -> Batch:
        stacked = (
            torch.stack(pixels) if pixels
            else torch.empty(0, 3, self.image_size, self.image_size)
        )  # (B, 3, S, S)
        return {"pixels": stacked, "crops": records, "done": done, "images": images}
