"""Writing ``predict``'s output: samples into each unit's tars, units into the ledger, and, once
every rank is done, ``sizes.json`` and the run's summary."""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from rich.console import Console

from vtsel.data.format import CorruptSampleError, SampleMeta, encode_sample
from vtsel.data.manifest import Manifest
from vtsel.extract.batches import Batch, CropRecord, UnitDone
from vtsel.extract.encoders import EncodedBatch
from vtsel.extract.inputs import SkippedInput
from vtsel.extract.ledger import Ledger
from vtsel.extract.manifest import SUMMARY_FILE
from vtsel.extract.shards import UnitWriter, finalize_splits
from vtsel.extract.units import SPLITS
from vtsel.outputs import write_atomically

log = logging.getLogger(__name__)
# Skipped inputs named one by one in the printed summary; all of them are in skipped.json.
SUMMARY_LINES = 20
# Batches handed to the writing thread and not yet written: enough to hide a slow write.
MAX_PENDING = 2


@dataclass(frozen=True)
class ExtractionSummary:
    """What a finished extraction holds (returned by ``extract`` on global rank 0)."""

    out: Path
    samples: dict[str, int]  # per split
    shards: dict[str, int]  # tars per split
    inputs: int  # images listed, duplicates included
    skipped: list[SkippedInput]


