"""The LightningDataModule that streams precomputed encoder features from WebDataset shards."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch.distributed as dist
import webdataset as wds

from vtsel.contract import FeatureContract
from vtsel.data.manifest import check_manifest, find_manifest
from vtsel.data.shardlist import ShardSet, is_remote, load_shard_set
from vtsel.data.stream import SampleSpec, train_stream, val_stream

log = logging.getLogger(__name__)


def _stream_parts(num_workers: int) -> int:
    """Pieces a rank's stream is split into: one per worker, or the main process alone."""
    return max(1, num_workers)


@dataclass(frozen=True)
class _SplitPlan:
    """How one split is read on this rank; fixed in ``setup`` so every caller sees the same."""

    shards: ShardSet
    num_workers: int  # DataLoader workers, possibly fewer than asked for
    num_batches: int | None  # per rank and epoch; None when it cannot be known up front


class FeatureShardDataModule(L.LightningDataModule):
    """Batches of precomputed encoder features and their crops, streamed from WebDataset shards.

    Each batch is ``{"feats": (B, L, C) float32, "image": (B, 3, S, S) float32 in [0, 1],
    "key": list of B sample keys}`` with L = H*W, plus ``"attention": (B, L) float32`` when the
    shards store it (``attn.npy``) and ``"received_attention": (B, 2, L)`` (``recv_attn.npy``)
    likewise. Before any tar is read, the ``manifest.json`` that
    ``vtsel extract`` wrote next to each shard folder is checked against ``feature_dim``,
    ``grid_size`` and ``encoder``; folders without one (older shards) only get a warning, and
    every sample's ``meta.json`` is still checked as it is read. Training streams are endless and
    cut into equal epochs on every rank, because DDP hangs if one rank runs out of batches before
    the others.

    Args:
        train_shards: Training shards: a glob, a brace pattern (``shard-{000000..000099}.tar``),
            a directory (all its ``*.tar``), an ``https://`` URL or a ``pipe:`` command; join
            several with ``::``. Required to fit.
        val_shards: Validation shards, written like ``train_shards``. Without them, no validation.
        test_shards: Held-out shards for ``vtsel test`` and ``vtsel predict``; defaults to
            ``val_shards``.
        feature_dim: Feature width C every sample must have; must match the model's.
        grid_size: Token grid (H, W) every sample must have; L = H*W tokens.
        image_size: Side S of the reconstruction target; stored crops of another size are resized.
        encoder: If set, the encoder name every sample's ``meta.json`` must carry, so features
            from another encoder of the same width cannot slip in.
        batch_size: Samples per batch on each device.
        num_workers: DataLoader worker processes per device; lowered (with a warning) when there
            are too few shards to give each worker one.
        shuffle_buffer: Samples held in the training shuffle buffer; larger mixes shards better
            but costs memory. It drains at the end of each pass over a worker's shards, so it
            never mixes two passes.
        max_corrupt: Corrupt samples or unreadable tars each worker skips per epoch (with a
            warning) before the run stops: a few bad samples are noise, many mean broken data.
        train_num_samples: Number of training samples; overrides ``sizes.json``. Needed for
            remote shards, whose ``sizes.json`` cannot be read.
        val_num_samples: Number of validation samples; overrides ``sizes.json`` (see above).
        seed: Seed of the shard order and the shuffle buffer.
    """

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: str | None = None,
        test_shards: str | None = None,
        feature_dim: int = 1024,
        grid_size: tuple[int, int] = (24, 24),
        image_size: int = 336,
        encoder: str | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        max_corrupt: int = 10,
        train_num_samples: int | None = None,
        val_num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or shuffle_buffer < 1 or max_corrupt < 0:
            raise ValueError(
                f"need batch_size >= 1, num_workers >= 0, shuffle_buffer >= 1, max_corrupt >= 0; "
                f"got {batch_size}, {num_workers}, {shuffle_buffer}, {max_corrupt}"
            )
        self.save_hyperparameters()
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.test_shards = test_shards
        contract = FeatureContract(feature_dim, tuple(grid_size), encoder)
        self.sample_spec = SampleSpec(contract, image_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.max_corrupt = max_corrupt
        self.train_num_samples = train_num_samples
        self.val_num_samples = val_num_samples
        self.seed = seed
        self.rank, self.world_size = 0, 1
        self._train_plan: _SplitPlan | None = None
        self._val_plan: _SplitPlan | None = None
        self._test_plan: _SplitPlan | None = None

    def _rank_and_world(self) -> tuple[int, int]:
        """The trainer's view if attached, else torch.distributed's, else torchrun's env, else 1."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return 0, 1

    def _workers_for(self, shards: ShardSet, split: str) -> int:
        """Enough workers that each one has a shard: a worker without one yields no batches."""
        num_shards = len(shards.urls)
        if num_shards < self.world_size:
            raise ValueError(
                f"{split} has {num_shards} shard(s) but there are {self.world_size} ranks: each "
                f"rank needs at least one shard; write smaller shards or use fewer devices"
            )
        workers_with_a_shard = num_shards // self.world_size
        if self.num_workers <= workers_with_a_shard:
            return self.num_workers
        log.warning(
            "%s: using %d DataLoader worker(s) instead of %d, because %d shard(s) over %d rank(s) "
            "leave only %d per rank and a worker without a shard would yield nothing",
            split, workers_with_a_shard, self.num_workers, num_shards, self.world_size,
            workers_with_a_shard,
        )
        return workers_with_a_shard

    def _plan_train(self, shards: ShardSet) -> _SplitPlan:
        num_workers = self._workers_for(shards, "train")
        batches_per_rank = shards.num_samples // (self.world_size * self.batch_size)
        if batches_per_rank == 0:
            raise ValueError(
                f"train has {shards.num_samples} samples, too few for one batch of "
                f"{self.batch_size} on each of {self.world_size} rank(s): lower batch_size"
            )
        # every worker makes the same number of batches, so the rank's count rounds up
        parts = _stream_parts(num_workers)
        return _SplitPlan(shards, num_workers, math.ceil(batches_per_rank / parts) * parts)

    def _plan_val(self, shards: ShardSet) -> _SplitPlan:
        """Count the rank's batches exactly when each shard's size is known."""
        num_workers = self._workers_for(shards, "val")
        if shards.shard_sizes is None:
            return _SplitPlan(shards, num_workers, num_batches=None)
        # mirror the stream's split: shards dealt out to ranks, then to workers, each worker
        # ending with its own partial batch
        rank_sizes = shards.shard_sizes[self.rank :: self.world_size]
        parts = _stream_parts(num_workers)
        num_batches = sum(
            math.ceil(sum(rank_sizes[worker::parts]) / self.batch_size) for worker in range(parts)
        )
        return _SplitPlan(shards, num_workers, num_batches)

    def _load_checked(self, spec: str, num_samples: int | None) -> ShardSet:
        """The shards of ``spec``, after their folders' manifests are checked against the config."""
        shards = load_shard_set(spec, num_samples)
        folders = dict.fromkeys(Path(url).parent for url in shards.urls if not is_remote(url))
        for folder in folders:
            manifest = find_manifest(folder)
            if manifest is not None:
                check_manifest(manifest, self.sample_spec.contract)
            else:
                log.warning(
                    "%s has no manifest.json (nor has its parent): shards from before manifests "
                    "or from another tool; only each sample's meta.json is checked", folder,
                )
        return shards

    def setup(self, stage: str) -> None:
        """Resolve and count the shards a stage reads, for this rank."""
        self.rank, self.world_size = self._rank_and_world()
        if stage == "fit":
            if self.train_shards is None:
                raise ValueError("fitting needs train_shards (e.g. --data.train_shards DIR)")
            self._train_plan = self._plan_train(
                self._load_checked(self.train_shards, self.train_num_samples)
            )
        if stage in ("fit", "validate") and self.val_shards is not None:
            self._val_plan = self._plan_val(
                self._load_checked(self.val_shards, self.val_num_samples)
            )
        if stage in ("test", "predict"):
            spec = self.test_shards or self.val_shards
            if spec is None:
                raise ValueError(f"{stage} needs test_shards or val_shards (--data.test_shards)")
            self._test_plan = self._plan_val(self._load_checked(spec, None))

    @property
    def train_batches_per_epoch(self) -> int:
        """Training batches each rank gets per epoch (size LR schedules with it); after setup."""
        if self._train_plan is None:
            raise RuntimeError("call setup('fit') before asking for train_batches_per_epoch")
        return int(self._train_plan.num_batches)  # always known for training

    def _loader(self, dataset: wds.DataPipeline, plan: _SplitPlan) -> wds.WebLoader:
        # batch_size=None: the pipeline batches itself; the loader only runs it in workers.
        loader = wds.WebLoader(
            dataset,
            batch_size=None,
            num_workers=plan.num_workers,
            persistent_workers=plan.num_workers > 0,
        )
        if plan.num_batches is None:
            return loader
        return loader.with_length(plan.num_batches, silent=True)

    def train_dataloader(self) -> wds.WebLoader:
        plan = self._train_plan
        if plan is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        dataset = train_stream(
            plan.shards.urls,
            self.sample_spec,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            batches_per_worker=plan.num_batches // _stream_parts(plan.num_workers),
            shuffle_buffer=self.shuffle_buffer,
            max_corrupt=self.max_corrupt,
            seed=self.seed,
            shard_sizes=plan.shards.shard_sizes,
        )
        return self._loader(dataset, plan)

    def val_dataloader(self) -> wds.WebLoader | list:
        """This rank's validation batches, or no loader (so no validation) without val_shards."""
        return [] if self._val_plan is None else self._held_out_loader(self._val_plan)

    def test_dataloader(self) -> wds.WebLoader:
        return self._held_out_loader(self._require(self._test_plan, "test"))

    def predict_dataloader(self) -> wds.WebLoader:
        return self._held_out_loader(self._require(self._test_plan, "predict"))

    @staticmethod
    def _require(plan: _SplitPlan | None, stage: str) -> _SplitPlan:
        if plan is None:
            raise RuntimeError(f"call setup({stage!r}) before {stage}_dataloader()")
        return plan

    def _held_out_loader(self, plan: _SplitPlan) -> wds.WebLoader:
        """Every sample of this rank's share once, in shard order."""
        dataset = val_stream(
            plan.shards.urls,
            self.sample_spec,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            max_corrupt=self.max_corrupt,
        )
        return self._loader(dataset, plan)
