"""``manifest.json``: what made a folder of feature shards, read before any tar is opened.

``vtsel extract`` writes one manifest at the top of its output (next to ``train/`` and ``val/``).
It serves two readers: the DataModule, which refuses shards of another encoder, grid or width
before training starts (rather than at the first batch), and a rerun of the extraction, which
resumes only when ``config_hash`` and the input keys are the same (otherwise the folder would
mix features of two configurations).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vtsel.contract import FeatureContract
from vtsel.outputs import write_atomically

MANIFEST_FILE = "manifest.json"
# Bumped when a reader of an older vtsel could misread the shards.
FORMAT_VERSION = 1


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of a JSON-able config, independent of key order."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The features' contract and the config that produced them.

    Attributes:
        encoder: The encoder's id, as every sample's ``meta.json`` repeats it.
        layer: The encoder block the features come from.
        grid: (H, W) token grid of every crop; L = H*W.
        feature_dim: Width C of every token.
        image_size: Side S of the encoder's square input.
        attention: Whether every sample has an ``attn.npy`` member.
        received_attention: Whether every sample has a ``recv_attn.npy`` member (the attention
            tokens receive in HiPrune's object layer and the feature layer); manifests written
            before it existed read as False.
        feature_dtype: How features are stored (``float16``).
        target_size: Side of each sample's ``image.png``.
        config: Everything that decides the samples' content (encoder and crop plan
            descriptions, split, units, limits, precision); ``config_hash`` is its hash.
        inputs: ``{"count", "sha256"}`` of the sorted source keys the samples were made from.
    """

    encoder: str
    layer: int
    grid: tuple[int, int]
    feature_dim: int
    image_size: int
    attention: bool
    feature_dtype: str
    target_size: int
    config: dict[str, Any]
    inputs: dict[str, Any]
    received_attention: bool = False

    @property
    def contract(self) -> FeatureContract:
        return FeatureContract(self.feature_dim, self.grid, self.encoder)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    def to_json(self) -> str:
        content = {"format_version": FORMAT_VERSION, **asdict(self), "grid": list(self.grid)}
        return json.dumps({**content, "config_hash": self.config_hash}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        content = json.loads(text)
        version = content.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"format_version {version!r}, this vtsel reads {FORMAT_VERSION}")
        return cls(
            encoder=str(content["encoder"]),
            layer=int(content["layer"]),
            grid=(int(content["grid"][0]), int(content["grid"][1])),
            feature_dim=int(content["feature_dim"]),
            image_size=int(content["image_size"]),
            attention=bool(content["attention"]),
            feature_dtype=str(content["feature_dtype"]),
            target_size=int(content["target_size"]),
            config=dict(content["config"]),
            inputs=dict(content["inputs"]),
            received_attention=bool(content.get("received_attention", False)),
        )


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest, or raise naming the file."""
    try:
        return Manifest.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{path} is not a readable vtsel manifest: {err}") from err


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write atomically: a process killed mid-write leaves the old manifest or none."""
    write_atomically(path, manifest.to_json())


def find_manifest(shard_dir: Path) -> Path | None:
    """The manifest of a split folder (``<out>/train``): in it, or one folder up."""
    for folder in (shard_dir, shard_dir.parent):
        if (folder / MANIFEST_FILE).is_file():
            return folder / MANIFEST_FILE
    return None


def check_manifest(path: Path, contract: FeatureContract) -> Manifest:
    """Raise ``FeatureContractError`` naming ``path`` if the shards it describes cannot feed a
    model of this contract (the encoder is compared when the config names one)."""
    manifest = read_manifest(path)
    contract.check(
        manifest.contract, f"{path} describes", "the training config expects",
        "extract features with the encoder the config is for, or use the config for these shards",
    )
    return manifest
