"""The feature-shard format: one place that says how a sample is written and read back.

A shard is a WebDataset tar; each sample is one encoder crop and holds these members:

- ``<key>.feats.npy``  (L, C) float16, the encoder's per-token features, row-major over the
  (H, W) token grid (L = H*W).
- ``<key>.image.png``  the crop as the encoder saw it (RGB, before normalisation), resized to the
  extraction's target resolution: the image reconstructor's target.
- ``<key>.meta.json``  ``{"encoder", "layer", "grid": [H, W], "feature_dim", "crop_index",
  "crop_box": [x0, y0, x1, y1], "source_key"}``.
- ``<key>.attn.npy``  optional, (L,) float16: how much attention each token receives from the
  encoder (e.g. the CLS token's), for selection methods that rank tokens by it. Either every
  sample of an extraction has it or none does.
- ``<key>.recv_attn.npy``  optional, (2, L) float16: the attention each token *receives*
  (head-averaged map, mean over all queries, prefix columns dropped) in HiPrune's object layer
  and in the feature layer, in that order. Either every sample of an extraction has it or none
  does; shards written before it existed simply lack it.

``<key>`` is :func:`sample_key` of the source image's key and the crop index: reversible, so the
source key never has to be guessed back from a mangled name.

Next to the tars, ``sizes.json`` maps each tar's file name to its sample count, so a reader knows
the epoch length without opening the tars. One folder up, ``manifest.json``
(:mod:`vtsel.data.manifest`) says which encoder and crops made the features.
``data/README.md`` documents the same for users.
"""

from __future__ import annotations

import io
import json
import re
import string
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vtsel.contract import FeatureContract, FeatureContractError
from vtsel.outputs import write_atomically

FEATS = "feats.npy"
IMAGE = "image.png"
META = "meta.json"
ATTN = "attn.npy"
RECV_ATTN = "recv_attn.npy"
RECEIVED_MAPS = 2  # rows of recv_attn.npy: (object layer, feature layer)
SIZES_FILE = "sizes.json"
SHARD_PATTERN = "shard-%06d.tar"


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


# Kept as they are in a sample key; every other character (and a leading "_") is %-escaped.
_KEY_SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
_CROP_SUFFIX = re.compile(r"-c(\d{2,})$")


def sample_key(source_key: str, crop_index: int) -> str:
    """The WebDataset key of one crop: the source key %-escaped, then ``-c<crop index>``.

    WebDataset splits a member name at its first dot (``a.b.feats.npy`` would be key ``a``) and
    skips names that start with ``__``, so every character outside ``[A-Za-z0-9_-]``, and a
    leading ``_``, becomes ``%XX`` per UTF-8 byte: ``sub/scan.v2`` -> ``sub%2Fscan%2Ev2-c00``.
    Unlike replacing them with ``_`` this is one-to-one, so ``a.b`` and ``a_b`` stay apart and
    :func:`source_key_of` recovers the original.
    """
    if crop_index < 0:
        raise ValueError(f"crop index must be >= 0, got {crop_index}")
    escaped = "".join(
        char if char in _KEY_SAFE_CHARS and not (pos == 0 and char == "_")
        else "".join(f"%{byte:02X}" for byte in char.encode())
        for pos, char in enumerate(source_key)
    )
    return f"{escaped}-c{crop_index:02d}"


def source_key_of(key: str) -> tuple[str, int]:
    """The source key and crop index a :func:`sample_key` was made from."""
    match = _CROP_SUFFIX.search(key)
    if match is None:
        raise ValueError(f"{key!r} does not end in a crop index such as '-c00'")
    return urllib.parse.unquote(key[: match.start()], errors="strict"), int(match.group(1))


