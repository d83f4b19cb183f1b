"""The one feature-contract check every reader of features uses."""

from __future__ import annotations

import pytest

from vtsel.contract import FeatureContract, FeatureContractError

JUDGE = FeatureContract(32, (4, 4), "test-encoder")


def test_each_difference_is_named_and_an_unrecorded_encoder_passes() -> None:
    assert JUDGE.differences(FeatureContract(32, (4, 4))) == []  # no encoder recorded
    assert JUDGE.differences(FeatureContract(48, (2, 8), "other")) == [
        "feature_dim 48 vs 32", "grid 2x8 vs 4x4", "encoder 'other' vs 'test-encoder'",
    ]


def test_check_names_where_both_sides_and_what_to_do() -> None:
    JUDGE.check(FeatureContract(32, [4, 4], "test-encoder"), "x holds", "y", "z")  # fits
    with pytest.raises(FeatureContractError) as refused:
        JUDGE.check(FeatureContract(32, (2, 8), "test-encoder"), "sample 'k' in a.tar holds",
                    "the judge was trained on", "use another judge")
    assert str(refused.value) == (
        "sample 'k' in a.tar holds a 2x8 grid of 32-wide tokens (encoder 'test-encoder'), but "
        "the judge was trained on a 4x4 grid of 32-wide tokens (encoder 'test-encoder') "
        "(grid 2x8 vs 4x4): use another judge"
    )
