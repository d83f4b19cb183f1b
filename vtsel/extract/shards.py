"""The tars of one work unit: written aside, moved into the split folders whole, then committed.

Layout of an output folder::

    <out>/manifest.json                 what made the features (vtsel.data.manifest)
    <out>/train/shard-UUUUUU-PPP.tar    part PPP of unit UUUUUU's training samples
    <out>/train/sizes.json              written last, when every unit is committed
    <out>/val/...                       the same for validation
    <out>/units/unit-UUUUUU.json        the ledger: one record per committed unit
    <out>/.partial/unit-UUUUUU/         tars of a unit being written

A tar only ever appears in a split folder complete (it is closed and flushed, then renamed), and
a unit's tars only count once its ledger record exists; ``discard_unit`` removes whatever an
uncommitted unit left, so it can be redone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import webdataset as wds

from vtsel.data.format import SIZES_FILE, write_sizes
from vtsel.extract.inputs import SkippedInput
from vtsel.extract.ledger import Ledger, UnitRecord
from vtsel.extract.units import SPLITS

PARTIAL_DIR = ".partial"


def _unit_tar_pattern(unit: int) -> str:
    """``ShardWriter`` pattern of a unit's tars; part numbers fill ``%03d``."""
    return f"shard-{unit:06d}-%03d.tar"


def _partial_dir(out: Path, unit: int) -> Path:
    return out / PARTIAL_DIR / f"unit-{unit:06d}"


class UnitWriter:
    """Writes one unit's samples into per-split tars of at most ``maxcount`` samples and about
    ``maxsize`` bytes, counting the samples of each tar for ``sizes.json``."""

    def __init__(self, out: Path, unit: int, maxcount: int, maxsize: int) -> None:
        self.out = out
        self.unit = unit
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.shards: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
        self._writers: dict[str, wds.ShardWriter] = {}

    def write(self, split: str, sample: dict[str, Any]) -> None:
        if split not in self._writers:  # opened on first use: an empty split leaves no tar
            folder = _partial_dir(self.out, self.unit) / split
            folder.mkdir(parents=True, exist_ok=True)
            self._writers[split] = wds.ShardWriter(
                str(folder / _unit_tar_pattern(self.unit)),
                maxcount=self.maxcount, maxsize=self.maxsize, verbose=0,
            )
        writer = self._writers[split]
        writer.write(sample)
        tar_name = Path(writer.fname).name
        self.shards[split][tar_name] = self.shards[split].get(tar_name, 0) + 1

    def abandon(self) -> None:
        """Close the open tars without finishing them, after a write failed (a full disk): what
        they buffered cannot be written, and the unit's partial folder is redone by the next
        run. Closing quietly now keeps tarfile from retrying the write at garbage collection."""
        for writer in self._writers.values():
            tar_writer = writer.tarstream  # webdataset's TarWriter of the current part
            for close in (tar_writer.tarstream.close, tar_writer.stream.close):
                with contextlib.suppress(OSError, ValueError):
                    close()
        self._writers.clear()

    def commit(self, ledger: Ledger, images: int, skipped: list[SkippedInput]) -> UnitRecord:
        """Close the tars, move them into the split folders, and record the unit as done."""
        for writer in self._writers.values():
            writer.close()
        for split, tars in self.shards.items():
            (self.out / split).mkdir(parents=True, exist_ok=True)
            for tar_name in tars:
                tar = _partial_dir(self.out, self.unit) / split / tar_name
                with open(tar, "rb") as file:
                    os.fsync(file.fileno())  # on disk before the ledger says it is
                tar.replace(self.out / split / tar_name)
        record = UnitRecord(self.unit, images, self.shards, skipped)
        ledger.commit(record)
        shutil.rmtree(_partial_dir(self.out, self.unit), ignore_errors=True)
        return record


def discard_unit(out: Path, unit: int) -> None:
    """Remove what an uncommitted unit left behind: its partial folder and any tar of it that
    was moved into a split folder before the run was killed."""
    shutil.rmtree(_partial_dir(out, unit), ignore_errors=True)
    for split in SPLITS:
        for tar in (out / split).glob(_unit_tar_pattern(unit).replace("%03d", "*")):
            tar.unlink()


def finalize_splits(out: Path, records: list[UnitRecord]) -> dict[str, dict[str, int]]:
    """Write each split's ``sizes.json`` from the committed units; return them per split.

    Raises:
        RuntimeError: A split folder holds a tar that no unit committed (something wrote there
            besides this extraction); a reader would otherwise find it unlisted.
    """
    sizes_by_split: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        sizes = {name: n for record in records for name, n in record.shards[split].items()}
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        strays = sorted({p.name for p in folder.glob("*.tar")} - set(sizes))
        if strays:
            raise RuntimeError(
                f"{folder} holds tar(s) no committed unit wrote, e.g. {strays[:3]}: remove them "
                f"or rerun with --overwrite"
            )
        write_sizes(folder, sizes)
        sizes_by_split[split] = sizes
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    return sizes_by_split


def remove_sizes(out: Path) -> None:
    """Mark the output as unfinished: ``sizes.json`` is written only when every unit is done."""
    for split in SPLITS:
        (out / split / SIZES_FILE).unlink(missing_ok=True)
