"""``vtsel extract``: encode a folder of images once into train/val feature shards.

Training reads features, never pixels, so the (large, frozen) vision encoder runs once here
instead of every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
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

from vtsel.data.format import SampleMeta, encode_sample
from vtsel.extract.encoders import OpenClipEncoder, PreparedCrop
from vtsel.extract.inputs import CROP_INDEX, Source, list_sources, usable_images
from vtsel.extract.shards import SPLITS, Splitter, SplitWriter


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
    sources = list_sources(images)
    splitter = Splitter(val_fraction, split_seed, ensure_val=len(sources) >= 2)
    compute_device = _resolve_device(device)
    encoder = OpenClipEncoder(model_name, pretrained=pretrained, layer=layer).to(compute_device)
    writers = {split: SplitWriter(Path(out) / split, shard_maxcount) for split in SPLITS}
    skipped: dict[Path, str] = {}
    try:
        with _progress() as progress:
            task = progress.add_task("extracting", total=len(sources))
            images_in_split_order = usable_images(
                splitter.ordered(sources), skipped, lambda: progress.advance(task)
            )
            crops = ((source, encoder.prepare(image)) for source, image in images_in_split_order)
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


def _to_sample(
    source: Source,
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


def _batches(
    items: Iterator[tuple[Source, PreparedCrop]], batch_size: int
) -> Iterator[list[tuple[Source, PreparedCrop]]]:
    batch: list[tuple[Source, PreparedCrop]] = []
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
        feats = encoder(pixels.to(device)).features  # (B, L, C)
    return feats.float().cpu().numpy()


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
    writers: dict[str, SplitWriter], skipped: dict[Path, str], num_sources: int
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
