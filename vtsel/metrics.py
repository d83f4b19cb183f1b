"""Validation metrics: the objective's terms, and reconstruction from top-k vs random subsets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MeanSquaredError, Metric
from torchmetrics.image import PeakSignalNoiseRatio

from vtsel.models.selector import tokens_for_ratio, topk_mask
from vtsel.objective import LossTerms

METHODS = ("selector", "random")
OBJECTIVE_TERMS = ("loss", "feature_loss", "image_loss", "keep_ratio", "regularizer")


def _budget_name(method: str, ratio: float) -> str:
    return f"{method}@{round(ratio * 100):g}"


class SelectionMetrics(nn.Module):
    """Accumulates validation metrics; every state is a sum, so memory stays flat and the
    numbers sync across ranks in ``compute``.

    At each keep ratio the selector keeps its top-k tokens by keep logit and the random baseline
    keeps k tokens drawn from a generator seeded by (seed, batch index): the same data give the
    same random subsets run after run.
    """

    def __init__(self, keep_ratios: Sequence[float], seed: int = 0) -> None:
        super().__init__()
        if not keep_ratios or not all(0.0 < r <= 1.0 for r in keep_ratios):
            raise ValueError(f"eval_keep_ratios must be in (0, 1], got {list(keep_ratios)}")
        self.keep_ratios = tuple(float(r) for r in keep_ratios)
        self.seed = seed
        self.objective = nn.ModuleDict({t: MeanMetric() for t in OBJECTIVE_TERMS})
        self.reconstruction = nn.ModuleDict()
        for method in METHODS:
            for ratio in self.keep_ratios:
                self.reconstruction[_budget_name(method, ratio)] = nn.ModuleDict(
                    {
                        "feat_mse": MeanSquaredError(),
                        "feat_cos": MeanMetric(),
                        "image_psnr": PeakSignalNoiseRatio(data_range=1.0),
                    }
                )

    def update_objective(self, terms: LossTerms, batch_size: int) -> None:
        values = (terms.total, terms.feature, terms.image, terms.keep_ratio, terms.regularizer)
        for name, value in zip(OBJECTIVE_TERMS, values, strict=True):
            self.objective[name].update(value.detach().float(), weight=batch_size)

    def masks(
        self, keep_logits: torch.Tensor, batch_idx: int
    ) -> Iterator[tuple[str, float, torch.Tensor]]:
        """(method, ratio, mask (B, L)) for every method and budget."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_idx)
        random_scores = torch.rand(keep_logits.shape, generator=generator).to(keep_logits.device)
        for ratio in self.keep_ratios:
            k = tokens_for_ratio(keep_logits.shape[-1], ratio)
            yield "selector", ratio, topk_mask(keep_logits.float(), k)
            yield "random", ratio, topk_mask(random_scores, k)

    def update_reconstruction(
        self,
        method: str,
        ratio: float,
        feats_rec: torch.Tensor,  # (B, L, C)
        feats: torch.Tensor,  # (B, L, C)
        image_rec: torch.Tensor,  # (B, 3, S, S)
        image: torch.Tensor,  # (B, 3, S, S)
    ) -> None:
        metrics = self.reconstruction[_budget_name(method, ratio)]
        metrics["feat_mse"].update(feats_rec.float(), feats.float())
        metrics["feat_cos"].update(F.cosine_similarity(feats_rec.float(), feats.float(), dim=-1))
        metrics["image_psnr"].update(image_rec.float().clamp(0, 1), image.float())

    def compute(self, prefix: str = "val") -> dict[str, torch.Tensor]:
        """``<prefix>/<term>`` and ``<prefix>/<metric>/<method>@<percent>`` for the logger."""
        out = {f"{prefix}/{name}": m.compute() for name, m in self.objective.items()}
        for budget, metrics in self.reconstruction.items():
            for name, metric in metrics.items():
                out[f"{prefix}/{name}/{budget}"] = metric.compute()
        for ratio in self.keep_ratios:
            selector = out[f"{prefix}/feat_mse/{_budget_name('selector', ratio)}"]
            random = out[f"{prefix}/feat_mse/{_budget_name('random', ratio)}"]
            # The share of random selection's error the selector avoids, under the same
            # reconstructor: it isolates the selection from how well the reconstructor has
            # (over)fitted, which moves both errors together.
            out[f"{prefix}/selector_gain@{round(ratio * 100):g}"] = 1 - selector / random
        return out

    def reset(self) -> None:
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()
