"""The feature-shard format: one place that says how a sample is written and read back.

A shard is a WebDataset tar; each sample is one encoder crop and holds three members:

- ``<key>.feats.npy``  (L, C) float16, the encoder's per-token features, row-major over the
  (H, W) token grid (L = H*W).
- ``<key>.image.png``  the crop as the encoder saw it (RGB, before normalisation), resized to the
  extraction's target resolution: the image reconstructor's target.
- ``<key>.meta.json``  ``{"encoder", "layer", "grid": [H, W], "feature_dim", "crop_index",
  "crop_box": [x0, y0, x1, y1], "source_key"}``.

Next to the tars, ``sizes.json`` maps each tar's file name to its sample count, so a reader knows
the epoch length without opening the tars. ``data/README.md`` documents the same for users.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FEATS = "feats.npy"
IMAGE = "image.png"
META = "meta.json"
SIZES_FILE = "sizes.json"
SHARD_PATTERN = "shard-%06d.tar"


class FeatureContractError(ValueError):
    """The shards hold features of another shape or encoder than the config expects.

    Not a corrupt sample to skip: every sample would fail the same way, so training must stop.
    """


class CorruptSampleError(ValueError):
    """One sample cannot be used (missing member, undecodable bytes, non-finite features)."""


@dataclass(frozen=True)
class SampleMeta:
    """What ``meta.json`` holds for one crop."""

    encoder: str
    layer: int
    grid: tuple[int, int]
    feature_dim: int
    crop_index: int
    crop_box: tuple[int, int, int, int]
    source_key: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "encoder": self.encoder,
                "layer": self.layer,
                "grid": list(self.grid),
                "feature_dim": self.feature_dim,
                "crop_index": self.crop_index,
                "crop_box": list(self.crop_box),
                "source_key": self.source_key,
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SampleMeta:
        d = json.loads(raw)
        return cls(
            encoder=str(d["encoder"]),
            layer=int(d["layer"]),
            grid=(int(d["grid"][0]), int(d["grid"][1])),
            feature_dim=int(d["feature_dim"]),
            crop_index=int(d["crop_index"]),
            crop_box=tuple(int(v) for v in d["crop_box"]),  # type: ignore[arg-type]
            source_key=str(d["source_key"]),
        )


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


def sample_key(source_key: str, crop_index: int) -> str:
    """A WebDataset-safe key: WebDataset splits a member name at its first dot, so dots (and
    anything outside ``[A-Za-z0-9_-]``) become ``_``, and a leading ``_`` (reserved for
    ``__key__``-style fields) is prefixed with ``k``."""
    safe = _UNSAFE_KEY_CHARS.sub("_", source_key)
    if safe.startswith("_"):
        safe = "k" + safe
    return f"{safe}-c{crop_index:02d}"


def encode_sample(feats: np.ndarray, image: Image.Image, meta: SampleMeta) -> dict[str, Any]:
    """Bytes for ``wds.ShardWriter.write``; ``feats`` is (L, C) and stored as float16."""
    h, w = meta.grid
    if feats.shape != (h * w, meta.feature_dim):
        raise FeatureContractError(
            f"feats of shape {tuple(feats.shape)} do not match grid {h}x{w} and "
            f"feature_dim {meta.feature_dim} for source {meta.source_key!r}"
        )
    feats_buf = io.BytesIO()
    np.save(feats_buf, np.ascontiguousarray(feats, dtype=np.float16))
    image_buf = io.BytesIO()
    image.convert("RGB").save(image_buf, format="PNG")
    return {
        "__key__": sample_key(meta.source_key, meta.crop_index),
        FEATS: feats_buf.getvalue(),
        IMAGE: image_buf.getvalue(),
        META: meta.to_json(),
    }


@dataclass(frozen=True)
class DecodedSample:
    feats: np.ndarray  # (L, C) float32
    image: Image.Image  # RGB
    meta: SampleMeta


def decode_sample(raw: dict[str, Any]) -> DecodedSample:
    """Parse one raw WebDataset sample; raise ``CorruptSampleError`` naming shard and key."""
    where = f"sample {raw.get('__key__', '?')!r} in {raw.get('__url__', '?')}"
    missing = [m for m in (FEATS, IMAGE, META) if m not in raw]
    if missing:
        raise CorruptSampleError(f"{where} lacks member(s) {missing}")
    try:
        feats = np.load(io.BytesIO(raw[FEATS]), allow_pickle=False).astype(np.float32)
        image = Image.open(io.BytesIO(raw[IMAGE]))
        image.load()
        meta = SampleMeta.from_json(raw[META])
    except Exception as err:  # any decoding failure is a corrupt sample
        raise CorruptSampleError(f"{where} cannot be decoded: {err}") from err
    if feats.ndim != 2:
        raise CorruptSampleError(f"{where} has feats of shape {feats.shape}, expected (L, C)")
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        raise CorruptSampleError(f"{where} has non-finite (NaN/Inf) features in {bad} token(s)")
    return DecodedSample(feats=feats, image=image.convert("RGB"), meta=meta)


def check_contract(
    sample: DecodedSample,
    where: str,
    feature_dim: int,
    grid: tuple[int, int],
    encoder: str | None,
) -> None:
    """Raise ``FeatureContractError`` if a sample's features do not fit the configured model."""
    num_tokens, width = sample.feats.shape
    h, w = grid
    if width != feature_dim:
        raise FeatureContractError(
            f"{where}: features are {width} wide but the config says feature_dim={feature_dim} "
            f"(encoder in meta.json: {sample.meta.encoder!r}). Extract features with the encoder "
            f"the config is for, or use the config that matches these shards."
        )
    if num_tokens != h * w:
        raise FeatureContractError(
            f"{where}: {num_tokens} tokens but the config's grid_size {h}x{w} needs {h * w}"
        )
    if encoder is not None and sample.meta.encoder != encoder:
        raise FeatureContractError(
            f"{where}: extracted with encoder {sample.meta.encoder!r} but the config expects "
            f"{encoder!r}"
        )


def read_sizes(shard_dir: Path) -> dict[str, int]:
    """The ``sizes.json`` of a shard folder, or a clear error saying how to make one."""
    path = shard_dir / SIZES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: it holds each shard's sample count (written by `vtsel extract`). "
            f"Write one as {{\"shard-000000.tar\": <count>, ...}}."
        )
    return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}


def write_sizes(shard_dir: Path, sizes: dict[str, int]) -> None:
    """Write ``sizes.json`` atomically so a killed writer never leaves a half file."""
    tmp = shard_dir / (SIZES_FILE + ".tmp")
    tmp.write_text(json.dumps(dict(sorted(sizes.items())), indent=1))
    tmp.replace(shard_dir / SIZES_FILE)
