"""Where extracted samples go: the train/val split of each source and the tars of each split."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import webdataset as wds

from vtsel.data.format import SHARD_PATTERN, write_sizes
from vtsel.extract.inputs import Source

SPLITS = ("train", "val")


class Splitter:
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

    def ordered(self, sources: list[Source]) -> list[Source]:
        return sorted(sources, key=lambda source: self.unit_hash(source.key))

    def split_of(self, key: str) -> str:
        """The split of the next usable source; call in ``ordered`` order."""
        is_val = self.unit_hash(key) < self.val_fraction or self._force_next_to_val
        self._force_next_to_val = False
        return "val" if is_val else "train"


class SplitWriter:
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
