"""Validation metrics: the objective's terms, and reconstruction from top-k vs random subsets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MeanSquaredError, Metric
from torchmetrics.image import PeakSignalNoiseRatio

from vtsel.models.selector import tokens_for_ratio, topk_mask
from vtsel.seeds import stream_seed
from vtsel.train.objective import LossTerms

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

    Args:
        keep_ratios: Budgets to score, each in (0, 1].
        seed: Seed of the random subsets.
        methods: ``("selector", "random")``, or ``("random",)`` for a judge, which has no
            selector to rank tokens (and so no selector gain).
    """

    def __init__(
        self, keep_ratios: Sequence[float], seed: int = 0, methods: Sequence[str] = METHODS
    ) -> None:
        super().__init__()
        if not keep_ratios or not all(0.0 < r <= 1.0 for r in keep_ratios):
            raise ValueError(f"eval_keep_ratios must be in (0, 1], got {list(keep_ratios)}")
        if "random" not in methods or not set(methods) <= set(METHODS):
            raise ValueError(f"methods must be 'random' and optionally 'selector', got {methods}")
        self.keep_ratios = tuple(float(r) for r in keep_ratios)
        self.seed = seed
        self.methods = tuple(methods)
        self.objective = nn.ModuleDict({t: MeanMetric() for t in OBJECTIVE_TERMS})
        self.reconstruction = nn.ModuleDict()
        for method in self.methods:
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
        """(method, ratio, mask (B, L)) for the selector's top-k and random, at every budget."""
        random_masks = self.random_masks(keep_logits.shape, batch_idx, keep_logits.device)
        for (_, ratio, random_mask) in random_masks:
            k = tokens_for_ratio(keep_logits.shape[-1], ratio)
            yield "selector", ratio, topk_mask(keep_logits.float(), k)
            yield "random", ratio, random_mask

    def random_masks(
        self, shape: Sequence[int], batch_idx: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[str, float, torch.Tensor]]:
        """("random", ratio, mask (B, L)) at every budget for a batch of ``shape`` (B, L)."""
        generator = torch.Generator().manual_seed(stream_seed(self.seed, batch_idx))
        random_scores = torch.rand(tuple(shape), generator=generator).to(device)  # (B, L)
        for ratio in self.keep_ratios:
            yield "random", ratio, topk_mask(random_scores, tokens_for_ratio(shape[-1], ratio))

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
        for ratio in self.keep_ratios if "selector" in self.methods else ():
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
