"""The LightningModule: selector + reconstructors trained with the paper's objective."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from vtsel import __version__
from vtsel.checkpoints import check_compatible, load_weights
from vtsel.metrics import SelectionMetrics
from vtsel.models import FeatureReconstructor, FeatureSelector, ImageReconstructor
from vtsel.models.selector import MaskEstimator
from vtsel.objective import LossTerms, Regularizer, SelectionObjective
from vtsel.schedule import fit_optimizer_steps, warmup_cosine


class SelectorModule(L.LightningModule):
    """Trains a ``FeatureSelector`` by reconstructing features and image from what it keeps.

    Args:
        feature_dim: Width C of the encoder's tokens (linked from ``data.feature_dim``).
        grid_size: (H, W) token grid of one crop (linked from ``data.grid_size``).
        image_size: Side of the reconstruction target (linked from ``data.image_size``).
        dim: Width of all three transformers.
        num_heads: Attention heads of all three transformers.
        selector_depth: Layers of the selector (paper: 4).
        feature_reconstructor_depth: Layers of the feature reconstructor (paper: 4).
        image_reconstructor_depth: Transformer layers of the image reconstructor (paper: 2).
        image_channels: Channels of the image decoder's first upsampling stage.
        tau: Gumbel-Softmax temperature (the paper gives none; 2 measured best, see README).
        estimator: ``gumbel`` (paper) or ``straight_through`` (appendix B.1 ablation).
        init_keep_ratio: Keep probability of every token at initialisation.
        p: Upper edge of the keep-ratio band.
        q: Lower edge of the keep-ratio band.
        alpha_p: Weight of the upper band edge (alpha_1).
        alpha_q: Weight of the lower band edge (alpha_2).
        regularizer: ``band`` (eq. 8) or ``linear`` (alpha_1 * L_pr, appendix B.1 ablation).
        image_weight: Weight of the image reconstruction term.
        lr: Peak learning rate of Adam.
        weight_decay: Adam's L2 weight decay.
        warmup_fraction: Share of this fit's optimizer steps spent in linear warmup.
        eval_keep_ratios: Keep ratios at which validation compares top-k and random selection.
        eval_seed: Seed of the random-selection baseline, so its numbers repeat run to run.
        init_from: A vtsel checkpoint whose weights (only) start this fit, e.g. the previous
            stage's best. Optimizer, step and schedule start afresh; use ``--ckpt_path`` to
            resume a fit instead.
    """

    def __init__(
        self,
        feature_dim: int = 1024,
        grid_size: tuple[int, int] = (24, 24),
        image_size: int = 336,
        dim: int = 512,
        num_heads: int = 8,
        selector_depth: int = 4,
        feature_reconstructor_depth: int = 4,
        image_reconstructor_depth: int = 2,
        image_channels: int = 256,
        tau: float = 2.0,
        estimator: MaskEstimator = "gumbel",
        init_keep_ratio: float = 0.5,
        p: float = 0.6,
        q: float = 0.1,
        alpha_p: float = 0.1,
        alpha_q: float = 0.1,
        regularizer: Regularizer = "band",
        image_weight: float = 1.0,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.05,
        eval_keep_ratios: tuple[float, ...] = (0.1, 0.25, 0.5),
        eval_seed: int = 0,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        # init_from is a path on the machine that trained; a reloaded checkpoint has the weights.
        self.save_hyperparameters(ignore=["init_from"])
        grid = (int(grid_size[0]), int(grid_size[1]))
        self.selector = FeatureSelector(
            feature_dim, grid, dim, selector_depth, num_heads, tau, estimator, init_keep_ratio
        )
        self.feature_reconstructor = FeatureReconstructor(
            feature_dim, grid, dim, feature_reconstructor_depth, num_heads
        )
        self.image_reconstructor = ImageReconstructor(
            feature_dim, grid, image_size, dim, image_reconstructor_depth, num_heads,
            image_channels,
        )
        self.objective = SelectionObjective(p, q, alpha_p, alpha_q, regularizer, image_weight)
        self.val_metrics = SelectionMetrics(eval_keep_ratios, seed=eval_seed)
        if init_from is not None:
            load_weights(self, Path(init_from))

    def reconstruct(self, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L, C) and image (B, 3, S, S) rebuilt from a selection (B, L, C)."""
        feats_rec = self.feature_reconstructor(selected)
        return feats_rec, self.image_reconstructor(feats_rec)

    def _objective(
        self, normed: torch.Tensor, image: torch.Tensor
    ) -> tuple[LossTerms, torch.Tensor]:
        """Loss terms and keep logits (B, L) for normalised features (B, L, C) and image."""
        selection = self.selector(normed)
        feats_rec, image_rec = self.reconstruct(selection.selected)
        terms = self.objective(feats_rec, normed, image_rec, image, selection.mask)
        return terms, selection.keep_logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        normed = self.selector.normalize(batch["feats"])  # (B, L, C)
        terms, _ = self._objective(normed, batch["image"])
        batch_size = batch["feats"].shape[0]
        self.log_dict(
            {
                "train/loss": terms.total,
                "train/feature_loss": terms.feature,
                "train/image_loss": terms.image,
                "train/keep_ratio": terms.keep_ratio,
                "train/regularizer": terms.regularizer,
            },
            prog_bar=False,
            batch_size=batch_size,
        )
        self.log("L_pr", terms.keep_ratio, prog_bar=True, logger=False, batch_size=batch_size)
        return terms.total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Objective with the noise-free mask, and reconstruction at fixed budgets."""
        normed = self.selector.normalize(batch["feats"])  # (B, L, C)
        terms, keep_logits = self._objective(normed, batch["image"])
        self.val_metrics.update_objective(terms, batch_size=batch["feats"].shape[0])
        for method, ratio, mask in self.val_metrics.masks(keep_logits, batch_idx):
            feats_rec, image_rec = self.reconstruct(self.selector.apply_mask(normed, mask))
            self.val_metrics.update_reconstruction(
                method, ratio, feats_rec, normed, image_rec, batch["image"]
            )

    def on_validation_epoch_end(self) -> None:
        self._log_held_out("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_held_out("test")

    def _log_held_out(self, prefix: str) -> None:
        # torchmetrics syncs across ranks inside compute(), so ranks may see unequal batches.
        self.log_dict(self.val_metrics.compute(prefix))
        self.val_metrics.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Keep logits (B, L) per sample key: the ranking the selector gives at inference."""
        return {"key": batch["key"], "keep_logits": self.selector.scores(batch["feats"])}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_compatible(checkpoint, source="the checkpoint given to --ckpt_path")
