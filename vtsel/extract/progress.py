"""A Rich progress bar of source images for ``vtsel extract``: images/s and time to go."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _ImageRateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0.0:.1f} images/s", style="progress.data.speed")


class ImageProgress(Callback):
    """Counts the source images global rank 0 has read, as each batch is written.

    Ranks get equal shares of the units, so rank 0's time to go is the run's. Drawn by rank 0
    alone: one bar per node would interleave in a shared log.
    """

    def __init__(self) -> None:
        self._progress: Progress | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        data = trainer.datamodule
        ranks = f" (rank 0 of {trainer.world_size})" if trainer.world_size > 1 else ""
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _ImageRateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        if data.done_before:
            self._progress.console.print(
                f"resuming: {data.done_before} of {len(data.plan.units)} work unit(s) already done"
            )
        if not data.rank_images:
            self._progress = None  # nothing left to read
            return
        self._progress.add_task(f"extracting{ranks}", total=data.rank_images)
        self._progress.start()

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if self._progress is not None:
            self._progress.advance(self._progress.task_ids[0], batch["images"])

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._stop()
