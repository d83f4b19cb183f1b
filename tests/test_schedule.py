"""The paper's schedule (5% linear warmup, cosine decay) and its length from the data."""

from __future__ import annotations

from itertools import pairwise

import lightning as L
import pytest
import torch

from vtsel.train.schedule import fit_optimizer_steps, warmup_cosine


def lrs_over(total_steps: int, warmup_fraction: float, peak: float = 1.0) -> list[float]:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = warmup_cosine(optimizer, total_steps, warmup_fraction)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_rises_linearly_to_the_peak_then_cosine_decays_to_zero() -> None:
    lrs = lrs_over(200, 0.05, peak=2.0)
    warmup = lrs[:10]
    assert all(b > a for a, b in pairwise(warmup))
    assert lrs[10] == pytest.approx(2.0)
    decay = lrs[10:]
    assert all(b <= a for a, b in pairwise(decay))
    assert lrs[105] == pytest.approx(1.0, abs=0.02)  # cosine half-way point
    assert lrs[-1] < 0.01


def test_schedule_length_comes_from_the_data_and_accumulation() -> None:
    trainer = L.Trainer(max_epochs=3, accumulate_grad_batches=2, logger=False)
    assert fit_optimizer_steps(trainer, batches_per_epoch=10) == 15
    capped = L.Trainer(max_epochs=3, max_steps=7, logger=False)
    assert fit_optimizer_steps(capped, batches_per_epoch=10) == 7


def test_an_empty_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one optimizer step"):
        lrs_over(0, 0.05)
