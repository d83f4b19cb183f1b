"""The ledger of committed work units: one small JSON file per unit under ``<out>/units/``.

A unit's record is written (atomically) only after all of its tars are in place, so the record
is the commit: a unit without one is redone from scratch by the next run, whatever of it had
reached the disk. The records also carry what each unit skipped, so the summary of a resumed run
still counts the inputs that earlier runs left out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vtsel.extract.inputs import SkippedInput
from vtsel.outputs import write_atomically

LEDGER_DIR = "units"


@dataclass(frozen=True)
class UnitRecord:
    """What one committed unit wrote and left out."""

    unit: int
    images: int  # sources in the unit, written or skipped
    shards: dict[str, dict[str, int]]  # split -> tar file name -> samples in it
    skipped: list[SkippedInput] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> UnitRecord:
        content = json.loads(text)
        return cls(
            unit=int(content["unit"]),
            images=int(content["images"]),
            shards={split: dict(tars) for split, tars in content["shards"].items()},
            skipped=[SkippedInput(**skip) for skip in content["skipped"]],
        )


class Ledger:
    """The committed units of one output folder."""

    def __init__(self, out: Path) -> None:
        self.folder = out / LEDGER_DIR

    def _path(self, unit: int) -> Path:
        return self.folder / f"unit-{unit:06d}.json"

    def committed(self) -> set[int]:
        """Indices of the units whose record exists."""
        if not self.folder.is_dir():
            return set()
        return {int(p.stem.removeprefix("unit-")) for p in self.folder.glob("unit-*.json")}

    def commit(self, record: UnitRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self._path(record.unit), record.to_json())

    def records(self) -> list[UnitRecord]:
        """Every committed unit's record, by unit index."""
        return [
            UnitRecord.from_json(self._path(unit).read_text()) for unit in sorted(self.committed())
        ]
