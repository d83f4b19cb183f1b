"""Extraction as a Lightning ``predict``: the same engine (devices, nodes, DDP, precision) that
trains the selectors runs the frozen encoder over the work units.

``ExtractionData`` prepares the output once (global rank 0, in ``prepare_data``), deals the
uncommitted units to the ranks (``setup``) and serves each rank's units from DataLoader workers;
``EncoderModule`` runs the encoder under the trainer's autocast. Writing is the
``UnitShardWriter`` callback's job (``vtsel.extract.writer``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from vtsel.data.manifest import Manifest
from vtsel.extract.batches import Batch, CropBatches, keep_as_is
from vtsel.extract.crops import CropPlan
from vtsel.extract.encoders import EncodedBatch, VisionEncoder
from vtsel.extract.ledger import Ledger
from vtsel.extract.manifest import prepare_output
from vtsel.extract.shards import discard_unit, remove_sizes
from vtsel.extract.units import WorkUnit

_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for when the parent dies


class EncoderModule(L.LightningModule):
    """The frozen encoder as a LightningModule: ``predict_step`` returns its tokens on the CPU,
    as float16 (how they are stored, and half the bytes to move off the accelerator)."""

    def __init__(self, encoder: VisionEncoder) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)

    def predict_step(self, batch: Batch, batch_idx: int) -> EncodedBatch:
        pixels = batch["pixels"]  # (B, 3, S, S)
        if len(pixels) == 0:  # a batch that only closes units
            return EncodedBatch(torch.empty(0), None)
        encoded = self.encoder(pixels)
        features = encoded.features.to(torch.float16).cpu()  # (B, L, C)
        attention, received = (
            None if maps is None else maps.float().cpu()
            for maps in (encoded.attention, encoded.received_attention)
        )
        return EncodedBatch(features, attention, received)  # (B, L), (B, 2, L) or None


@dataclass(frozen=True)
class ExtractionPlan:
    """What a run extracts and how, fixed before the trainer starts."""

    out: Path
    units: list[WorkUnit]
    manifest: Manifest
    overwrite: bool
    crops: CropPlan
    target_size: int
    batch_size: int
    max_image_pixels: int


class ExtractionData(L.LightningDataModule):
    """Serves this rank's share of the uncommitted units.

    Pending units are dealt round-robin (the i-th pending unit to rank i % world size), so a
    resumed run spreads the remaining work evenly. The ledger is read in ``setup``, between two
    barriers, so every rank sees the same pending list.
    """

    def __init__(self, plan: ExtractionPlan, encoder: VisionEncoder, num_workers: int) -> None:
        super().__init__()
        self.prepare_data_per_node = False  # one process prepares the (shared) output folder
        self.plan = plan
        self.encoder = encoder
        self.num_workers = num_workers
        self.rank_units: list[WorkUnit] = []
        self.done_before = 0

    def prepare_data(self) -> None:
        prepare_output(self.plan.out, self.plan.manifest, self.plan.overwrite)
        if len(Ledger(self.plan.out).committed()) < len(self.plan.units):
            remove_sizes(self.plan.out)  # unfinished: no reader may take it for complete

    def setup(self, stage: str) -> None:
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        committed = Ledger(self.plan.out).committed()
        pending = [unit for unit in self.plan.units if unit.index not in committed]
        self.done_before = len(self.plan.units) - len(pending)
        self.rank_units = pending[rank::world_size]
        for unit in self.rank_units:
            discard_unit(self.plan.out, unit.index)

    def transfer_batch_to_device(
        self, batch: Batch, device: torch.device, dataloader_idx: int
    ) -> Batch:
        """Only the pixels go to the device; crop records stay where the writer reads them."""
        return {**batch, "pixels": batch["pixels"].to(device, non_blocking=True)}

    @property
    def rank_images(self) -> int:
        """Source images this rank will read."""
        return sum(len(unit.sources) for unit in self.rank_units)

    def predict_dataloader(self) -> DataLoader:
        batches = CropBatches(
            self.rank_units,
            self.plan.crops,
            self.encoder.normalize,
            self.encoder.image_size,
            self.plan.target_size,
            self.plan.batch_size,
            self.plan.max_image_pixels,
        )
        loader_args: dict[str, Any] = {}
        if self.num_workers > 0:
            loader_args["prefetch_factor"] = 4  # a worker's batches queue while it decodes
        return DataLoader(
            batches,
            batch_size=None,  # CropBatches batches itself
            collate_fn=keep_as_is,
            num_workers=self.num_workers,
            worker_init_fn=die_with_parent,
            pin_memory=self.trainer.strategy.root_device.type == "cuda",
            **loader_args,
        )


def die_with_parent(worker_id: int) -> None:
    """DataLoader worker init: on Linux, the kernel kills the worker when its parent dies.

    A SIGKILLed extraction cannot stop its workers, and torch's own parent check left them
    running for over a minute.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)
