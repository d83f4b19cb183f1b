"""What the selector's fit and the judge's fit share: reconstructors, optimiser, checkpoints.

Both are LightningModules that rebuild all tokens and the image from a kept subset; they differ
in where the subsets come from (the selector's own masks, or drawn mask families) and in what
they learn. ``vtsel fit`` takes either as ``model.class_path``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F

from vtsel import __version__
from vtsel.methods.base import CLS_ATTENTION, RECEIVED_ATTENTION
from vtsel.models import FeatureReconstructor, ImageReconstructor
from vtsel.models.blocks import normalize_tokens
from vtsel.train.checkpoints import load_weights
from vtsel.train.masking import mixture_masks, random_keep_counts
from vtsel.train.objective import dropped_token_mse
from vtsel.train.schedule import fit_optimizer_steps, warmup_cosine
from vtsel.versions import check_compatible

TASK_KEY = "vtsel_task"  # checkpoint entry naming the task: "selector" or "judge"


class ReconstructionTask(L.LightningModule):
    """Feature and image reconstructors with the paper's optimiser and schedule.

    Subclasses call ``super().__init__`` with the shared arguments, build what else they
    train, ``save_hyperparameters`` and finally ``_start_from(init_from)``.

    Args:
        feature_dim: Width C of the encoder's tokens (linked from ``data.feature_dim``).
        grid_size: (H, W) token grid of one crop (linked from ``data.grid_size``).
        image_size: Side of the reconstruction target (linked from ``data.image_size``).
        dim: Width of the transformers.
        num_heads: Attention heads of the transformers.
        feature_reconstructor_depth: Layers of the feature reconstructor (paper: 4).
        image_reconstructor_depth: Transformer layers of the image reconstructor (paper: 2).
        image_channels: Channels of the image decoder's first upsampling stage.
        image_weight: Weight of the image reconstruction term.
        lr: Peak learning rate of Adam.
        weight_decay: Adam's L2 weight decay.
        warmup_fraction: Share of this fit's optimizer steps spent in linear warmup.
    """

    task: ClassVar[str]  # written into every checkpoint under TASK_KEY

    def __init__(
        self,
        feature_dim: int,
        grid_size: tuple[int, int],
        image_size: int,
        dim: int,
        num_heads: int,
        feature_reconstructor_depth: int,
        image_reconstructor_depth: int,
        image_channels: int,
        image_weight: float,
        lr: float,
        weight_decay: float,
        warmup_fraction: float,
    ) -> None:
        super().__init__()
        if lr < 0:
            raise ValueError(f"lr must be >= 0 (0 freezes the weights), got {lr}")
        self.grid = (int(grid_size[0]), int(grid_size[1]))
        self.feature_reconstructor = FeatureReconstructor(
            feature_dim, self.grid, dim, feature_reconstructor_depth, num_heads
        )
        self.image_reconstructor = ImageReconstructor(
            feature_dim, self.grid, image_size, dim, image_reconstructor_depth, num_heads,
            image_channels,
        )
        self.image_weight = image_weight

    @staticmethod
    def normalize(feats: torch.Tensor) -> torch.Tensor:
        """Raw tokens (B, L, C) -> the per-token-normalised tokens that are rebuilt."""
        return normalize_tokens(feats)

    def reconstruct(
        self, normed: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L, C), kept ones unchanged, and image (B, 3, S, S) from a keep mask (B, L)."""
        feats_rec = self.feature_reconstructor(normed, keep)
        return feats_rec, self.image_reconstructor(feats_rec)

    def drawn_mask_loss(
        self,
        batch: dict[str, Any],
        normed: torch.Tensor,
        families: Mapping[str, float],
        keep_range: tuple[float, float],
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, dropped-token error) of the reconstructors on masks drawn from ``families``
        at budgets drawn from ``keep_range`` (``generator``; the global one if None), each
        shown what its family hands on and scored against ``normed`` (B, L, C)."""
        counts = random_keep_counts(normed.shape[0], normed.shape[1], keep_range, generator)
        keep, shown = mixture_masks(
            families, counts, self.grid, generator, batch["feats"], batch.get(CLS_ATTENTION),
            batch.get(RECEIVED_ATTENTION),
        )  # (B, L), (B, L, C): merging methods' kept positions hold what they hand on
        keep = keep.to(normed.device)
        feats_rec, image_rec = self.reconstruct(self.normalize(shown), keep)
        dropped = dropped_token_mse(feats_rec, normed, keep).mean()
        image_term = F.mse_loss(image_rec.float(), batch["image"].float())
        return dropped + self.image_weight * image_term, dropped

    def _start_from(self, init_from: str | None) -> None:
        """Load the weights (only) of a checkpoint of the same task, e.g. the previous stage's."""
        if init_from is not None:
            load_weights(self, Path(init_from))

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [param for param in self.parameters() if param.requires_grad]
        optimizer = torch.optim.Adam(
            trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        batches = getattr(self.trainer.datamodule, "train_batches_per_epoch", None)
        if batches is None:
            raise ValueError("the datamodule must expose train_batches_per_epoch for the schedule")
        total_steps = fit_optimizer_steps(self.trainer, batches)
        scheduler = warmup_cosine(optimizer, total_steps, self.hparams.warmup_fraction)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vtsel_version"] = __version__
        checkpoint[TASK_KEY] = self.task

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_compatible(checkpoint, source="the checkpoint given to --ckpt_path")
        written_by = checkpoint.get(TASK_KEY)
        if written_by != self.task:
            raise ValueError(
                f"the checkpoint given to --ckpt_path is a {written_by} fit, this is a "
                f"{self.task} fit: resume a fit with its own checkpoints"
            )
