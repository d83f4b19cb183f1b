"""Work units: the sorted sources cut into fixed-size pieces, each written and committed whole.

A unit is the grain of both parallelism and resumption. Units depend only on the source keys and
``unit_size``, never on how many processes run, so the shards' samples are the same on one CPU
or on 64 GPUs, and a rerun after a kill redoes exactly the units that were not committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from vtsel.extract.inputs import Source

SPLITS = ("train", "val")


@dataclass(frozen=True)
class WorkUnit:
    """Sources ``index * unit_size ...`` of the sorted listing and the split of each."""

    index: int
    sources: tuple[Source, ...]
    splits: tuple[str, ...]  # "train" or "val", one per source


def split_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by ``key`` and the seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(keys: Sequence[str], val_fraction: float, seed: int) -> list[str]:
    """``val`` for each key whose hash falls below ``val_fraction``, else ``train``.

    The split is by source image, so no crop of an image is on both sides, and it depends on
    nothing but the key and the seed. If no key hashes below a positive ``val_fraction`` and
    there are two keys or more, the lowest-hashed key goes to val, so a small folder still has
    a validation set.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1], got {val_fraction}")
    hashes = [split_hash(key, seed) for key in keys]
    splits = ["val" if h < val_fraction else "train" for h in hashes]
    if val_fraction > 0 and len(keys) >= 2 and "val" not in splits:
        splits[hashes.index(min(hashes))] = "val"
    return splits


def plan_units(
    sources: Sequence[Source], unit_size: int, val_fraction: float, seed: int
) -> list[WorkUnit]:
    """Cut key-sorted ``sources`` into units of ``unit_size`` (the last may be smaller)."""
    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    splits = assign_splits([source.key for source in sources], val_fraction, seed)
    return [
        WorkUnit(
            start // unit_size,
            tuple(sources[start : start + unit_size]),
            tuple(splits[start : start + unit_size]),
        )
        for start in range(0, len(sources), unit_size)
    ]


def keys_fingerprint(sources: Sequence[Source]) -> dict[str, int | str]:
    """``{"count", "sha256"}`` of the sorted keys: equal iff a rerun would cut the same units."""
    digest = hashlib.sha256("\n".join(source.key for source in sources).encode()).hexdigest()
    return {"count": len(sources), "sha256": digest}
