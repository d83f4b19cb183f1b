"""What an evaluation measures per crop, and how each measure reads (direction, format).

Features are compared after the per-token normalisation the selector trains on
(``blocks.normalize_tokens``). The judge passes kept tokens through unchanged, so the headline
measure is the error on the dropped tokens alone (what the kept set failed to carry); the error
over all L tokens is reported beside it. Images are compared in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from vtsel.train.objective import dropped_token_mse


@dataclass(frozen=True)
class Metric:
    """One measure: its column name, how to title it, and which way is better."""

    name: str
    title: str
    higher_is_better: bool
    decimals: int
    percent: bool = False  # shown as a percentage in tables

    def format(self, value: float) -> str:
        if value != value:  # NaN: no crop had anything to measure
            return "–"
        return f"{100 * value:.{self.decimals}f}%" if self.percent else f"{value:.{self.decimals}f}"

    def best(self, values: list[float]) -> float:
        """The best of ``values``, NaNs ignored (NaN if all are)."""
        finite = [v for v in values if v == v]
        if not finite:
            return float("nan")
        return max(finite) if self.higher_is_better else min(finite)


METRICS = (
    Metric("dropped_mse", "Dropped-token MSE (normalised tokens; kept pass through)", False, 4),
    Metric("feat_mse", "Feature MSE over all L tokens", False, 4),
    Metric("feat_cos", "Feature cosine similarity", True, 4),
    Metric("image_psnr", "Image PSNR (dB)", True, 2),
    Metric("image_ssim", "Image SSIM", True, 4),
    Metric("text_recall", "Text recall (share of text-bearing tokens kept)", True, 1, True),
)
METRIC_BY_NAME = {metric.name: metric for metric in METRICS}


def reconstruction_scores(
    feats_rec: torch.Tensor,  # (B, L, C)
    feats: torch.Tensor,  # (B, L, C) normalised target
    keep: torch.Tensor,  # (B, L) 1 = kept
    image_rec: torch.Tensor | None = None,  # (B, 3, S, S)
    image: torch.Tensor | None = None,  # (B, 3, S, S) in [0, 1]
) -> dict[str, torch.Tensor]:
    """Per-crop scores (B,) of a reconstruction: dropped-token and all-token MSE, cosine, and
    image PSNR and SSIM (NaN without images: the report leaves those tables out)."""
    feats_rec, feats = feats_rec.float(), feats.float()
    scores = {
        "dropped_mse": dropped_token_mse(feats_rec, feats, keep),
        "feat_mse": (feats_rec - feats).pow(2).mean(dim=(1, 2)),
        "feat_cos": F.cosine_similarity(feats_rec, feats, dim=-1).mean(dim=-1),
    }
    if image_rec is None or image is None:
        missing = torch.full_like(scores["feat_mse"], float("nan"))
        return {**scores, "image_psnr": missing, "image_ssim": missing}
    image_rec, image = image_rec.float().clamp(0, 1), image.float()
    return {
        **scores,
        "image_psnr": peak_signal_noise_ratio(
            image_rec, image, data_range=1.0, reduction="none", dim=(1, 2, 3)
        ),
        "image_ssim": structural_similarity_index_measure(
            image_rec, image, data_range=1.0, reduction="none"
        ),
    }
