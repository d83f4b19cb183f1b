"""``vtsel extract``: encode a folder of images once into train/val feature shards.

Training reads features, never pixels, so the (large, frozen) vision encoder runs once here
instead of every epoch.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from vtsel.data.format import SHARD_PATTERN, SampleMeta, encode_sample, sample_key, write_sizes
from vtsel.extract.encoders import OpenClipEncoder, PreparedCrop, to_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Upsampled to the encoder's input, a smaller image holds no detail worth a training sample.
MIN_IMAGE_SIDE = 16
# Every sample of a run uses the same crop; multi-crop extraction will number them.
CROP_INDEX = 0
_SPLITS = ("train", "val")


@dataclass(frozen=True)
class _Source:
    path: Path
    key: str  # path relative to the input root, without extension


class _UnusableImageError(ValueError):
    """An input that is skipped (and reported), not a reason to stop the run."""


def extract(
    images: str,
    out: str,
    model_name: str = "ViT-S-16",
    pretrained: str | None = None,
    layer: int = -2,
    target_size: int = 112,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    batch_size: int = 16,
    shard_maxcount: int = 256,
    device: str = "auto",
) -> None:
    """Encode images into ``<out>/train`` and ``<out>/val`` WebDataset feature shards.

    Images are split by source (a hash of the image's key and ``split_seed``), so no image
    lands on both sides and a rerun gives the same split. Unusable files are skipped and listed
    at the end instead of stopping a long run.

    Args:
        images: A folder (searched recursively), a glob pattern, or a text file with one image
            path per line (relative paths are relative to that file).
        out: Output folder; gets ``train/`` and ``val/`` with tars and ``sizes.json``. Shards of
            an earlier run there are replaced.
        model_name: open_clip architecture of the vision tower, e.g. ``ViT-S-16``.
        pretrained: Weights: null for seeded random weights, an open_clip tag (e.g.
            ``openai``, downloaded) or the path of a local weights file.
        layer: Transformer block whose tokens are stored; negative counts from the end
            (LLaVA uses -2, the penultimate block).
        target_size: Side in pixels of the crop image stored with each sample (the image
            reconstructor's target).
        val_fraction: Share of source images sent to ``val``; with 2+ images and a positive
            value at least one image goes to ``val``.
        split_seed: Seed of the train/val hash; change it for another split.
        batch_size: Images per encoder forward pass.
        shard_maxcount: Samples per tar before a new one is started.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
    """
    sources = _list_sources(images)
    splitter = _Splitter(val_fraction, split_seed, ensure_val=len(sources) >= 2)
    compute_device = _resolve_device(device)
    encoder = OpenClipEncoder(model_name, pretrained=pretrained, layer=layer).to(compute_device)
    writers = {split: _SplitWriter(Path(out) / split, shard_maxcount) for split in _SPLITS}
    skipped: dict[Path, str] = {}
    try:
        with _progress() as progress:
            task = progress.add_task("extracting", total=len(sources))
            crops = _prepared_crops(
                splitter.ordered(sources), encoder, skipped, lambda: progress.advance(task)
            )
            for batch in _batches(crops, batch_size):
                pixels = torch.stack([crop.pixels for _, crop in batch])  # (B, 3, S, S)
                feats = _encode(encoder, pixels, compute_device)  # (B, L, C)
                for (source, crop), sample_feats in zip(batch, feats, strict=True):
                    sample = _to_sample(source, crop, sample_feats, encoder, target_size)
                    writers[splitter.split_of(source.key)].write(sample)
                progress.advance(task, len(batch))
    finally:
        for writer in writers.values():
            writer.close()
    _print_summary(writers, skipped, len(sources))


def _list_sources(spec: str) -> list[_Source]:
    """Resolve the ``images`` argument into keyed image files; fail if there are none."""
    spec_path = Path(spec)
    if spec_path.is_dir():
        paths = [p for p in spec_path.rglob("*") if p.is_file() and _is_image_name(p)]
    elif spec_path.is_file() and not _is_image_name(spec_path):
        lines = spec_path.read_text().splitlines()
        paths = [(spec_path.parent / line.strip()).absolute() for line in lines if line.strip()]
    else:
        paths = [Path(p).absolute() for p in glob.glob(spec, recursive=True)]
        paths = [p for p in paths if p.is_file() and _is_image_name(p)]
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) match {spec!r}")
    # Keys are relative to the folder given, or else to the deepest folder holding all inputs.
    root = spec_path if spec_path.is_dir() else Path(os.path.commonpath([p.parent for p in paths]))
    sources = [_Source(p, p.relative_to(root).with_suffix("").as_posix()) for p in sorted(paths)]
    _check_unique_keys(sources)
    return sources


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _check_unique_keys(sources: list[_Source]) -> None:
    """Two files whose sample keys coincide (``a.png``/``a.jpg``, ``a.b``/``a_b``) would
    overwrite each other in a shard reader's view."""
    seen: dict[str, Path] = {}
    for source in sources:
        key = sample_key(source.key, CROP_INDEX)
        if key in seen:
            raise ValueError(f"{seen[key]} and {source.path} both map to sample key {key!r}")
        seen[key] = source.path


def _to_sample(
    source: _Source,
    crop: PreparedCrop,
    feats: np.ndarray,
    encoder: OpenClipEncoder,
    target_size: int,
) -> dict[str, Any]:
    """Shard-ready bytes of one crop: (L, C) features, target image and metadata."""
    meta = SampleMeta(
        encoder=encoder.encoder_id,
        layer=encoder.layer,
        grid=encoder.grid,
        feature_dim=encoder.feature_dim,
        crop_index=CROP_INDEX,
        crop_box=crop.box,
        source_key=source.key,
    )
    target = crop.view.resize((target_size, target_size), Image.Resampling.BICUBIC)
    return encode_sample(feats, target, meta)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_image(path: Path) -> Image.Image:
    """Decode an image fully and convert it to RGB, or say why it cannot be used."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: truncated files fail here, not mid-batch
            image = to_rgb(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL signals broken files with any of these (SyntaxError for malformed PNG chunks).
        raise _UnusableImageError(f"cannot decode: {err}") from err
    if min(image.size) < MIN_IMAGE_SIDE:
        raise _UnusableImageError(
            f"{image.width}x{image.height} is smaller than {MIN_IMAGE_SIDE} px on a side"
        )
    return image


def _prepared_crops(
    sources: list[_Source],
    encoder: OpenClipEncoder,
    skipped: dict[Path, str],
    on_skip: Callable[[], None],
) -> Iterator[tuple[_Source, PreparedCrop]]:
    """Load and crop each source in turn; unusable ones are logged into ``skipped``."""
    for source in sources:
        try:
            image = _load_image(source.path)
        except _UnusableImageError as err:
            log.warning("skipping %s: %s", source.path, err)
            skipped[source.path] = str(err)
            on_skip()
            continue
        yield source, encoder.prepare(image)


def _batches(
    items: Iterator[tuple[_Source, PreparedCrop]], batch_size: int
) -> Iterator[list[tuple[_Source, PreparedCrop]]]:
    batch: list[tuple[_Source, PreparedCrop]] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(encoder: OpenClipEncoder, pixels: torch.Tensor, device: torch.device) -> np.ndarray:
    """(B, 3, S, S) pixels -> (B, L, C) float32 features on the CPU (bf16 compute on CUDA)."""
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
    ):
        feats = encoder(pixels.to(device))  # (B, L, C)
    return feats.float().cpu().numpy()


class _Splitter:
    """Assigns each source to train or val from a hash of its key, so reruns agree.

    Sources are processed in ascending hash order; if no usable source hashes below
    ``val_fraction``, the first usable one (the lowest hash) is sent to val anyway, so a small
    folder still gets a val set.
    """

    def __init__(self, val_fraction: float, seed: int, ensure_val: bool) -> None:
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1], got {val_fraction}")
        self.val_fraction = val_fraction
        self.seed = seed
        self._force_next_to_val = ensure_val and val_fraction > 0

    def unit_hash(self, key: str) -> float:
        """A uniform number in [0, 1) fixed by ``key`` and the seed."""
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def ordered(self, sources: list[_Source]) -> list[_Source]:
        return sorted(sources, key=lambda source: self.unit_hash(source.key))

    def split_of(self, key: str) -> str:
        """The split of the next usable source; call in ``ordered`` order."""
        is_val = self.unit_hash(key) < self.val_fraction or self._force_next_to_val
        self._force_next_to_val = False
        return "val" if is_val else "train"


class _SplitWriter:
    """Shards of one split, counting samples per tar for ``sizes.json``.

    The ShardWriter is opened on the first sample so that an empty split leaves no empty tar.
    """

    def __init__(self, folder: Path, maxcount: int) -> None:
        self.folder = folder
        self.maxcount = maxcount
        self.sizes: dict[str, int] = {}
        self._writer: wds.ShardWriter | None = None
        folder.mkdir(parents=True, exist_ok=True)
        for old_shard in folder.glob(re.sub(r"%0?\d*d", "*", SHARD_PATTERN)):
            old_shard.unlink()

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None:
            pattern = str(self.folder / SHARD_PATTERN)
            self._writer = wds.ShardWriter(pattern, maxcount=self.maxcount, verbose=0)
        self._writer.write(sample)
        shard_name = Path(self._writer.fname).name
        self.sizes[shard_name] = self.sizes.get(shard_name, 0) + 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        write_sizes(self.folder, self.sizes)

    @property
    def num_samples(self) -> int:
        return sum(self.sizes.values())


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0.0:.1f} images/s", style="progress.data.speed")


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
    )


def _print_summary(
    writers: dict[str, _SplitWriter], skipped: dict[Path, str], num_sources: int
) -> None:
    console = Console()
    for split, writer in writers.items():
        console.print(
            f"{split}: {writer.num_samples} samples in {len(writer.sizes)} shard(s) "
            f"-> {writer.folder}"
        )
        if writer.num_samples == 0:
            console.print(f"[yellow]warning: the {split} split is empty[/yellow]")
    console.print(f"skipped {len(skipped)} of {num_sources} input(s)")
    for path, reason in skipped.items():
        console.print(f"  {path}: {reason}")
