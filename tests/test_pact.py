"""PACT: EUTI's score, DBDPC's rounds against its sequential rule, the exact budget and the
merge against a naive loop. Hand-derived answers on small grids are in test_method_pins.py."""

from __future__ import annotations

import math

import pytest
import torch

from vtsel.methods import PACT, build_method
from vtsel.methods.base import gather_tokens, sorted_topk
from vtsel.methods.pact import (
    centres_for_budget,
    cosine_distances,
    dbdpc_centres,
    density_order,
    euti_log_scores,
)


def random_features(batch: int, num_tokens: int = 16, seed: int = 0) -> torch.Tensor:
    """Features (B, L, 6) with a shared offset, so that cosine distances spread over [0, 2]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_tokens, 6, generator=generator) + 0.5


def sequential_centres(distance: torch.Tensor, denser: torch.Tensor, cutoff: float) -> list[int]:
    """DBDPC's rule on one crop (n, n), one token at a time: in density order, a token is a
    centre iff it lies farther than ``cutoff`` from every centre before it."""
    num_tokens = distance.shape[0]
    order = sorted(range(num_tokens), key=lambda i: int(denser[i].sum()))  # densest first
    centres: list[int] = []
    for token in order:
        if all(distance[token, centre] > cutoff for centre in centres):
            centres.append(token)
    return sorted(centres)


def test_euti_score_is_the_norm_times_the_mean_querys_attention() -> None:
    features = random_features(2, 10)
    mean_query = features.mean(dim=1, keepdim=True)  # (B, 1, C)
    attention = ((mean_query @ features.transpose(1, 2))[:, 0] / math.sqrt(6)).softmax(dim=-1)
    expected = features.norm(dim=-1) * attention  # (B, L)
    torch.testing.assert_close(euti_log_scores(features).exp(), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dbdpc_rounds_make_the_centres_of_the_sequential_rule(seed: int) -> None:
    features = random_features(2, 24, seed)
    distance = cosine_distances(features, features)  # (2, 24, 24)
    denser = density_order(distance, 2.0)
    for cutoff in (-1.0, 0.05, 0.2, 0.5, 1.0, 1.9):
        centres = dbdpc_centres(distance, denser, torch.full((2,), cutoff))
        for row in range(2):
            expected = sequential_centres(distance[row], denser[row], cutoff)
            assert centres[row].nonzero()[:, 0].tolist() == expected


def test_density_order_puts_the_token_with_the_closest_neighbours_first() -> None:
    # Angles 0, 10 and 25 deg: 10 deg has both others nearest (10 and 15 deg away), 0 deg is
    # 10 and 25 deg from the others, 25 deg 15 and 25 deg: density order 10, 0, 25 deg.
    radians = torch.tensor([0.0, 10.0, 25.0]) * math.pi / 180
    points = torch.stack([radians.cos(), radians.sin()], dim=-1)[None]  # (1, 3, 2)
    denser = density_order(cosine_distances(points, points), 2.0)[0]
    assert denser.sum(dim=-1).tolist() == [1, 0, 2]  # how many tokens precede each


@pytest.mark.parametrize("keep", [1, 3, 5, 8, 9, 12, 16])
def test_every_budget_keeps_exactly_keep_ascending_unpruned_tokens(keep: int) -> None:
    features = random_features(3)
    method = PACT()
    plan = method.plan(features, keep)
    kept_idx = method(features, keep)
    assert torch.equal(kept_idx, plan.centre_idx)
    assert kept_idx.shape == (3, keep) and kept_idx.dtype == torch.long
    assert (kept_idx.diff(dim=-1) > 0).all()
    assert plan.is_unpruned.gather(1, kept_idx).all()
    assert (plan.is_unpruned.sum(dim=-1) == max(keep, int(16 * 0.55))).all()  # 8 below keep 9


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("keep", [1, 2, 4, 6])
def test_the_cutoff_meets_the_budget_and_the_candidate_below_it_does_not(
    seed: int, keep: int
) -> None:
    features = random_features(2, 16, seed)
    unpruned = gather_tokens(features, sorted_topk(euti_log_scores(features), 8))  # (2, 8, 6)
    distance = cosine_distances(unpruned, unpruned)
    denser = density_order(distance, 2.0)
    is_centre, cutoff = centres_for_budget(distance, denser, keep)
    assert (is_centre.sum(dim=-1) == keep).all()
    for row in range(2):
        pairs = distance[row][torch.triu(torch.ones(8, 8, dtype=torch.bool), 1)]
        candidates = [-1.0, *sorted(pairs.tolist())]
        found = cutoff[row].item()
        below = [value for value in candidates if value < found][-1:]  # the candidate below
        above = [value for value in candidates if value > found][:1]
        count = {
            value: len(sequential_centres(distance[row], denser[row], value))
            for value in (found, *below, *above)
        }
        if count[found] == keep:  # the search's cut-off: the one below makes too many
            assert all(count[value] > keep for value in below)
        else:  # the count jumps from above keep here to below it at the next candidate
            assert count[found] > keep and count[above[0]] < keep
        kept = is_centre[row].nonzero()[:, 0]
        apart = distance[row][kept[:, None], kept[None, :]] + 9 * torch.eye(keep)
        assert (apart > cutoff[row]).all()  # DBDPC's centres lie farther apart than d_c


def test_a_count_that_jumps_past_the_budget_keeps_the_densest_centres_below() -> None:
    # Two pairs at the same distance 0.2, orthogonal to each other: at d_c = 0.2 both pairs
    # merge at once (4 -> 2 clusters), so a budget of 3 takes d_c = -1 (4 centres) cut to 3.
    features = torch.tensor([[
        [1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.8, 0.6],
    ]])
    method = PACT(unpruned_share=1.0)
    plan = method.plan(features, 3)
    assert plan.cutoff.tolist() == [-1.0]
    kept = plan.centre_idx[0].tolist()
    dropped = ({0, 1, 2, 3} - set(kept)).pop()
    partner = dropped ^ 1  # its pair: 0-1, 2-3
    merged = method.merge(features, plan.centre_idx)[0]  # (3, 4)
    pair_mean = (features[0, dropped] + features[0, partner]) / 2
    for slot, token in enumerate(kept):
        expected = pair_mean if token == partner else features[0, token]
        torch.testing.assert_close(merged[slot], expected)


def naive_merge(features: torch.Tensor, method: PACT, keep: int) -> torch.Tensor:
    """PACT's merge of one crop (1, L, C) token by token."""
    plan = method.plan(features, keep)
    centres = plan.centre_idx[0].tolist()
    tokens = features[0]
    members: dict[int, list[torch.Tensor]] = {centre: [tokens[centre]] for centre in centres}
    for token in range(tokens.shape[0]):
        if token in centres:
            continue
        to_centres = [1 - torch.cosine_similarity(tokens[token], tokens[c], dim=0) for c in centres]
        nearest = min(range(keep), key=lambda slot: to_centres[slot].item())
        bound = method.retrieval_factor * plan.cutoff[0].item()
        if plan.is_unpruned[0, token] or to_centres[nearest].item() <= bound:
            members[centres[nearest]].append(tokens[token])
    return torch.stack([torch.stack(members[centre]).mean(dim=0) for centre in centres])


