"""VisionZip and HiPrune pinned to their papers' definitions on inputs small enough to check by
hand: VisionZip's merged values (``target + mean(joiners)``) and its CLS slot, HiPrune's border
anchors and its two-layer hierarchy, and the layer rule both extraction and the integrations
use for HiPrune's object layer.

The 2x3 grid of the VisionZip pins, positions row by row::

    0 1 2
    3 4 5
"""

from __future__ import annotations

import pytest
import torch

from vtsel.methods import HiPruneStyle, UniformGrid, VisionZipStyle
from vtsel.methods.base import (
    CLS_ATTENTION,
    RECEIVED_ATTENTION,
    attention_input,
)
from vtsel.methods.hiprune import object_layer

EAST, NORTH = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
ONE_DOMINANT = 1 / 3  # round(3 * 1/3) = 1 dominant token of a budget of 3


def zip_inputs(last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (1, 6, 2) and CLS attention (1, 6) on the 2x3 grid, token 5 being ``last``.

    Token 4 has the top attention: it is the one dominant token. The rest, [0, 1, 2, 3, 5],
    are R = 5 tokens for 2 contextual targets, every 5 // 2 = 2nd: rest[0] = 0 (east) and
    rest[2] = 2 (north). 1 = (3, 1) and 3 = (4, 0) point east, so they join target 0.
    """
    tokens = [2 * EAST, 3 * EAST + NORTH, 2 * NORTH, 4 * EAST, 7 * EAST + 7 * NORTH, last]
    attention = torch.tensor([[0.1, 0.2, 0.0, 0.3, 0.9, 0.4]])
    return torch.stack(tokens).unsqueeze(0), attention


def test_visionzip_merged_token_is_its_target_plus_the_mean_of_its_joiners() -> None:
    features, attention = zip_inputs(EAST + 5 * NORTH)  # 5 points north: joins target 2
    method = VisionZipStyle(dominant_fraction=ONE_DOMINANT)
    kept_idx = method(features, 3, attention)
    assert kept_idx.tolist() == [[0, 2, 4]]
    handed_on = method.kept_features(features, kept_idx, attention)  # (1, 3, 2)
    # 0: (2, 0) + mean((3, 1), (4, 0)) = (2, 0) + (3.5, 0.5); 2: (0, 2) + (1, 5); 4: dominant
    expected = torch.tensor([[5.5, 0.5], [1.0, 7.0], [7.0, 7.0]])
    torch.testing.assert_close(handed_on[0], expected)


def test_visionzip_target_that_no_token_joined_is_handed_on_unchanged() -> None:
    features, attention = zip_inputs(5 * EAST + NORTH)  # now 5 joins target 0 too
    method = VisionZipStyle(dominant_fraction=ONE_DOMINANT)
    kept_idx = method(features, 3, attention)
    handed_on = method.kept_features(features, kept_idx, attention)
    # 0: (2, 0) + mean((3, 1), (4, 0), (5, 1)) = (2, 0) + (4, 2/3); 2: nobody joined, (0, 2)
    expected = torch.tensor([[6.0, 2 / 3], [0.0, 2.0], [7.0, 7.0]])
    torch.testing.assert_close(handed_on[0], expected)


def test_kept_on_grid_lays_the_handed_on_tokens_at_their_positions() -> None:
    features, attention = zip_inputs(EAST + 5 * NORTH)
    method = VisionZipStyle(dominant_fraction=ONE_DOMINANT)
    on_grid = method.kept_on_grid(features, method(features, 3, attention), attention)
    expected = features.clone()
    expected[0, 0], expected[0, 2] = torch.tensor([5.5, 0.5]), torch.tensor([1.0, 7.0])
    torch.testing.assert_close(on_grid, expected)
    # a method that only selects hands on the tokens themselves
    uniform = UniformGrid((2, 3))
    assert torch.equal(uniform.kept_on_grid(features, uniform(features, 3)), features)


def test_visionzip_cls_slot_gives_one_dominant_slot_to_the_callers_cls_token() -> None:
    with_cls = VisionZipStyle(cls_slot=True)
    # VisionZip's 54 + 10, 108 + 20, 162 + 30 for LLaVA-1.5: CLS + 53, 107, 161 patches
    assert [with_cls.num_dominant(keep) for keep in (63, 127, 191)] == [53, 107, 161]
    assert [VisionZipStyle().num_dominant(keep) for keep in (64, 128, 192)] == [54, 108, 162]
    features, attention = zip_inputs(EAST + 5 * NORTH)
    # 2 patch tokens beside CLS: VisionZip's split of 3 is 1 dominant (CLS) + 2 contextual, so
    # no patch is dominant and the targets are every 6 // 2 = 3rd token: 0 and 3.
    cls_method = VisionZipStyle(dominant_fraction=ONE_DOMINANT, cls_slot=True)
    kept_idx = cls_method(features, 2, attention)
    assert kept_idx.tolist() == [[0, 3]]
    assert cls_method.kept_features(features, kept_idx, attention).shape == (1, 2, 2)
    # without the CLS slot the same 2 tokens are 1 dominant patch (4) + target 0
    assert VisionZipStyle(dominant_fraction=ONE_DOMINANT)(features, 2, attention).tolist() == [
        [0, 4]
    ]


GRID = (3, 4)  # positions row by row: 0..3 / 4..7 / 8..11


def border_maps(anchor: int) -> torch.Tensor:
    """(1, 2, 12) maps, every value distinct: the object layer peaks at ``anchor``; the output
    layer ranks 9, 10 first, then 1, 2, 3, 5, 6, 7, 8, and puts 0, 4, 11 (the reference code's
    clamped or wrapped extras in the cases below) last."""
    object_attention = torch.arange(12, dtype=torch.float) / 100
    object_attention[anchor] = 1.0
    output_attention = 0.5 - torch.arange(12, dtype=torch.float) / 100
    output_attention[[9, 10]] = torch.tensor([1.0, 0.9])
    output_attention[[0, 4, 11]] = torch.tensor([-1.0, -0.9, -0.8])
    return torch.stack([object_attention, output_attention]).unsqueeze(0)


@pytest.mark.parametrize(
    ("anchor", "kept"),
    [
        # top-right corner: buffers 2 (left), 7 (below); registers 9, 10, 1. The reference's
        # +1 and -W give 4 (next row's first) and -4 -> 0 (clamped to the corner).
        (3, [1, 2, 3, 7, 9, 10]),
        # bottom-left corner: buffers 4 (above), 9 (right); registers 10, 1, 2. The reference's
        # -1 gives 7 (previous row's last), +W 12 -> 11 (clamped).
        (8, [1, 2, 4, 8, 9, 10]),
        # top edge: buffers 0, 2, 5; registers 9, 10. The reference's -W gives -3 -> 0, which
        # de-duplicates with "left": 3 buffers there too.
        (1, [0, 1, 2, 5, 9, 10]),
        # right edge: buffers 3, 6, 11; registers 9, 10. The reference's +1 gives 8.
        (7, [3, 6, 7, 9, 10, 11]),
    ],
)
def test_hiprune_border_anchor_keeps_its_true_grid_neighbours_only(
    anchor: int, kept: list[int]
) -> None:
    method = HiPruneStyle(GRID, alpha=1.0)  # round(6 / 5) = 1 anchor for a budget of 6
    assert method(torch.randn(1, 12, 4), 6, border_maps(anchor)).tolist() == [kept]


def test_hiprune_anchors_come_from_map_0_and_registers_from_map_1() -> None:
    object_attention = torch.arange(12, dtype=torch.float) / 100
    object_attention[5] = 1.0  # anchor 5 = (1, 1): buffers 1, 4, 6, 9
    output_attention = torch.arange(12, dtype=torch.float) / 1000
    output_attention[[0, 11, 10]] = torch.tensor([1.0, 0.9, 0.8])
    maps = torch.stack([object_attention, output_attention]).unsqueeze(0)  # (1, 2, 12)
    method = HiPruneStyle(GRID, alpha=1.0)  # round(7 / 5) = 1 anchor for a budget of 7
    features = torch.randn(1, 12, 4)
    # anchor 5 and its 4 buffers, then the output map's top two: 0, 11
    assert method(features, 7, maps).tolist() == [[0, 1, 4, 5, 6, 9, 11]]
    # layers swapped: anchor 0 (a corner: buffers 1, 4), registers 5, 11, 10, 9 by the
    # object map
    assert method(features, 7, maps[:, [1, 0]]).tolist() == [[0, 1, 4, 5, 9, 10, 11]]


def test_hiprune_object_layer_is_the_9th_of_24_scaled_and_never_past_the_features() -> None:
    assert object_layer(24, 23) == 9  # CLIP ViT-L/14 read at its penultimate block
    assert object_layer(12, 11) == 4  # 4.5 rounds to even
    assert object_layer(40, 40) == 15
    assert object_layer(24, 3) == 3  # features from block 3: the object layer cannot be later
    assert object_layer(2, 1) == 1


def test_each_method_reads_its_own_attention_and_falls_back_to_the_cls_map() -> None:
    cls_map, received = torch.rand(1, 6), torch.rand(1, 2, 6)
    maps = {CLS_ATTENTION: cls_map, RECEIVED_ATTENTION: received}
    assert attention_input(VisionZipStyle(), maps) is cls_map
    assert attention_input(HiPruneStyle((2, 3)), maps) is received
    older_shards = {CLS_ATTENTION: cls_map, RECEIVED_ATTENTION: None}
    assert attention_input(HiPruneStyle((2, 3)), older_shards) is cls_map
    assert attention_input(HiPruneStyle((2, 3)), {}) is None