def encode_png(image: Image.Image) -> bytes:
    """The ``image.png`` member of an RGB image (done where the crop is made, off the writer).

    Compression level 1 of 9: half the time of PNG's default for a few percent more bytes,
    which the float16 features outweigh several times over; extraction encodes one per crop.
    """
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_sample(
    feats: np.ndarray,
    image: Image.Image | bytes,
    meta: SampleMeta,
    attention: np.ndarray | None = None,
    received_attention: np.ndarray | None = None,
) -> dict[str, Any]:
    """Bytes for ``wds.ShardWriter.write``; ``feats`` (L, C), ``attention`` (L,) and
    ``received_attention`` (2, L) are stored as float16, ``image`` is a PIL image or its
    :func:`encode_png` bytes.

    Raises:
        FeatureContractError: ``feats`` or an attention map do not fit ``meta``'s grid and
            width.
        CorruptSampleError: A value is not finite in float16 (NaN, or beyond +-65504): stored,
            the reader would reject it, so the caller skips the crop instead.
    """
    h, w = meta.grid
    if feats.shape != (h * w, meta.feature_dim):
        raise FeatureContractError(
            f"feats of shape {tuple(feats.shape)} do not match grid {h}x{w} and "
            f"feature_dim {meta.feature_dim} for source {meta.source_key!r}"
        )
    if attention is not None and attention.shape != (h * w,):
        raise FeatureContractError(
            f"attention of shape {tuple(attention.shape)} does not match grid {h}x{w} for "
            f"source {meta.source_key!r}"
        )
    if received_attention is not None and received_attention.shape != (RECEIVED_MAPS, h * w):
        raise FeatureContractError(
            f"received attention of shape {tuple(received_attention.shape)} is not "
            f"({RECEIVED_MAPS}, {h * w}) for grid {h}x{w} of source {meta.source_key!r}"
        )
    key = sample_key(meta.source_key, meta.crop_index)
    optional = {ATTN: attention, RECV_ATTN: received_attention}
    stored = {FEATS: feats, **{name: v for name, v in optional.items() if v is not None}}
    sample: dict[str, Any] = {"__key__": key}
    for name, values in stored.items():
        half = np.ascontiguousarray(values, dtype=np.float16)
        if not np.isfinite(half).all():
            raise CorruptSampleError(
                f"{name} of {key!r} has {int((~np.isfinite(half)).sum())} value(s) that are not "
                f"finite in float16 (NaN, or beyond +-65504)"
            )
        buffer = io.BytesIO()
        np.save(buffer, half)
        sample[name] = buffer.getvalue()
    sample[IMAGE] = image if isinstance(image, bytes) else encode_png(image)
    sample[META] = meta.to_json()
    return sample


@dataclass(frozen=True)
class DecodedSample:
    feats: np.ndarray  # (L, C) float32
    image: Image.Image  # RGB
    meta: SampleMeta
    attention: np.ndarray | None = None  # (L,) float32, when the shard stores it
    received_attention: np.ndarray | None = None  # (2, L) float32, when the shard stores it

    @property
    def contract(self) -> FeatureContract:
        """The features this sample holds, to check against a model's contract."""
        return FeatureContract(self.feats.shape[1], self.meta.grid, self.meta.encoder)


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
        attention, received = (
            np.load(io.BytesIO(raw[name]), allow_pickle=False).astype(np.float32)
            if name in raw else None
            for name in (ATTN, RECV_ATTN)
        )
    except Exception as err:  # any decoding failure is a corrupt sample
        raise CorruptSampleError(f"{where} cannot be decoded: {err}") from err
    if feats.ndim != 2:
        raise CorruptSampleError(f"{where} has feats of shape {feats.shape}, expected (L, C)")
    if feats.shape[0] != meta.grid[0] * meta.grid[1]:
        raise CorruptSampleError(
            f"{where} has {feats.shape[0]} tokens, but its meta.json grid {meta.grid[0]}x"
            f"{meta.grid[1]} needs {meta.grid[0] * meta.grid[1]}"
        )
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        raise CorruptSampleError(f"{where} has non-finite (NaN/Inf) features in {bad} token(s)")
    if attention is not None and (
        attention.shape != (feats.shape[0],) or not np.isfinite(attention).all()
    ):
        raise CorruptSampleError(
            f"{where} has attention of shape {attention.shape} (or non-finite), expected "
            f"({feats.shape[0]},) finite"
        )
    if received is not None and (
        received.shape != (RECEIVED_MAPS, feats.shape[0]) or not np.isfinite(received).all()
    ):
        raise CorruptSampleError(
            f"{where} has received attention of shape {received.shape} (or non-finite), "
            f"expected ({RECEIVED_MAPS}, {feats.shape[0]}) finite"
        )
    return DecodedSample(feats, image.convert("RGB"), meta, attention, received)


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
    write_atomically(shard_dir / SIZES_FILE, json.dumps(dict(sorted(sizes.items())), indent=1))
