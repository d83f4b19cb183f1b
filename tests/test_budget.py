"""The one budget type and mask function (``vtsel.budget``) that ``TokenSelector.select``, the
VLM integrations and ``vtsel eval`` share."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import Exported
from vtsel.budget import Budget, mask_from_scores
from vtsel.inference import TokenSelector


def test_budget_takes_exactly_one_kind() -> None:
    with pytest.raises(ValueError, match="exactly one of keep, k, threshold"):
        Budget()
    with pytest.raises(ValueError, match="exactly one of keep, k, threshold"):
        Budget(keep=0.5, k=3)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        Budget(keep=1.5)
    with pytest.raises(ValueError, match="keep at least one token"):
        Budget(k=0)
    with pytest.raises(ValueError, match="drop per_image"):
        Budget(threshold=0.0, per_image=True)
    wrong_kinds = (
        ({"keep": True}, "keep=True must lie"),
        ({"k": 2.5}, "k=2.5 must be an int"),
        ({"threshold": float("nan")}, "threshold=nan must be a finite"),
    )
    for bad, message in wrong_kinds:
        with pytest.raises(ValueError, match=message):
            Budget(**bad)
    assert Budget(keep=0.25).tokens(10) == 2  # rounded, as training's evaluation rounds
    assert Budget(keep=0.01).tokens(10) == 1  # never nothing of a visible crop
    assert Budget(k=144).tokens(100) == 100
    assert Budget(keep=0.5).tokens(0) == 0  # a crop wholly in the padding


def test_scores_keep_the_top_of_each_crop_among_candidates_only() -> None:
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    candidates = torch.tensor([[False, True, True, True], [True, True, True, True]])
    per_crop = mask_from_scores(scores, Budget(keep=0.5), candidates, [slice(0, 2)])
    # crop 0 has 3 candidates: round(1.5) = 2 of them, its best token is padding
    assert per_crop.tolist() == [[False, True, True, False], [False, False, True, True]]
    per_image = mask_from_scores(scores, Budget(k=3, per_image=True), candidates)
    assert per_image.tolist() == [[False, True, False, False], [False, False, True, True]]
    above = mask_from_scores(scores, Budget(threshold=2.5), candidates)
    assert above.tolist() == [[False, True, False, False], [False, False, True, True]]


@pytest.mark.parametrize(
    "budget",
    [Budget(keep=0.25), Budget(k=3), Budget(threshold=0.0), Budget(keep=0.2, per_image=True)],
)
def test_select_keeps_what_the_mask_function_keeps(exported: Exported, budget: Budget) -> None:
    selector = TokenSelector.from_pretrained(exported.directory)
    features = torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(2))  # 4x4 x 32
    selected = selector.select(
        features, budget.keep, budget.k, budget.threshold, budget.per_image
    )
    mask = mask_from_scores(selector.scores(features), budget)  # (3, 16)
    assert [idx.tolist() for idx in selected.indices] == [row.nonzero().flatten().tolist()
                                                            for row in mask]