class UnitShardWriter(BasePredictionWriter):
    """Writes each predicted batch into its units' tars and commits every unit it closes.

    The writing runs on one background thread, so the accelerator computes the next batch
    while this one is serialised and written; at most ``MAX_PENDING`` batches wait for it.

    Args:
        out: The output folder.
        manifest: The run's manifest: the metadata stored with every sample.
        num_units: Units of the whole run, to check at the end that all were committed.
        listing_skipped: Inputs left out before extraction (duplicates, missing list entries).
        maxcount, maxsize: Samples and bytes per tar.
    """

    def __init__(
        self,
        out: Path,
        manifest: Manifest,
        num_units: int,
        listing_skipped: list[SkippedInput],
        maxcount: int,
        maxsize: int,
    ) -> None:
        super().__init__(write_interval="batch")
        self.out = out
        self.manifest = manifest
        self.num_units = num_units
        self.listing_skipped = listing_skipped
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.ledger = Ledger(out)
        self.summary: ExtractionSummary | None = None
        self._open: dict[int, UnitWriter] = {}
        self._bad_crops: dict[int, list[SkippedInput]] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vtsel-writer")
        self._pending: deque[Future[None]] = deque()

    def _unit_writer(self, unit: int) -> UnitWriter:
        """The open writer of ``unit``; a unit's first crop (or its end, if it has no crop at
        all) opens it."""
        if unit not in self._open:
            self._open[unit] = UnitWriter(self.out, unit, self.maxcount, self.maxsize)
        return self._open[unit]

    def _sample(self, record: CropRecord, encoded: EncodedBatch, row: int) -> dict[str, Any]:
        meta = SampleMeta(
            encoder=self.manifest.encoder,
            layer=self.manifest.layer,
            grid=self.manifest.grid,
            feature_dim=self.manifest.feature_dim,
            crop_index=record.crop_index,
            crop_box=record.box,
            source_key=record.source_key,
        )
        attention, received = (
            None if maps is None else maps[row].numpy()  # (L,), (2, L)
            for maps in (encoded.attention, encoded.received_attention)
        )
        return encode_sample(
            encoded.features[row].numpy(), record.target_png, meta, attention, received
        )

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: EncodedBatch,
        batch_indices: Any,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        while self._pending and (self._pending[0].done() or len(self._pending) >= MAX_PENDING):
            self._pending.popleft().result()  # re-raises a failure of the writing thread
        self._pending.append(
            self._thread.submit(self._write, prediction, batch["crops"], batch["done"])
        )

    def _write(self, encoded: EncodedBatch, crops: list[CropRecord], done: list[UnitDone]) -> None:
        """Write one batch's samples and commit the units it closes (on the writing thread).

        Raises:
            OSError: Writing failed (a full disk): named with the output folder and what to do,
                once, with the open tars closed quietly.
        """
        try:
            self._write_batch(encoded, crops, done)
        except OSError as err:
            units = sorted(self._open)
            self._abandon_open_units()
            raise OSError(
                err.errno,
                f"writing the shards of {self.out} failed ({err.strerror or err}) while unit(s) "
                f"{units} were open: free space (or choose another --out) and rerun the same "
                f"command; committed units are kept and the open ones are redone",
            ) from None

    def _abandon_open_units(self) -> None:
        for unit_writer in self._open.values():
            unit_writer.abandon()
        self._open.clear()

    def _write_batch(
        self, encoded: EncodedBatch, crops: list[CropRecord], done: list[UnitDone]
    ) -> None:
        if crops and (encoded.attention is not None) != self.manifest.attention:
            raise RuntimeError(
                f"the encoder {'gave no' if self.manifest.attention else 'gave'} attention, but "
                f"the manifest says attention={self.manifest.attention}"
            )
        received = self.manifest.received_attention
        if crops and (encoded.received_attention is not None) != received:
            raise RuntimeError(
                f"the encoder {'gave no' if received else 'gave'} received attention, but the "
                f"manifest says received_attention={received}"
            )
        for row, record in enumerate(crops):
            try:
                sample = self._sample(record, encoded, row)
            except CorruptSampleError as err:
                log.warning("skipping crop %d of %s: %s", record.crop_index, record.source_key, err)
                where = f"{record.source_key} (crop {record.crop_index})"
                self._bad_crops.setdefault(record.unit, []).append(
                    SkippedInput(where, "not finite", str(err))
                )
                continue
            self._unit_writer(record.unit).write(record.split, sample)
        for unit_done in done:
            skipped = unit_done.skipped + self._bad_crops.pop(unit_done.unit, [])
            self._unit_writer(unit_done.unit).commit(self.ledger, unit_done.images, skipped)
            del self._open[unit_done.unit]

    def _drain(self) -> None:
        """Wait for every batch handed to the writing thread; re-raise its failure."""
        while self._pending:
            self._pending.popleft().result()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._drain()
        self._thread.shutdown()
        if self._open:
            raise RuntimeError(f"unit(s) {sorted(self._open)} ended without being closed")
        trainer.strategy.barrier("vtsel-extract-finalize")  # every rank's units committed
        if trainer.is_global_zero:
            self.summary = finalize(self.out, self.num_units, self.listing_skipped)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Stop writing: what is not committed is redone by the next run."""
        self._thread.shutdown(wait=True, cancel_futures=True)
        self._abandon_open_units()


def finalize(out: Path, num_units: int, listing_skipped: list[SkippedInput]) -> ExtractionSummary:
    """Write ``sizes.json`` per split and ``skipped.json``, print the summary, return it.

    Raises:
        RuntimeError: Some unit has no ledger record (a rank failed): rerun to finish.
    """
    records = Ledger(out).records()
    missing = sorted(set(range(num_units)) - {record.unit for record in records})
    if missing:
        raise RuntimeError(
            f"{len(missing)} work unit(s) of {out} were not committed (e.g. {missing[:5]}): "
            f"rerun the same command to finish them"
        )
    sizes = finalize_splits(out, records)
    skipped = listing_skipped + [skip for record in records for skip in record.skipped]
    write_atomically(out / SUMMARY_FILE, json.dumps([asdict(s) for s in skipped], indent=1))
    summary = ExtractionSummary(
        out=out,
        samples={split: sum(sizes[split].values()) for split in SPLITS},
        shards={split: len(sizes[split]) for split in SPLITS},
        inputs=sum(record.images for record in records) + len(listing_skipped),
        skipped=skipped,
    )
    print_summary(summary)
    return summary


def print_summary(summary: ExtractionSummary) -> None:
    console = Console(soft_wrap=True)  # paths stay on one line, for grep
    for split in SPLITS:
        console.print(
            f"{split}: {summary.samples[split]} samples in {summary.shards[split]} shard(s) "
            f"-> {summary.out / split}"
        )
        if summary.samples[split] == 0:
            console.print(f"[yellow]warning: the {split} split is empty[/yellow]")
    kinds = Counter(skip.kind for skip in summary.skipped)
    by_kind = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    console.print(
        f"skipped {len(summary.skipped)} of {summary.inputs} input(s)"
        + (f": {by_kind}" if by_kind else ""),
        highlight=False,
    )
    for skip in summary.skipped[:SUMMARY_LINES]:
        console.print(f"  {skip.where}: {skip.kind} ({skip.detail})", highlight=False, markup=False)
    if len(summary.skipped) > SUMMARY_LINES:
        console.print(f"  ... all of them in {summary.out / SUMMARY_FILE}", highlight=False)
