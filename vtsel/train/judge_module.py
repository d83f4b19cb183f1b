"""The judge's LightningModule: reconstructors that learn from drawn mask families only.

``vtsel eval`` scores every selection method by how well one reconstructor rebuilds what the
method dropped (the paper's eq. 1). That reconstructor must favour no method, so it never sees
a trained selector's masks; and it must not favour the families it does see, so it learns from
a mixture (``vtsel.train.masking``) and the evaluation checks it on a family it never saw
(``vtsel.fidelity.gate``).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric

from vtsel.models.selector import tokens_for_ratio
from vtsel.seeds import stream_seed
from vtsel.train.masking import (
    check_families,
    check_keep_range,
    top_counts_mask,
)
from vtsel.train.objective import dropped_token_mse
from vtsel.train.task import ReconstructionTask

DEFAULT_FAMILIES = {
    "random": 2.0, "clustered": 1.0, "blocky": 1.0, "uniform": 1.0, "spread": 1.0,
    "norm": 1.0, "divprune": 1.0, "visionzip": 1.0, "hiprune": 1.0, "pact": 1.0,
}


class JudgeModule(ReconstructionTask):
    """Feature and image reconstructors trained on masks drawn from ``mask_families``.

    Each crop of a batch gets a family (drawn by weight) and a budget (drawn from
    ``keep_range``); the loss is the error on the dropped tokens (kept ones pass through) plus
    the image term. Validation logs ``val/loss`` over a fixed draw of the same mixture and
    ``val/dropped_mse/random@<percent>``.

    Args:
        feature_dim: Width C of the encoder's tokens (linked from ``data.feature_dim``).
        grid_size: (H, W) token grid of one crop (linked from ``data.grid_size``).
        image_size: Side of the reconstruction target (linked from ``data.image_size``).
        dim: Width of the transformers; give the tokens room (the demo's 384-wide tokens
            were rebuilt through 128 before, and the error barely fell with the budget).
        num_heads: Attention heads.
        feature_reconstructor_depth: Layers of the feature reconstructor.
        image_reconstructor_depth: Transformer layers of the image reconstructor.
        image_channels: Channels of the image decoder's first upsampling stage.
        image_weight: Weight of the image reconstruction term.
        mask_families: Families (``vtsel.train.masking``) and their weights. ``random`` weighs most
            by default: the gate checks the judge does not favour it over the held-out family.
            Attention-ranked families need shards with attention.
        keep_range: (low, high) keep ratios the budgets are drawn from; cover the budgets
            that will be scored (the paper's lie between 5.6% and 50%).
        lr: Peak learning rate of Adam.
        weight_decay: Adam's L2 weight decay.
        warmup_fraction: Share of this fit's optimizer steps spent in linear warmup.
        eval_keep_ratios: Budgets of ``val/dropped_mse/random@<percent>``.
        eval_seed: Seed of validation's masks, so they repeat from one validation to the next.
        init_from: A judge checkpoint whose weights (only) start this fit.
    """

    task = "judge"

    def __init__(
        self,
        feature_dim: int = 1024,
        grid_size: tuple[int, int] = (24, 24),
        image_size: int = 336,
        dim: int = 512,
        num_heads: int = 8,
        feature_reconstructor_depth: int = 4,
        image_reconstructor_depth: int = 2,
        image_channels: int = 256,
        image_weight: float = 1.0,
        mask_families: dict[str, float] | None = None,
        keep_range: tuple[float, float] = (0.05, 0.6),
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.05,
        eval_keep_ratios: tuple[float, ...] = (0.056, 0.25, 0.5),
        eval_seed: int = 0,
        init_from: str | None = None,
    ) -> None:
        super().__init__(
            feature_dim, grid_size, image_size, dim, num_heads, feature_reconstructor_depth,
            image_reconstructor_depth, image_channels, image_weight, lr, weight_decay,
            warmup_fraction,
        )
        # hparams keep what the config said (LightningCLI records its own values); the resolved
        # families live here.
        self.mask_families = dict(DEFAULT_FAMILIES if mask_families is None else mask_families)
        check_families(self.mask_families)
        check_keep_range(keep_range)
        if not eval_keep_ratios or not all(0.0 < r <= 1.0 for r in eval_keep_ratios):
            raise ValueError(f"eval_keep_ratios must be in (0, 1], got {list(eval_keep_ratios)}")
        self.save_hyperparameters(ignore=["init_from"])
        self.val_loss = MeanMetric()
        self.val_random = torch.nn.ModuleDict(
            {_percent(ratio): MeanMetric() for ratio in eval_keep_ratios}
        )
        self._start_from(init_from)

    def _loss(
        self, batch: dict[str, Any], normed: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, dropped-token error) on a draw of the mixture, from ``generator``."""
        return self.drawn_mask_loss(
            batch, normed, self.mask_families, self.hparams.keep_range, generator
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        normed = self.normalize(batch["feats"])  # (B, L, C)
        loss, dropped = self._loss(batch, normed, None)
        self.log_dict(
            {"train/loss": loss, "train/dropped_mse": dropped, "train/power":
             self.feature_reconstructor.power.detach()},
            batch_size=normed.shape[0],
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        normed = self.normalize(batch["feats"])  # (B, L, C)
        generator = torch.Generator().manual_seed(stream_seed(self.hparams.eval_seed, batch_idx))
        loss, _ = self._loss(batch, normed, generator)
        self.val_loss.update(loss.detach(), weight=normed.shape[0])
        scores = torch.rand(normed.shape[:2], generator=generator)  # (B, L)
        for ratio in self.hparams.eval_keep_ratios:
            count = torch.full((normed.shape[0],), tokens_for_ratio(normed.shape[1], ratio))
            keep = top_counts_mask(scores, count).to(normed.device)
            feats_rec = self.feature_reconstructor(normed, keep)
            self.val_random[_percent(ratio)].update(dropped_token_mse(feats_rec, normed, keep))

    def on_validation_epoch_end(self) -> None:
        logged = {"val/loss": self.val_loss.compute()}
        for name, metric in self.val_random.items():
            logged[f"val/dropped_mse/random@{name.replace('_', '.')}"] = metric.compute()
            metric.reset()
        self.val_loss.reset()
        self.log_dict(logged)


def _percent(ratio: float) -> str:
    """``5_6`` for 0.056: a budget as a ModuleDict key (which takes no dot)."""
    return f"{100 * ratio:.3g}".replace(".", "_")
