"""The LightningModule: selector + reconstructors trained with the paper's objective."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.func import functional_call

from vtsel import __version__
from vtsel.checkpoints import check_compatible, load_weights
from vtsel.masking import (
    check_keep_range,
    random_keep_counts,
    random_keep_masks,
    sampled_topk_mask,
)
from vtsel.metrics import METHODS, SelectionMetrics
from vtsel.models import FeatureReconstructor, FeatureSelector, ImageReconstructor
from vtsel.models.selector import MaskEstimator
from vtsel.objective import LossTerms, Regularizer, SelectionObjective
from vtsel.schedule import fit_optimizer_steps, warmup_cosine

Masking = Literal["selector", "decoupled", "random"]


class SelectorModule(L.LightningModule):
    """Trains a ``FeatureSelector`` by reconstructing features and image from what it keeps.

    With ``masking: random`` it trains the reconstructors alone, on uniformly random subsets:
    the independent judge that ``vtsel eval`` scores every selection method with (eq. 1 needs a
    reconstructor that favours no selector, and one trained with a selector favours it).

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
        masking: What the masks the reconstructors learn from are.
            ``selector`` (the paper): the selector's Gumbel masks; selector and reconstructors
            learn together, so the reconstructors specialise in the selector's masks.
            ``decoupled``: the reconstructors learn only from random subsets (keep ratios drawn
            from ``random_keep_range``); the selector still draws its masks under eq. 8 and
            learns through the reconstructors, whose weights take no gradient from its masks.
            The selection is then judged by a reconstructor that could not adapt to it (see
            README, "Evaluate a selector").
            ``random``: a judge: random subsets only; the selector's trunk and head are frozen
            and never run, the keep-ratio penalty is left out, and only the reconstructors and
            the dropped-token embedding learn.
        random_keep_range: (low, high) keep ratios the random masks (and the budgets of the
            top-k term) are drawn from; cover the budgets that will be scored (the paper's lie
            between 5.6% and 50%).
        topk_weight: Weight of a second reconstruction term, from the selector's top k_i of
            its perturbed keep logits, k_i drawn per crop from ``random_keep_range``
            (``sampled_topk_mask``). Eq. 8's mask keeps each token independently and settles
            near p, so it never asks which tokens matter most at smaller budgets; inference
            keeps the top-k at any budget. 0 is the paper's objective alone; the band on L_pr
            applies to eq. 8's mask either way.
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
        masking: Masking = "selector",
        random_keep_range: tuple[float, float] = (0.05, 0.75),
        topk_weight: float = 0.0,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if masking not in ("selector", "decoupled", "random"):
            raise ValueError(
                f"masking must be 'selector', 'decoupled' or 'random', got {masking!r}"
            )
        check_keep_range(random_keep_range)
        if topk_weight < 0:
            raise ValueError(f"topk_weight must be >= 0, got {topk_weight}")
        # init_from is a path on the machine that trained; a reloaded checkpoint has the weights.
        self.save_hyperparameters(ignore=["init_from"])
        self.is_judge = masking == "random"
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
        if self.is_judge:
            # Frozen, so DDP and the optimizer ignore them; only the mask embedding trains.
            self.selector.trunk.requires_grad_(False)
            self.selector.head.requires_grad_(False)
        self.objective = SelectionObjective(p, q, alpha_p, alpha_q, regularizer, image_weight)
        methods = ("random",) if self.is_judge else METHODS
        self.val_metrics = SelectionMetrics(eval_keep_ratios, seed=eval_seed, methods=methods)
        if init_from is not None:
            load_weights(self, Path(init_from))

    def reconstruct(self, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L, C) and image (B, 3, S, S) rebuilt from a selection (B, L, C)."""
        feats_rec = self.feature_reconstructor(selected)
        return feats_rec, self.image_reconstructor(feats_rec)

    def _reconstruct_without_learning(
        self, selected: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``reconstruct`` through detached reconstructor weights: gradients reach the selection
        (and the selector behind it), never the reconstructors."""
        feature_rec, image_rec = self.feature_reconstructor, self.image_reconstructor
        feats_rec = functional_call(feature_rec, _detached_weights(feature_rec), (selected,))
        image = functional_call(image_rec, _detached_weights(image_rec), (feats_rec,))
        return feats_rec, image  # (B, L, C), (B, 3, S, S)

    def _random_mask_terms(
        self, normed: torch.Tensor, image: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        """Reconstruction from a random subset of each crop, its keep ratio drawn from
        ``random_keep_range`` with ``generator`` (the global one if None)."""
        batch, num_tokens, _ = normed.shape
        mask = random_keep_masks(
            batch, num_tokens, self.hparams.random_keep_range, generator, normed.device
        )  # (B, L)
        feats_rec, image_rec = self.reconstruct(self.selector.apply_mask(normed, mask))
        return self.objective.reconstruction(feats_rec, normed, image_rec, image, mask)

    def _objective(
        self, normed: torch.Tensor, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[LossTerms, torch.Tensor | None]:
        """Loss terms and keep logits (B, L) for normalised features (B, L, C) and image.

        Random masks come from ``generator`` (the global one if None). A judge has no keep
        logits: its selector is not run at all.
        """
        masking = self.hparams.masking
        if masking == "random":
            return self._random_mask_terms(normed, image, generator), None
        selection = self.selector(normed)
        rebuild = self.reconstruct if masking == "selector" else self._reconstruct_without_learning
        feats_rec, image_rec = rebuild(selection.selected)
        terms = self.objective(feats_rec, normed, image_rec, image, selection.mask)
        if self.training and self.hparams.topk_weight > 0:
            topk_loss = self._topk_loss(normed, image, selection.keep_logits, rebuild, generator)
            terms = replace(
                terms, total=terms.total + self.hparams.topk_weight * topk_loss,
                topk_loss=topk_loss,
            )
        if masking == "decoupled":
            random_mask_loss = self._random_mask_terms(normed, image, generator).total
            terms = replace(
                terms, total=terms.total + random_mask_loss, random_mask_loss=random_mask_loss
            )
        return terms, selection.keep_logits

    def _topk_loss(
        self,
        normed: torch.Tensor,
        image: torch.Tensor,
        keep_logits: torch.Tensor,
        rebuild: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Reconstruction loss from the selector's sampled top k_i, k_i drawn per crop."""
        batch, num_tokens = keep_logits.shape
        counts = random_keep_counts(batch, num_tokens, self.hparams.random_keep_range, generator)
        mask = sampled_topk_mask(keep_logits, counts, self.hparams.tau)  # (B, L)
        feats_rec, image_rec = rebuild(self.selector.apply_mask(normed, mask))
        return self.objective.reconstruction(feats_rec, normed, image_rec, image, mask).total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        normed = self.selector.normalize(batch["feats"])  # (B, L, C)
        terms, _ = self._objective(normed, batch["image"])
        batch_size = batch["feats"].shape[0]
        logged = {
            "train/loss": terms.total,
            "train/feature_loss": terms.feature,
            "train/image_loss": terms.image,
            "train/keep_ratio": terms.keep_ratio,
            "train/regularizer": terms.regularizer,
        }
        for name in ("random_mask_loss", "topk_loss"):
            if getattr(terms, name) is not None:
                logged[f"train/{name}"] = getattr(terms, name)
        self.log_dict(logged, prog_bar=False, batch_size=batch_size)
        self.log("L_pr", terms.keep_ratio, prog_bar=True, logger=False, batch_size=batch_size)
        return terms.total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Objective with the noise-free mask, and reconstruction at fixed budgets."""
        normed = self.selector.normalize(batch["feats"])  # (B, L, C)
        # A judge's held-out loss is over random masks that repeat from one validation to the next.
        generator = torch.Generator().manual_seed(self.hparams.eval_seed * 1_000_003 + batch_idx)
        terms, keep_logits = self._objective(normed, batch["image"], generator)
        self.val_metrics.update_objective(terms, batch_size=batch["feats"].shape[0])
        masks = (
            self.val_metrics.random_masks(normed.shape[:2], batch_idx, normed.device)
            if keep_logits is None
            else self.val_metrics.masks(keep_logits, batch_idx)
        )
        for method, ratio, mask in masks:
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
        if self.is_judge:
            raise ValueError("this checkpoint is a judge (masking: random): its selector is "
                             "untrained, so it has no keep logits to predict")
        return {"key": batch["key"], "keep_logits": self.selector.scores(batch["feats"])}

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_compatible(checkpoint, source="the checkpoint given to --ckpt_path")


def _detached_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters cut from autograd, for ``functional_call``."""
    return {name: weight.detach() for name, weight in module.named_parameters()}
