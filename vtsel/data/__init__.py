"""Feature shards: their format, and the DataModule that streams them into training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtsel.data.datamodule import FeatureShardDataModule

__all__ = ["FeatureShardDataModule"]


def __getattr__(name: str) -> Any:
    """The DataModule on first use, so that extraction and inference code reading the shard
    format (``vtsel.data.format``) do not import Lightning."""
    if name == "FeatureShardDataModule":
        from vtsel.data.datamodule import FeatureShardDataModule

        return FeatureShardDataModule
    raise AttributeError(f"module 'vtsel.data' has no attribute {name!r}")
