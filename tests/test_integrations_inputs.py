"""The model-free parts of the integrations: keep masks, clip groups, input cutting."""

from __future__ import annotations

import pytest
import torch
from transformers import BatchFeature

from vtsel.budget import Budget
from vtsel.integrations.attention import attention_layers
from vtsel.integrations.inputs import placeholder_runs, resize_placeholders
from vtsel.integrations.masks import kept_tokens
from vtsel.integrations.video import budget_groups
from vtsel.methods import VisionZipStyle, build_method

P = 9  # the placeholder id in hand-built prompts


def test_grid_methods_spread_their_budget_over_the_visible_rectangle() -> None:
    features = torch.randn(2, 16, 8)
    candidates = torch.zeros(2, 4, 4, dtype=torch.bool)
    candidates[0, 1:3] = True  # crop 0 shows rows 1-2 only (letterboxed)
    candidates[1] = True
    keep, _ = kept_tokens(build_method("uniform", grid=(4, 4)), features, (4, 4),
                          candidates.view(2, 16), [slice(0, 1), slice(1, 2)], Budget(k=4))
    on_rectangle = build_method("uniform", grid=(2, 4)).positions(4)  # in the 2x4 rectangle
    expected = [[1 + int(position) // 4, int(position) % 4] for position in on_rectangle]
    assert keep[0].view(4, 4).nonzero().tolist() == expected  # not the 4x4 lattice, cut
    assert keep[1].view(4, 4).nonzero().tolist() == [[1, 1], [1, 3], [3, 1], [3, 3]]


def test_the_llm_reads_visionzips_merged_tokens_merged_within_the_visible_rectangle() -> None:
    features, attention = torch.randn(2, 16, 8), torch.rand(2, 16)
    candidates = torch.zeros(2, 4, 4, dtype=torch.bool)
    candidates[0, 1:3] = True  # crop 0 shows rows 1-2 only (letterboxed)
    candidates[1] = True
    method = VisionZipStyle()
    _, handed_on = kept_tokens(method, features, (4, 4), candidates.view(2, 16),
                               [slice(0, 1), slice(1, 2)], Budget(k=4), attention)
    # crop 0: VisionZip on the 8 visible tokens (4..11) alone; only they can join its targets
    visible = slice(4, 12)
    kept_idx = method(features[:1, visible], 4, attention[:1, visible])
    expected = method.kept_on_grid(features[:1, visible], kept_idx, attention[:1, visible])
    torch.testing.assert_close(handed_on[0, visible], expected[0])
    assert torch.equal(handed_on[0, :4], features[0, :4])  # padding is left as it is
    expected = method.kept_on_grid(features[1:], method(features[1:], 4, attention[1:]),
                                   attention[1:])
    torch.testing.assert_close(handed_on[1], expected[0])
    # one contextual token per crop (round(54/64 * 4) = 3 dominant) is merged, so differs
    assert (handed_on != features).any(dim=-1).sum(dim=-1).tolist() == [1, 1]


def test_clips_group_consecutive_images() -> None:
    assert budget_groups([5, 3, 1], None) == [slice(0, 5), slice(5, 8), slice(8, 9)]
    assert budget_groups([1, 1, 1, 2], [3, 1]) == [slice(0, 3), slice(3, 5)]
    with pytest.raises(ValueError, match="sum to the 4 images"):
        budget_groups([1, 1, 1, 2], [3])


def test_placeholders_are_cut_per_unit_and_rows_repadded_on_the_left() -> None:
    inputs = BatchFeature({
        "input_ids": torch.tensor([[0, 0, 7, P, P, P, P, 8],   # left-padded, one image of 4
                                   [7, P, P, P, 8, P, P, 8]]),  # two images, 3 and 2
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8]),
        "mm_token_type_ids": torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 1, 1, 0]]),
        "pixel_values": torch.zeros(3, 3, 2, 2),
    })
    resized = resize_placeholders(inputs, P, full_tokens=[4, 3, 2], kept_tokens=[1, 2, 0],
                                  pad_token_id=0)
    assert isinstance(resized, BatchFeature)
    assert resized["input_ids"].tolist() == [[0, 0, 7, P, 8], [7, P, P, 8, 8]]
    assert resized["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert resized["mm_token_type_ids"].tolist() == [[0, 0, 0, 1, 0], [0, 1, 1, 0, 0]]
    assert resized["pixel_values"] is inputs["pixel_values"]


def test_right_padded_inputs_stay_right_padded() -> None:
    inputs = {
        "input_ids": torch.tensor([[7, P, P, 8, 5], [7, P, P, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, -100, 8, 5], [-100, -100, -100, -100, -100]]),
    }
    resized = resize_placeholders(inputs, P, [2, 2], [1, 2], pad_token_id=0)
    assert resized["input_ids"].tolist() == [[7, P, 8, 5], [7, P, P, 0]]
    assert resized["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert resized["labels"].tolist() == [[-100, -100, 8, 5], [-100, -100, -100, -100]]


def test_mismatched_placeholders_are_refused() -> None:
    inputs = {"input_ids": torch.tensor([[7, P, P, 8]])}
    with pytest.raises(ValueError, match=r"hold 2 image tokens \(id 9\) but the images take 3"):
        resize_placeholders(inputs, P, [3], [1], pad_token_id=0)
    two_rows = {"input_ids": torch.tensor([[7, P, P], [P, P, 8]])}
    with pytest.raises(ValueError, match="run across two prompts"):
        resize_placeholders(two_rows, P, [1, 3], [1, 1], pad_token_id=0)
    with pytest.raises(ValueError, match="position_ids"):
        resize_placeholders({**inputs, "position_ids": inputs["input_ids"]}, P, [2], [1], 0)


def test_each_attention_method_reads_its_layers() -> None:
    penultimate = 23  # hidden_states index of CLIP ViT-L/14's penultimate layer (of 24)
    assert attention_layers(build_method("visionzip"), penultimate, 24) == [22]
    # HiPrune: the 9th layer (1-based) for objects, the feature layer for registers
    assert attention_layers(build_method("hiprune", grid=(24, 24)), penultimate, 24) == [8, 22]
    assert attention_layers(build_method("hiprune", grid=(4, 4)), 2, 3) == [0, 1]
    with pytest.raises(ValueError, match="embedding output"):
        attention_layers(build_method("visionzip"), 0, 24)


def test_placeholder_runs_are_read_row_by_row() -> None:
    input_ids = torch.tensor([[P, P, 3, P, 4], [5, P, P, P, P]])
    assert placeholder_runs(input_ids, P) == [2, 1, 4]
