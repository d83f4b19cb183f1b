"""The band regulariser and the assembled objective."""

from __future__ import annotations

import pytest
import torch

from vtsel.train.objective import SelectionObjective, band_penalty


@pytest.mark.parametrize(
    ("keep_ratio", "expected_grad"),
    [(0.8, 0.1), (0.35, 0.0), (0.05, -0.1)],
    ids=["above-p-pushes-down", "inside-band-silent", "below-q-pushes-up"],
)
def test_band_penalty_gradient_in_each_region(keep_ratio: float, expected_grad: float) -> None:
    lpr = torch.tensor(keep_ratio, requires_grad=True)
    band_penalty(lpr, p=0.6, q=0.1, alpha_p=0.1, alpha_q=0.1).backward()
    assert lpr.grad.item() == pytest.approx(expected_grad)


def test_band_penalty_value_is_constant_inside_the_band() -> None:
    inside = [band_penalty(torch.tensor(r), 0.6, 0.1, 0.1, 0.1).item() for r in (0.2, 0.4, 0.6)]
    assert inside == pytest.approx([0.1 * 0.6 - 0.1 * 0.1] * 3)


def test_linear_regularizer_always_pushes_down() -> None:
    objective = SelectionObjective(regularizer="linear", alpha_p=0.3)
    for keep_ratio in (0.05, 0.35, 0.9):
        lpr = torch.tensor(keep_ratio, requires_grad=True)
        objective.penalty(lpr).backward()
        assert lpr.grad.item() == pytest.approx(0.3)


def test_objective_sums_its_terms() -> None:
    torch.manual_seed(0)
    feats, feats_rec = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    image, image_rec = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    mask = torch.tensor([[1.0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    objective = SelectionObjective(image_weight=2.0)
    terms = objective.penalized(objective.reconstruction(feats_rec, feats, image_rec, image, mask))
    assert terms.keep_ratio.item() == pytest.approx(7 / 12)
    assert terms.regularizer.item() == pytest.approx(0.1 * 0.6 - 0.1 * 0.1)
    expected = terms.feature + 2.0 * terms.image + terms.regularizer
    assert terms.total.item() == pytest.approx(expected.item())
    assert terms.feature.item() == pytest.approx((feats_rec - feats).square().mean().item())


def test_band_must_be_ordered() -> None:
    with pytest.raises(ValueError, match=r"q=0\.7, p=0\.6"):
        SelectionObjective(p=0.6, q=0.7)
