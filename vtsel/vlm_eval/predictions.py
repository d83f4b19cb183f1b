"""The predictions file of ``vtsel vlm-eval``: one JSON line per (method, keep, question).

It is the evaluation's state: rows are appended and flushed after every batch, so a killed run
loses at most the batch in flight, and a rerun reads which rows exist and generates only the
others. A line cut short by the kill is dropped when the file is reopened (it is the row of
the batch in flight). ``run.json`` beside it records what the rows were generated with, and a
rerun with a different model, question file or prompt is refused instead of mixing results.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vtsel.outputs import write_atomically

PREDICTIONS_FILE = "predictions.jsonl"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class Prediction:
    """A model's answer to one question under one method and budget, with its scores and the
    number of visual tokens the LLM read for it (per layer, averaged over its layers: FastV and
    PyramidDrop drop tokens inside it)."""

    method: str
    keep: float
    id: str
    prediction: str
    exact_match: float
    anls: float
    visual_tokens: float

    @property
    def key(self) -> tuple[str, float, str]:
        return self.method, self.keep, self.id


class PredictionStore:
    """Append-only predictions of one evaluation folder (see module doc).

    Args:
        folder: The evaluation's output folder, created if missing.
        settings: What the rows are generated with (model, questions, prompt, ...); must equal
            the ``run.json`` of an earlier run in ``folder``.
    """

    def __init__(self, folder: str | Path, settings: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / PREDICTIONS_FILE
        self._check_settings(settings)
        self.rows: dict[tuple[str, float, str], Prediction] = {
            row.key: row for row in self._read()
        }

    def _check_settings(self, settings: dict[str, Any]) -> None:
        run_path = self.folder / RUN_FILE
        if run_path.exists():
            recorded = json.loads(run_path.read_text())
            changed = sorted(
                key for key in recorded.keys() | settings.keys()
                if recorded.get(key) != settings.get(key)
            )
            if changed:
                raise ValueError(
                    f"{self.folder} holds predictions made with other settings "
                    f"({', '.join(changed)} differ from {run_path}); choose another --out "
                    f"or delete the folder to start over"
                )
        else:
            write_atomically(run_path, json.dumps(settings, indent=2) + "\n")

    def _read(self) -> list[Prediction]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        complete, _, cut_short = text.rpartition("\n")
        if cut_short:  # the kill interrupted this line's write: its batch is redone
            warnings.warn(
                f"{self.path}: dropping an incomplete last line left by an interrupted run",
                stacklevel=3,
            )
            write_atomically(self.path, complete + "\n" if complete else "")
        rows = []
        for line_number, line in enumerate(complete.splitlines(), start=1):
            try:
                rows.append(Prediction(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as err:
                raise ValueError(
                    f"{self.path}:{line_number} is not a prediction row ({err}); "
                    f"the file was edited or belongs to something else"
                ) from err
        return rows

    def done(self, method: str, keep: float, question_id: str) -> bool:
        """Whether this (method, keep, question) row exists already."""
        return (method, keep, question_id) in self.rows

    def append(self, predictions: Iterable[Prediction]) -> None:
        """Write rows and flush them to disk in one write (one batch's worth)."""
        new_rows = list(predictions)
        lines = "".join(json.dumps(asdict(row)) + "\n" for row in new_rows)
        with self.path.open("a") as stream:
            stream.write(lines)
            stream.flush()
        self.rows.update((row.key, row) for row in new_rows)