@pytest.mark.parametrize("keep", [1, 3, 6])
def test_merge_averages_each_centre_with_its_members_and_retrieved_pruned_tokens(
    keep: int,
) -> None:
    features = random_features(3, 16, seed=4)
    method = PACT()
    merged = method.merge(features, method(features, keep))
    assert merged.shape == (3, keep, 6)
    for row in range(3):
        expected = naive_merge(features[row : row + 1], method, keep)
        torch.testing.assert_close(merged[row], expected)


def test_a_budget_at_the_pruning_share_keeps_euti_top_tokens_unmerged() -> None:
    features = random_features(2)
    method = PACT()
    for keep in (8, 11):  # int(16 * 0.55) = 8 tokens survive pruning, or keep when more
        kept_idx = method(features, keep)
        assert torch.equal(kept_idx, sorted_topk(euti_log_scores(features), keep))
        assert method.plan(features, keep).cutoff.tolist() == [-1.0, -1.0]
        unmerged = gather_tokens(features, kept_idx)
        torch.testing.assert_close(method.merge(features, kept_idx), unmerged)


def test_rows_of_a_batch_are_planned_alone() -> None:
    features = random_features(4, seed=5)
    method = PACT()
    kept_idx, merged = method(features, 5), method.merge(features, method(features, 5))
    for row in range(4):
        alone = features[row : row + 1]
        assert torch.equal(method(alone, 5)[0], kept_idx[row])
        torch.testing.assert_close(method.merge(alone, method(alone, 5))[0], merged[row])


def test_kept_features_hand_on_the_merged_centres_and_refuse_other_indices() -> None:
    features = random_features(2, seed=6)
    method = build_method("pact")
    kept_idx = method(features, 4)
    merged = method.merge(features, kept_idx)
    torch.testing.assert_close(method.kept_features(features, kept_idx), merged)
    on_grid = method.kept_on_grid(features, kept_idx)  # (2, 16, 6)
    torch.testing.assert_close(gather_tokens(on_grid, kept_idx), merged)
    dropped = torch.ones(2, 16, dtype=torch.bool).scatter_(1, kept_idx, False)
    assert torch.equal(on_grid[dropped], features[dropped])
    with pytest.raises(ValueError, match="not the centres"):
        method.merge(features, torch.arange(4).repeat(2, 1))


def test_half_precision_features_are_planned_in_float32_and_merged_in_their_dtype() -> None:
    features = random_features(2, seed=7).half()
    method = PACT()
    kept_idx = method(features, 4)
    assert torch.equal(kept_idx, method(features.float(), 4))
    assert method.merge(features, kept_idx).dtype == torch.float16


def test_hyperparameters_outside_their_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unpruned_share=0 must lie in \(0, 1\]"):
        PACT(unpruned_share=0)
    with pytest.raises(ValueError, match=r"density_distance=0\.0 must be > 0"):
        PACT(density_distance=0.0)
    with pytest.raises(ValueError, match="retrieval_factor=-1 >= 0"):
        PACT(retrieval_factor=-1)
