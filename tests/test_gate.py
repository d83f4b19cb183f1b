"""The judge's sanity gate on spatially smooth features, with reconstructors whose behaviour is
known: one that uses the kept tokens well, one that ignores them (it predicts the mean of the
kept tokens everywhere, what the demo's old judge had learned), and the gate's verdicts on
figures that show favouritism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vtsel.contract import FeatureContract
from vtsel.fidelity import Judge
from vtsel.fidelity.gate import FAVOUR_TOLERANCE, GateReport, _failures, check_judge
from vtsel.train.judge_module import JudgeModule
from vtsel.train.masking import HELD_OUT_FAMILY

GRID, C = (8, 8), 16


def smooth_features(batch: int, seed: int = 0) -> torch.Tensor:
    """Tokens (B, 64, C) that vary slowly over the grid, as real encoder features do."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch * C, 1, 12, 12, generator=generator)
    kernel = torch.ones(1, 1, 5, 5) / 25
    fields = F.conv2d(noise, kernel).view(batch, C, 64)  # (B, C, 8*8)
    return fields.transpose(1, 2) * 5  # (B, L, C)


class KnownJudge(Judge):
    """A judge whose reconstruction is a fixed rule instead of a trained network."""

    def __init__(self, rule: str) -> None:
        module = JudgeModule(feature_dim=C, grid_size=GRID, image_size=16, dim=16, num_heads=2,
                             image_channels=16)
        super().__init__(module, FeatureContract(C, GRID, "test"), Path("known"))
        self.rule = rule

    def reconstruct_features(self, normed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        kept = keep.unsqueeze(-1)
        if self.rule == "interpolation+":  # a fifth of the way from interpolation to the truth
            rebuilt = 0.8 * self.interpolate(normed, keep) + 0.2 * normed
        else:  # "mean": every dropped token is the mean of the kept ones
            mean = (kept * normed).sum(1, keepdim=True) / kept.sum(1, keepdim=True)
            rebuilt = kept * normed + (1 - kept) * mean
        return rebuilt


def batches() -> list[torch.Tensor]:
    return [smooth_features(16, seed) for seed in range(2)]


def test_a_judge_that_uses_the_kept_tokens_passes() -> None:
    report = check_judge(KnownJudge("interpolation+"), batches())
    assert report.passed, report.failures
    assert report.budget_ratio < 0.7
    for family in (report.seen_family, HELD_OUT_FAMILY):
        assert report.advantage(family) == pytest.approx(1 - 0.8**2, abs=0.02)
    assert report.seen_family == "random"  # the default mixture weighs it most
    assert any("passed" in line for line in report.lines())


def test_a_judge_that_ignores_the_kept_tokens_fails_by_name() -> None:
    report = check_judge(KnownJudge("mean"), batches())
    assert not report.passed
    text = "\n".join(report.failures)
    assert "barely falls with the budget" in text
    assert "no better than training-free interpolation" in text


def test_favouring_the_most_seen_family_fails() -> None:
    fair = GateReport(0.5, 0.3, "random", {"random": 0.2, HELD_OUT_FAMILY: 0.25},
                      {"random": 0.25, HELD_OUT_FAMILY: 0.3})
    assert _failures(fair) == []
    gap = FAVOUR_TOLERANCE + 0.05
    favouring = GateReport(  # advantage 40% on random masks, 40% - gap on the held-out family
        0.5, 0.3, "random", {"random": 0.15, HELD_OUT_FAMILY: 0.3 * (0.6 + gap)},
        {"random": 0.25, HELD_OUT_FAMILY: 0.3},
    )
    (failure,) = _failures(favouring)
    assert "favours the random masks it saw most" in failure and HELD_OUT_FAMILY in failure
