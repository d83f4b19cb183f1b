"""What the extraction tests share: real photos to extract, tiny transformers towers to extract
them with, and reading the shards back."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import skimage.data
import torch
import transformers
import webdataset as wds
from PIL import Image

from vtsel.data.format import DecodedSample, decode_sample

# Colour photos shipped with scikit-image (no download), in a fixed order.
PHOTO_NAMES = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "colorwheel",
    "hubble_deep_field", "cat",
)

TOWER_SIZE, TOWER_PATCH = 28, 7  # a tiny tower's input side and patch: a 4x4 grid
TOWER_WIDTH = 32
TOWER_CONFIG = {"hidden_size": TOWER_WIDTH, "intermediate_size": 64, "num_hidden_layers": 3,
                "num_attention_heads": 4, "image_size": TOWER_SIZE, "patch_size": TOWER_PATCH}


def save_tower(
    folder: Path,
    config_name: str = "Dinov2Config",
    processor_name: str = "BitImageProcessor",
    extra: dict | None = None,
) -> Path:
    """A tiny seeded random transformers vision tower and its image processor, saved in
    ``folder`` as a hub folder would hold them (what ``TransformersEncoder`` loads)."""
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**TOWER_CONFIG, **(extra or {}))
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    side = {"height": TOWER_SIZE, "width": TOWER_SIZE}
    getattr(transformers, processor_name)(
        size=side, crop_size=side, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4],
    ).save_pretrained(folder)
    return folder


def photo(index: int, side: int = 96) -> Image.Image:
    """A real photo, downscaled so that decoding stays cheap, with a different aspect per
    index (so crops and boxes differ from image to image)."""
    image = Image.fromarray(getattr(skimage.data, PHOTO_NAMES[index % len(PHOTO_NAMES)])())
    image = image.convert("RGB")
    width = side + 16 * (index % 4)
    return image.resize((width, side), Image.Resampling.BILINEAR)


def write_photos(folder: Path, count: int, prefix: str = "img") -> list[str]:
    """``count`` PNG photos ``<prefix>-NN.png``; returns their keys."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = [f"{prefix}-{i:02d}" for i in range(count)]
    for i, key in enumerate(keys):
        photo(i).save(folder / f"{key}.png")
    return keys


def tars(out: Path, split: str) -> list[Path]:
    return sorted((out / split).glob("*.tar"))


def read_split(out: Path, split: str) -> list[tuple[str, DecodedSample]]:
    """Every sample of a split as (tar key, decoded sample), read from the tars themselves."""
    urls = [str(p) for p in tars(out, split)]
    if not urls:
        return []
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    return [(raw["__key__"], decode_sample(raw)) for raw in dataset]


def source_keys(out: Path) -> dict[str, list[str]]:
    """The source key of every sample per split, repeats kept (so duplicates show)."""
    return {
        split: [sample.meta.source_key for _, sample in read_split(out, split)]
        for split in ("train", "val")
    }


def assert_each_once(out: Path, expected: set[str]) -> None:
    """Every expected source is in the shards exactly once, on one side, and sizes.json agrees
    with what the tars hold."""
    keys = source_keys(out)
    counts = Counter(keys["train"] + keys["val"])
    assert set(counts) == expected
    assert set(counts.values()) == {1}, {k: n for k, n in counts.items() if n > 1}
    for split in ("train", "val"):
        sizes = json.loads((out / split / "sizes.json").read_text())
        assert sorted(sizes) == [p.name for p in tars(out, split)]
        for tar in tars(out, split):
            with tarfile.open(tar) as opened:
                assert sizes[tar.name] == len({m.name.split(".")[0] for m in opened.getmembers()})


def features_by_key(out: Path) -> dict[str, np.ndarray]:
    return {
        key: sample.feats
        for split in ("train", "val")
        for key, sample in read_split(out, split)
    }
