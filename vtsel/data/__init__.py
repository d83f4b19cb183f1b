"""Feature shards: their format, and the DataModule that streams them into training."""

from vtsel.data.datamodule import FeatureShardDataModule

__all__ = ["FeatureShardDataModule"]
