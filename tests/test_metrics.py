"""Validation metrics: budgets, seeded random subsets, and the selector's gain over random."""

from __future__ import annotations

import pytest
import torch

from vtsel.train.metrics import SelectionMetrics


def test_masks_keep_the_budget_and_random_subsets_repeat() -> None:
    metrics = SelectionMetrics([0.25, 0.5], seed=3)
    keep_logits = torch.arange(8.0).repeat(2, 1)  # (B=2, L=8): later tokens score higher
    first = list(metrics.masks(keep_logits, batch_idx=0))
    again = list(metrics.masks(keep_logits, batch_idx=0))
    other_batch = list(metrics.masks(keep_logits, batch_idx=1))
    for (method, ratio, mask), (_, _, mask_again) in zip(first, again, strict=True):
        assert mask.sum(-1).tolist() == [8 * ratio] * 2
        assert torch.equal(mask, mask_again)
        if method == "selector":
            assert mask[:, -int(8 * ratio):].all()  # the top-scoring tokens
    random_masks = [m for (method, _, m) in first if method == "random"]
    random_other = [m for (method, _, m) in other_batch if method == "random"]
    assert any(not torch.equal(a, b) for a, b in zip(random_masks, random_other, strict=True))


def test_selector_gain_is_the_share_of_random_error_avoided() -> None:
    metrics = SelectionMetrics([0.25])
    target = torch.zeros(2, 8, 4)
    image = torch.zeros(2, 3, 4, 4)
    metrics.update_reconstruction("selector", 0.25, target + 1.0, target, image, image)
    metrics.update_reconstruction("random", 0.25, target + 2.0, target, image, image)
    out = metrics.compute()
    assert out["val/feat_mse/selector@25"].item() == pytest.approx(1.0)
    assert out["val/feat_mse/random@25"].item() == pytest.approx(4.0)
    assert out["val/selector_gain@25"].item() == pytest.approx(0.75)


def test_keep_ratios_outside_the_unit_interval_are_refused() -> None:
    with pytest.raises(ValueError, match="eval_keep_ratios"):
        SelectionMetrics([0.0, 0.5])
