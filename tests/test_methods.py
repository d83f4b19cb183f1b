"""Baseline token selectors: the shared contract, and each method on hand-checkable inputs."""

from __future__ import annotations

import math

import pytest
import torch

from vtsel.methods import (
    METHODS,
    DivPrune,
    FeatureNormTopK,
    HiPruneStyle,
    RandomSelection,
    SelectionMethod,
    SpreadOrder,
    UniformGrid,
    VisionZipStyle,
    build_method,
)
from vtsel.methods.divprune import cosine_similarity_matrix, greedy_max_min_order

GRID = (4, 4)
L = GRID[0] * GRID[1]


def all_methods() -> list[SelectionMethod]:
    return [
        RandomSelection(seed=0),
        UniformGrid(GRID),
        SpreadOrder(GRID),
        FeatureNormTopK(),
        DivPrune(),
        VisionZipStyle(),
        HiPruneStyle(GRID),
    ]


def random_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, L, 8) and a softmax attention (B, L), different in every row."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, L, 8, generator=generator)
    attention = torch.randn(batch, L, generator=generator).softmax(dim=-1)
    return features, attention


def unit_vectors(degrees: list[float]) -> torch.Tensor:
    """2-D unit vectors at the given angles, as one crop (1, n, 2)."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=-1).float().unsqueeze(0)


@pytest.mark.parametrize("method", all_methods(), ids=lambda method: method.name)
@pytest.mark.parametrize("keep", [1, 5, L])
def test_every_method_returns_sorted_unique_indices_per_crop(
    method: SelectionMethod, keep: int
) -> None:
    features, attention = random_inputs(batch=3)
    kept_idx = method(features, keep, attention)
    assert kept_idx.shape == (3, keep)
    assert kept_idx.dtype == torch.long
    assert (kept_idx.diff(dim=-1) > 0).all()  # ascending, hence unique
    assert kept_idx.min() >= 0 and kept_idx.max() < L


@pytest.mark.parametrize("method", all_methods(), ids=lambda method: method.name)
def test_batch_rows_are_selected_independently(method: SelectionMethod) -> None:
    features, attention = random_inputs(batch=3, seed=1)
    batched = method(features, 6, attention)
    for row in range(3):
        alone = method(features[row : row + 1], 6, attention[row : row + 1])
        assert torch.equal(alone[0], batched[row])


def test_random_repeats_for_a_seed_and_differs_across_seeds_and_rows() -> None:
    features, _ = random_inputs(batch=3)
    first = RandomSelection(seed=7)(features, 6)
    assert torch.equal(first, RandomSelection(seed=7)(features, 6))
    assert not torch.equal(first, RandomSelection(seed=8)(features, 6))
    assert not torch.equal(first[0], first[1])


def test_random_subset_follows_the_crop_not_its_row_or_batch() -> None:
    features, _ = random_inputs(batch=4, seed=2)
    others, _ = random_inputs(batch=3, seed=5)
    method = RandomSelection(seed=3)
    batched = method(features, 6)  # (4, 6)
    for row in range(4):
        alone = method(features[row : row + 1], 6)[0]
        assert torch.equal(alone, batched[row])
    assert torch.equal(method(features.flip(0), 6), batched.flip(0))  # other rows
    mixed = torch.cat([others[:2], features[1:2], others[2:], features[1:2]])  # (5, L, 8)
    in_other_batch = method(mixed, 6)
    assert torch.equal(in_other_batch[2], batched[1]) and torch.equal(in_other_batch[4], batched[1])
    # The same values in another memory layout or dtype keep the same subset.
    strided = features.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    assert torch.equal(method(strided, 6), batched)
    halves = features.half()
    assert torch.equal(method(halves, 6), method(halves.float(), 6))
    assert len({tuple(kept_idx.tolist()) for kept_idx in batched}) == 4  # crops differ


def test_random_keeps_every_position_equally_often_across_crops() -> None:
    features = torch.randn(2000, L, 2, generator=torch.Generator().manual_seed(0))
    kept_idx = RandomSelection(seed=0)(features, 4)  # (2000, 4)
    share = torch.bincount(kept_idx.flatten(), minlength=L) / 2000  # (L,) expected 4/16 each
    assert (share - 0.25).abs().max() < 0.05  # 0.05 is over 5 binomial standard deviations


def test_uniform_keeps_a_spread_lattice_on_every_crop() -> None:
    features, _ = random_inputs(batch=2)
    kept_idx = UniformGrid(GRID)(features, 4)
    assert kept_idx.tolist() == [[5, 7, 13, 15]] * 2  # rows 1 and 3, columns 1 and 3
    rows, cols = kept_idx[0] // GRID[1], kept_idx[0] % GRID[1]
    grid_dist = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
    assert grid_dist[~torch.eye(4, dtype=torch.bool)].min() >= 2  # no two kept tokens touch


def test_spread_is_nested_and_covers_the_grid_at_every_budget() -> None:
    spread = SpreadOrder((6, 6))
    kept = {keep: spread(torch.randn(3, 36, 8), keep) for keep in range(1, 37)}
    assert all((kept[keep] == kept[keep][:1]).all() for keep in kept)  # content-free
    for keep in range(1, 36):
        assert set(kept[keep][0].tolist()) <= set(kept[keep + 1][0].tolist())  # nested
    rows, cols = kept[4][0] // 6, kept[4][0] % 6
    gaps = ((rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2).float()
    assert gaps[~torch.eye(4, dtype=torch.bool)].sqrt().min() >= 3  # 4 tokens, far apart


def test_uniform_fills_up_to_the_exact_budget() -> None:
    assert UniformGrid((4, 4)).positions(5).numel() == 5
    assert UniformGrid((2, 3)).positions(6).tolist() == list(range(6))


def test_norm_keeps_the_largest_tokens() -> None:
    scales = torch.tensor([[1.0, 5.0, 2.0, 9.0, 3.0], [9.0, 1.0, 1.0, 1.0, 8.0]])
    features = scales[..., None] * torch.ones(2, 5, 3)  # token norms proportional to scales
    assert FeatureNormTopK()(features, 2).tolist() == [[1, 3], [0, 4]]


def test_divprune_picks_points_in_known_max_min_order() -> None:
    # Angles 0, 20, 90, 135, 180, 250 deg. 250 has the farthest nearest neighbour (70 deg), then
    # each pick maximises the angle to the closest picked point: 90, 0, 180, 135, 20.
    points = unit_vectors([0, 20, 90, 135, 180, 250])
    assert greedy_max_min_order(points, 6).tolist() == [[5, 2, 0, 4, 3, 1]]
    assert DivPrune()(points, 3).tolist() == [[0, 2, 5]]


def naive_max_min_order(features: torch.Tensor, keep: int) -> list[int]:
    """DivPrune's greedy rule on one crop (1, L, C), recomputing every minimum: O(k·L²)."""
    distance = 1 - cosine_similarity_matrix(features)[0]  # (L, L)
    num_tokens = distance.shape[0]
    tokens = range(num_tokens)
    nearest_other = [min(distance[i, j] for j in tokens if j != i) for i in tokens]
    order = [max(tokens, key=lambda i: nearest_other[i])]
    while len(order) < keep:
        candidates = [i for i in tokens if i not in order]
        order.append(max(candidates, key=lambda i: min(distance[i, j] for j in order)))
    return order


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_divprune_running_minimum_matches_the_naive_greedy(seed: int) -> None:
    features, _ = random_inputs(batch=2, seed=seed)
    fast = greedy_max_min_order(features, 8)
    for row in range(2):
        assert fast[row].tolist() == naive_max_min_order(features[row : row + 1], 8)


