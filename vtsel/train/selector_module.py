"""The selector's LightningModule: selector + reconstructors trained with the paper's objective."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import torch
from torch.func import functional_call

from vtsel.models import FeatureSelector, SelectorConfig
from vtsel.models.config import MaskEstimator
from vtsel.seeds import stream_seed
from vtsel.train.masking import (
    check_families,
    check_keep_range,
    random_keep_counts,
    sampled_topk_mask,
)
from vtsel.train.metrics import SelectionMetrics
from vtsel.train.objective import LossTerms, Regularizer, SelectionObjective
from vtsel.train.task import ReconstructionTask

Masking = Literal["selector", "decoupled"]
# What the selector's reconstructors learn from by default: shapes of every kind, no method's.
DEFAULT_RECONSTRUCTOR_MASKS = {"random": 1.0, "clustered": 1.0, "blocky": 1.0}
Rebuild = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SelectorModule(ReconstructionTask):
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
        tau: Gumbel-Softmax temperature (the paper gives none; see README, "Choices").
        estimator: ``gumbel`` (paper) or ``straight_through`` (appendix B.1 ablation).
        init_keep_ratio: Keep probability of a token without prior at initialisation.
        coverage: Weight of the selector's coverage prior (0: none; README, "Choices").
        p: Upper edge of the keep-ratio band.
        q: Lower edge of the keep-ratio band.
        alpha_p: Weight of the upper band edge (alpha_1). The paper's 0.1 let L_pr run out of
            the band on real (DINOv2) features; 1.0 holds it (README, "Choices").
        alpha_q: Weight of the lower band edge (alpha_2).
        regularizer: ``band`` (eq. 8) or ``linear`` (alpha_1 * L_pr, appendix B.1 ablation).
        image_weight: Weight of the image reconstruction term.
        lr: Peak learning rate of Adam.
        weight_decay: Adam's L2 weight decay.
        warmup_fraction: Share of this fit's optimizer steps spent in linear warmup.
        eval_keep_ratios: Keep ratios at which validation compares top-k and random selection.
        eval_seed: Seed of the random-selection baseline, so its numbers repeat run to run.
        masking: Which masks the reconstructors learn from.
            ``decoupled`` (default): only masks drawn from ``reconstructor_masks``; the
            selector learns through them, and their weights take no gradient from its masks,
            so they cannot adapt to its habits (a selector fitted jointly learned a ranking
            worse than random on real features; README, "Choices").
            ``selector`` (the paper): the selector's own Gumbel masks, jointly.
        reconstructor_masks: Mask families (``vtsel.train.masking``) and their weights, for
            ``decoupled``.
        keep_range: (low, high) keep ratios the drawn masks and the top-k budgets come from;
            cover the budgets that will be used (the paper's lie between 5.6% and 50%).
        topk_weight: Weight of a second reconstruction term, from the selector's top k_i of
            its perturbed keep logits, k_i drawn per crop from ``keep_range``
            (``masking.sampled_topk_mask``). Eq. 8's mask keeps each token independently and
            settles near p, so it never asks which tokens matter most at smaller budgets;
            inference keeps the top-k at any budget. 0 is the paper's objective alone; the band
            on L_pr applies to eq. 8's mask either way.
        init_from: A vtsel selector checkpoint whose weights (only) start this fit, e.g. the
            previous stage's best. Optimizer, step and schedule start afresh; use
            ``--ckpt_path`` to resume a fit instead.
    """

    task = "selector"

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
        coverage: float = 3.0,
        p: float = 0.6,
        q: float = 0.1,
        alpha_p: float = 1.0,
        alpha_q: float = 1.0,
        regularizer: Regularizer = "band",
        image_weight: float = 1.0,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.05,
        eval_keep_ratios: tuple[float, ...] = (0.1, 0.25, 0.5),
        eval_seed: int = 0,
        masking: Masking = "decoupled",
        reconstructor_masks: dict[str, float] | None = None,
        keep_range: tuple[float, float] = (0.05, 0.6),
        topk_weight: float = 1.0,
        init_from: str | None = None,
    ) -> None:
        super().__init__(
            feature_dim, grid_size, image_size, dim, num_heads, feature_reconstructor_depth,
            image_reconstructor_depth, image_channels, image_weight, lr, weight_decay,
            warmup_fraction,
        )
        if masking not in ("selector", "decoupled"):
            raise ValueError(f"masking must be 'selector' or 'decoupled', got {masking!r}")
        # hparams keep what the config said (LightningCLI records its own values); the resolved
        # families live here.
        self.reconstructor_masks = dict(
            DEFAULT_RECONSTRUCTOR_MASKS if reconstructor_masks is None else reconstructor_masks
        )
        check_families(self.reconstructor_masks)
        check_keep_range(keep_range)
        if topk_weight < 0:
            raise ValueError(f"topk_weight must be >= 0, got {topk_weight}")
        # init_from is a path on the machine that trained; a reloaded checkpoint has the weights.
        self.save_hyperparameters(ignore=["init_from"])
        self.selector = FeatureSelector(selector_config(self.hparams))
        self.objective = SelectionObjective(p, q, alpha_p, alpha_q, regularizer, image_weight)
        self.val_metrics = SelectionMetrics(eval_keep_ratios, seed=eval_seed)
        self._start_from(init_from)

    def _reconstruct_without_learning(
        self, normed: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``reconstruct`` through detached reconstructor weights: gradients reach the keep mask
        (and the selector behind it), never the reconstructors."""
        feature_rec, image_rec = self.feature_reconstructor, self.image_reconstructor
        feats_rec = functional_call(feature_rec, _detached_weights(feature_rec), (normed, keep))
        image = functional_call(image_rec, _detached_weights(image_rec), (feats_rec,))
        return feats_rec, image  # (B, L, C), (B, 3, S, S)

    def _reconstructor_loss(
        self, batch: dict[str, Any], normed: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The reconstructors' own loss on drawn masks: dropped-token error plus the image."""
        loss, _ = self.drawn_mask_loss(
            batch, normed, self.reconstructor_masks, self.hparams.keep_range, generator
        )
        return loss

    def _objective(
        self,
        batch: dict[str, Any],
        normed: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[LossTerms, torch.Tensor]:
        """Loss terms and keep logits (B, L) for normalised features (B, L, C).

        Drawn masks and budgets come from ``generator`` (the global one if None).
        """
        selection = self.selector(normed)
        decoupled = self.hparams.masking == "decoupled"
        rebuild = self._reconstruct_without_learning if decoupled else self.reconstruct
        feats_rec, image_rec = rebuild(normed, selection.mask)
        reconstruction = self.objective.reconstruction(
            feats_rec, normed, image_rec, batch["image"], selection.mask
        )
        terms = self.objective.penalized(reconstruction)
        if self.training and self.hparams.topk_weight > 0:
            topk_loss = self._topk_loss(batch, normed, selection.keep_logits, rebuild, generator)
            terms = replace(
                terms, total=terms.total + self.hparams.topk_weight * topk_loss,
                topk_loss=topk_loss,
            )
        if decoupled:
            reconstructor_loss = self._reconstructor_loss(batch, normed, generator)
            terms = replace(
                terms, total=terms.total + reconstructor_loss,
                reconstructor_loss=reconstructor_loss,
            )
        return terms, selection.keep_logits

    def _topk_loss(
        self,
        batch: dict[str, Any],
        normed: torch.Tensor,
        keep_logits: torch.Tensor,
        rebuild: Rebuild,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Reconstruction loss from the selector's sampled top k_i, k_i drawn per crop."""
        batch_size, num_tokens = keep_logits.shape
        counts = random_keep_counts(batch_size, num_tokens, self.hparams.keep_range, generator)
        keep = sampled_topk_mask(keep_logits, counts, self.hparams.tau)  # (B, L)
        feats_rec, image_rec = rebuild(normed, keep)
        return self.objective.reconstruction(
            feats_rec, normed, image_rec, batch["image"], keep
        ).total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        normed = self.normalize(batch["feats"])  # (B, L, C)
        terms, _ = self._objective(batch, normed)
        batch_size = normed.shape[0]
        logged = {
            "train/loss": terms.total,
            "train/feature_loss": terms.feature,
            "train/image_loss": terms.image,
            "train/keep_ratio": terms.keep_ratio,
            "train/regularizer": terms.regularizer,
        }
        for name in ("reconstructor_loss", "topk_loss"):
            if getattr(terms, name) is not None:
                logged[f"train/{name}"] = getattr(terms, name)
        self.log_dict(logged, prog_bar=False, batch_size=batch_size)
        self.log("L_pr", terms.keep_ratio, prog_bar=True, logger=False, batch_size=batch_size)
        return terms.total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Objective with the noise-free mask, and reconstruction at fixed budgets."""
        normed = self.normalize(batch["feats"])  # (B, L, C)
        generator = torch.Generator().manual_seed(stream_seed(self.hparams.eval_seed, batch_idx))
        terms, keep_logits = self._objective(batch, normed, generator)
        self.val_metrics.update_objective(terms, batch_size=normed.shape[0])
        for method, ratio, mask in self.val_metrics.masks(keep_logits, batch_idx):
            feats_rec, image_rec = self.reconstruct(normed, mask)
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


def selector_config(hparams: Mapping[str, Any]) -> SelectorConfig:
    """The selector a ``SelectorModule`` with these hyperparameters builds (and exports)."""
    return SelectorConfig(
        feature_dim=int(hparams["feature_dim"]),
        grid_size=(int(hparams["grid_size"][0]), int(hparams["grid_size"][1])),
        dim=int(hparams["dim"]),
        depth=int(hparams["selector_depth"]),
        num_heads=int(hparams["num_heads"]),
        tau=float(hparams["tau"]),
        estimator=hparams["estimator"],
        init_keep_ratio=float(hparams["init_keep_ratio"]),
        coverage=float(hparams["coverage"]),
    )


def _detached_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters cut from autograd, for ``functional_call``."""
    return {name: weight.detach() for name, weight in module.named_parameters()}
