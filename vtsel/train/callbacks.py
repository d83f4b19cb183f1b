"""What a run shows in TensorBoard beyond scalars: which tokens the selector keeps, and the result.

Scalars say *how much* better than random the selection is; these images say *where* it looks.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from vtsel.figures import DROPPED_BRIGHTNESS as DROPPED_BRIGHTNESS  # re-exported
from vtsel.figures import SEPARATOR_WIDTH as SEPARATOR_WIDTH  # re-exported
from vtsel.figures import overlay_mask, side_by_side, to_uint8
from vtsel.models.selector import tokens_for_ratio, topk_mask

HP_METRIC_SOURCE = "val/selector_gain@25"  # the metric best-*.ckpt is chosen by


class SelectionImages(L.Callback):
    """Writes the paper's Figure 1 for a few validation crops at every validation epoch.

    ``selection/<i>``: the crop with the tokens a seeded random subset drops darkened | the same
    for the selector's top-k, both at ``keep_ratio``. ``reconstruction/<i>``: the crop | the
    image rebuilt from the selector's top-k. The crops are the first ``num_samples`` of the first
    validation batch and the random subset is the same every epoch, so a run's images change only
    as the selector learns. At the end of fit the final ``val/selector_gain@25`` becomes the
    TensorBoard logger's ``hp_metric``, the column the HPARAMS tab compares runs by.

    Only global rank 0 draws, with no collective: other ranks return at once. Without a
    TensorBoard logger the callback does nothing.

    Args:
        keep_ratio: Share of tokens kept in the images (the paper's Figure 1 uses 40%).
        num_samples: Crops shown, each under its own tag.
        seed: Seed of the random subset.
    """

    def __init__(self, keep_ratio: float = 0.4, num_samples: int = 4, seed: int = 0) -> None:
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.keep_ratio = keep_ratio
        self.num_samples = num_samples
        self.seed = seed
        self._batch: dict[str, torch.Tensor] | None = None  # first crops of the first val batch

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not trainer.is_global_zero:
            return
        n = self.num_samples
        self._batch = {key: batch[key][:n].detach().cpu() for key in ("feats", "image")}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _tensorboard(trainer)
        batch, self._batch = self._batch, None
        if writer is None or batch is None or trainer.sanity_checking:
            return
        step = trainer.global_step
        images = batch["image"].float()  # (n, 3, S, S) in [0, 1]
        random_masks, selector_masks, reconstructions = self._draw(pl_module, batch["feats"])
        random_panels = overlay_mask(images, random_masks)
        selector_panels = overlay_mask(images, selector_masks)
        for i, image in enumerate(images):
            selection = side_by_side(random_panels[i], selector_panels[i])
            writer.add_image(f"selection/{i}", to_uint8(selection), global_step=step)
            reconstruction = side_by_side(image, reconstructions[i])
            writer.add_image(f"reconstruction/{i}", to_uint8(reconstruction), global_step=step)

    @torch.no_grad()
    def _draw(
        self, pl_module: L.LightningModule, feats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random and selector masks (n, H, W) at ``keep_ratio`` and the selector's
        reconstruction (n, 3, S, S) in [0, 1], all float32 on the CPU, for raw features (n, L, C).
        """
        selector = pl_module.selector
        feats = feats.to(pl_module.device, pl_module.dtype)  # (n, L, C)
        num_crops, num_tokens = feats.shape[:2]
        k = tokens_for_ratio(num_tokens, self.keep_ratio)
        keep_logits = selector.scores(feats).float()  # (n, L)
        selector_mask = topk_mask(keep_logits, k)  # (n, L)
        generator = torch.Generator().manual_seed(self.seed)  # the same subset every epoch
        random_mask = topk_mask(torch.rand(num_crops, num_tokens, generator=generator), k)
        normed = selector.normalize(feats)  # (n, L, C)
        _, image_rec = pl_module.reconstruct(normed, selector_mask)
        grid = (num_crops, *selector.config.grid_size)  # (n, H, W)
        return (
            random_mask.reshape(grid),
            selector_mask.cpu().reshape(grid),
            image_rec.float().clamp(0, 1).cpu(),  # (n, 3, S, S)
        )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set ``hp_metric`` to the final ``val/selector_gain@25``.

        Lightning's TensorBoardLogger writes the HPARAMS summary once, at the start of fit, with
        ``hp_metric`` as its one metric column (a placeholder of -1); TensorBoard keeps the
        first summary of a run and shows the last value of that scalar. So the final gain goes
        into ``hp_metric`` rather than into a second summary, which TensorBoard would ignore.
        """
        logger = trainer.logger
        gain = trainer.callback_metrics.get(HP_METRIC_SOURCE)
        if not trainer.is_global_zero or not isinstance(logger, TensorBoardLogger) or gain is None:
            return
        logger.log_metrics({"hp_metric": float(gain)}, step=trainer.global_step)


def _tensorboard(trainer: L.Trainer) -> SummaryWriter | None:
    """The run's SummaryWriter on global rank 0, else None (other ranks, other loggers)."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