def test_divprune_keeps_a_duplicated_token_once_before_any_duplicate() -> None:
    east, north, west = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]
    points = torch.tensor([[east, east, north, west]])  # tokens 0 and 1 coincide
    # Nearest-other distances: 0 and 1 have 0, north and west have 1 (north-east at 90 deg), so
    # north (2) comes first; then east (0, at distance 1, ties with 1 and west -> lowest index),
    # then west (3, at 2 from east); the duplicate 1 comes last.
    assert greedy_max_min_order(points, 4).tolist() == [[2, 0, 3, 1]]
    assert DivPrune()(points, 3).tolist() == [[0, 2, 3]]


def test_visionzip_keeps_top_attention_and_contextual_targets_every_step() -> None:
    attention = torch.zeros(1, 8)
    attention[0, [6, 2, 5]] = torch.tensor([0.5, 0.3, 0.2])
    method = VisionZipStyle(dominant_fraction=0.5)
    features = torch.randn(1, 8, 4)
    # 2 dominant (6, 2). The rest, [0, 1, 3, 4, 5, 7], is R = 6 tokens for 2 targets: step
    # 6 // 2 = 3 from the first, so rest[0] = 0 and rest[3] = 4.
    assert method(features, 4, attention).tolist() == [[0, 2, 4, 6]]
    # 3 targets among the 5 left by 3 dominant (6, 2, 5): step 1, so rest[0:3] = 0, 1, 3.
    assert method(features, 6, attention).tolist() == [[0, 1, 2, 3, 5, 6]]


