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


@pytest.mark.parametrize(
    "method", [m for m in all_methods() if m.name != "random"], ids=lambda method: method.name
)
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


def test_uniform_keeps_a_spread_lattice_on_every_crop() -> None:
    features, _ = random_inputs(batch=2)
    kept_idx = UniformGrid(GRID)(features, 4)
    assert kept_idx.tolist() == [[5, 7, 13, 15]] * 2  # rows 1 and 3, columns 1 and 3
    rows, cols = kept_idx[0] // GRID[1], kept_idx[0] % GRID[1]
    grid_dist = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
    assert grid_dist[~torch.eye(4, dtype=torch.bool)].min() >= 2  # no two kept tokens touch


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


def test_visionzip_keeps_top_attention_and_evenly_spaced_context() -> None:
    attention = torch.zeros(1, 8)
    attention[0, [6, 2, 5]] = torch.tensor([0.5, 0.3, 0.2])
    method = VisionZipStyle(dominant_fraction=0.5)
    features = torch.randn(1, 8, 4)
    # 2 dominant (6, 2); 2 contextual at slice centres of the rest [0, 1, 3, 4, 5, 7]: 1 and 5
    assert method(features, 4, attention).tolist() == [[1, 2, 5, 6]]


def test_visionzip_merge_averages_each_context_token_with_its_nearest_dropped_tokens() -> None:
    east, north = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # tokens: 0 dominant; 1 and 3 contextual (east-ish and north-ish); 2, 4 dropped.
    tokens = [3 * east + north, 2 * east, 4 * north, 6 * north, 4 * east]
    features = torch.stack(tokens).unsqueeze(0)  # (1, 5, 2)
    attention = torch.tensor([[0.9, 0.0, 0.0, 0.0, 0.0]])
    method = VisionZipStyle(dominant_fraction=1 / 3)
    indices = torch.tensor([[0, 1, 3]])
    merged = method.merge(features, indices, attention)
    expected = torch.stack([tokens[0], (tokens[1] + tokens[4]) / 2, (tokens[3] + tokens[2]) / 2])
    assert torch.allclose(merged[0], expected)


def test_visionzip_merge_refuses_indices_without_the_dominant_tokens() -> None:
    features, attention = random_inputs(batch=1)
    kept_idx = VisionZipStyle()(features, 4, attention)
    weakest = attention.argsort(dim=-1)[:, :4].sort(dim=-1).values
    assert VisionZipStyle().merge(features, kept_idx, attention).shape == (1, 4, 8)
    with pytest.raises(ValueError, match="dominant"):
        VisionZipStyle().merge(features, weakest, attention)


def test_hiprune_keeps_anchors_then_neighbours_then_attention() -> None:
    attention = torch.zeros(1, L)
    attention[0, 5] = 1.0  # the anchor, at (1, 1); its 4-neighbours are 1, 4, 6, 9
    attention[0, 15] = 0.9  # second-highest attention, far from the anchor
    attention[0, 9] = 0.5  # a neighbour, ranked first among the buffers
    features = torch.randn(1, L, 4)
    method = HiPruneStyle(GRID, anchor_fraction=0.1)  # 1 anchor for budgets up to 14
    assert method(features, 5, attention).tolist() == [[1, 4, 5, 6, 9]]
    assert method(features, 6, attention).tolist() == [[1, 4, 5, 6, 9, 15]]  # then a register
    assert method(features, 2, attention).tolist() == [[5, 9]]  # buffers ranked by attention


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
    with pytest.raises(ValueError, match="grid 3x3"):
        UniformGrid((3, 3))(features, 4)


def test_registry_builds_by_name_and_lists_the_valid_names() -> None:
    assert isinstance(build_method("uniform", grid=GRID), UniformGrid)
    names = {"random", "uniform", "norm", "divprune", "visionzip", "hiprune", "selector"}
    assert set(METHODS) == names
    with pytest.raises(ValueError, match=", ".join(sorted(names))):
        build_method("fastv")