def test_visionzip_splits_llava_budgets_as_the_paper() -> None:
    method = VisionZipStyle()
    assert [method.num_dominant(keep) for keep in (64, 128, 192)] == [54, 108, 162]
    assert method.num_dominant(1) == 1 and method.num_dominant(2) == 1


def test_visionzip_merge_adds_the_mean_of_its_nearest_dropped_tokens_to_each_target() -> None:
    east, north = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # tokens: 0 dominant; 1 and 3 contextual (east-ish and north-ish); 2, 4 dropped.
    tokens = [3 * east + north, 2 * east, 4 * north, 6 * north, 4 * east]
    features = torch.stack(tokens).unsqueeze(0)  # (1, 5, 2)
    attention = torch.tensor([[0.9, 0.0, 0.0, 0.0, 0.0]])
    method = VisionZipStyle(dominant_fraction=1 / 3)
    indices = torch.tensor([[0, 1, 3]])
    merged = method.merge(features, indices, attention)
    # VisionZip: target + mean(joiners); one joiner each here, so target + joiner
    expected = torch.stack([tokens[0], tokens[1] + tokens[4], tokens[3] + tokens[2]])
    assert torch.allclose(merged[0], expected)


def test_visionzip_merge_groups_by_the_metric_when_given() -> None:
    east, north = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    tokens = [3 * east + north, 2 * east, 4 * north, 6 * north, 4 * east]
    features = torch.stack(tokens).unsqueeze(0)  # (1, 5, 2)
    # Keys that swap the dropped tokens' groups: token 2 now looks like target 1, 4 like 3.
    keys = torch.stack([east, east, east, north, north]).unsqueeze(0)  # (1, 5, 2)
    attention = torch.tensor([[0.9, 0.0, 0.0, 0.0, 0.0]])
    method = VisionZipStyle(dominant_fraction=1 / 3)
    merged = method.merge(features, torch.tensor([[0, 1, 3]]), attention, metric=keys)
    expected = torch.stack([tokens[0], tokens[1] + tokens[2], tokens[3] + tokens[4]])
    assert torch.allclose(merged[0], expected)
    with pytest.raises(ValueError, match="metric must be"):
        method.merge(features, torch.tensor([[0, 1, 3]]), attention, metric=keys[:, :4])


def test_visionzip_merge_refuses_indices_without_the_dominant_tokens() -> None:
    features, attention = random_inputs(batch=1)
    kept_idx = VisionZipStyle()(features, 4, attention)
    weakest = attention.argsort(dim=-1)[:, :4].sort(dim=-1).values
    assert VisionZipStyle().merge(features, kept_idx, attention).shape == (1, 4, 8)
    with pytest.raises(ValueError, match="dominant"):
        VisionZipStyle().merge(features, weakest, attention)


def hiprune_maps() -> torch.Tensor:
    """Object- and output-layer attention (1, 2, 16) on the 4x4 grid, every value distinct.

    Object layer: 5 = (1, 1) is highest, then 15, then 9 (a neighbour of 5). Output layer: 12,
    then 0, then 5; everything else is lower and ascending by position in both.
    """
    object_attention = torch.arange(L, dtype=torch.float) / 100
    object_attention[[5, 15, 9]] = torch.tensor([1.0, 0.9, 0.5])
    output_attention = torch.arange(L, dtype=torch.float) / 100
    output_attention[[12, 0, 5]] = torch.tensor([1.0, 0.9, 0.8])
    return torch.stack([object_attention, output_attention]).unsqueeze(0)


def test_hiprune_keeps_anchors_then_grid_neighbours_then_output_layer_registers() -> None:
    features = torch.randn(1, L, 4)
    method = HiPruneStyle(GRID, alpha=1.0)  # round(keep / 5) = 1 anchor for keep 3 to 7
    # Anchor 5 (object layer's top), buffers 1, 4, 6, 9, then the output layer's top outside
    # them: 12, then 0.
    assert method(features, 5, hiprune_maps()).tolist() == [[1, 4, 5, 6, 9]]
    assert method(features, 7, hiprune_maps()).tolist() == [[0, 1, 4, 5, 6, 9, 12]]


def test_hiprune_buffers_are_grid_neighbours_not_flat_index_neighbours() -> None:
    maps = hiprune_maps()
    maps[0, 0, 4] = 2.0  # anchor at (1, 0): neighbours 0, 5, 8; not 3, the end of row 0
    method = HiPruneStyle(GRID, alpha=1.0)
    # anchor 4, buffers 0, 5, 8, then the output layer's top outside them: 12.
    assert method(torch.randn(1, L, 4), 5, maps).tolist() == [[0, 4, 5, 8, 12]]


def test_hiprune_anchor_count_follows_alpha_and_budget() -> None:
    anchors = [HiPruneStyle(GRID).num_anchors(keep) for keep in (25, 26, 64, 144, 288)]
    assert anchors == [0, 1, 1, 3, 6]  # round(0.1 * keep / 5); Python rounds 0.5 to 0
    # No anchors: the output layer's top 3 alone.
    method = HiPruneStyle(GRID, alpha=0.1)
    assert method(torch.randn(1, L, 4), 3, hiprune_maps()).tolist() == [[0, 5, 12]]


def test_hiprune_ranks_buffers_by_the_object_layer_when_they_overflow_the_budget() -> None:
    method = HiPruneStyle(GRID, alpha=1.0)  # round(3 / 5) = 1 anchor for 3 tokens
    # anchor 5, then buffer 9 (0.5), then buffer 6 (0.06) over 4 (0.04) and 1 (0.01).
    assert method(torch.randn(1, L, 4), 3, hiprune_maps()).tolist() == [[5, 6, 9]]


def test_hiprune_with_one_map_uses_it_for_both_layers() -> None:
    maps = hiprune_maps()
    method = HiPruneStyle(GRID, alpha=1.0)
    features = torch.randn(1, L, 4)
    one_map = method(features, 7, maps[:, 0])
    assert torch.equal(one_map, method(features, 7, maps[:, [0, 0]]))
    # anchor 5, buffers 1, 4, 6, 9, then the object map's top outside them: 15, 14.
    assert one_map.tolist() == [[1, 4, 5, 6, 9, 14, 15]]


@pytest.mark.parametrize("method", [VisionZipStyle(), HiPruneStyle(GRID)], ids=lambda m: m.name)
def test_attention_methods_refuse_to_run_without_attention(method: SelectionMethod) -> None:
    features, _ = random_inputs(batch=2)
    with pytest.raises(ValueError, match=method.name):
        method(features, 4)


def test_inputs_outside_the_contract_are_refused() -> None:
    features, attention = random_inputs(batch=2)
    with pytest.raises(ValueError, match=r"keep=0 must lie in \[1, 16\]"):
        FeatureNormTopK()(features, 0)
    with pytest.raises(ValueError, match="attention must be"):
        VisionZipStyle()(features, 4, attention[:, :5])
    two_layers = torch.stack([attention, attention], dim=1)  # (B, 2, L)
    one_map_only = r"visionzip: attention must be \(2, 16\) for .* got \(2, 2, 16\)"
    with pytest.raises(ValueError, match=one_map_only):
        VisionZipStyle()(features, 4, two_layers)
    assert HiPruneStyle(GRID)(features, 4, two_layers).shape == (2, 4)
    with pytest.raises(ValueError, match=r"\(2, 16\) or \(2, 2, 16\)"):
        HiPruneStyle(GRID)(features, 4, two_layers[:, :, :8])
    with pytest.raises(ValueError, match=r"alpha=1\.5 must lie in \[0, 1\]"):
        HiPruneStyle(GRID, alpha=1.5)
    with pytest.raises(ValueError, match="grid 3x3"):
        UniformGrid((3, 3))(features, 4)


def test_registry_builds_by_name_and_lists_the_valid_names() -> None:
    assert isinstance(build_method("uniform", grid=GRID), UniformGrid)
    baselines = {"random", "uniform", "spread", "norm", "divprune", "visionzip", "hiprune", "pact"}
    names = baselines | {"selector"}
    assert set(METHODS) == names
    with pytest.raises(ValueError, match=", ".join(sorted(names))):
        build_method("fastv")
