"""The training-free baselines pinned to their definitions on inputs small enough to check by
hand: what test_methods.py leaves open (random's exact derivation, uniform's fill, spread's
order, the norm that ``norm`` ranks by, DivPrune's ties and scale blindness) and PACT's kept
set and merged values. VisionZip and HiPrune are pinned in test_tower_pins.py.

The 3x3 grid, positions row by row::

    0 1 2
    3 4 5
    6 7 8
"""

from __future__ import annotations

import zlib

import torch

from vtsel.methods import PACT, DivPrune, FeatureNormTopK, RandomSelection, SpreadOrder, UniformGrid
from vtsel.methods.divprune import greedy_max_min_order

CROP = torch.arange(18, dtype=torch.float32).view(1, 9, 2)  # one crop of the 3x3 grid


def test_random_keeps_the_top_of_uniform_scores_seeded_by_seed_and_crop_crcs() -> None:
    # The documented derivation: the CRC-32 of the seed's text, continued over the crop's
    # float32 bytes, seeds a CPU generator; its L uniform scores' top ``keep`` are the subset.
    crop_crc = zlib.crc32(CROP.numpy(), zlib.crc32(b"0"))
    scores = torch.rand(9, generator=torch.Generator().manual_seed(crop_crc))
    derived = scores.topk(3).indices.sort().values
    assert RandomSelection(seed=0)(CROP, 3).tolist() == [derived.tolist()]
    # Pinned literally, so that a change of hash, byte layout or generator shows here: it
    # would change every random subset of a resumed evaluation.
    assert derived.tolist() == [0, 3, 5]
    assert RandomSelection(seed=1)(CROP, 3).tolist() == [[2, 5, 6]]


def test_uniform_places_the_token_a_lattice_cannot_hold_in_the_middle_of_the_rest() -> None:
    # keep 5 on 4x4: the 2x2 lattice 5, 7, 13, 15 (rows and columns 1 and 3), then 1 of the 12
    # other positions [0, 1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 14], the centre of one slice of 12:
    # rest[floor(0.5 * 12)] = rest[6] = 8.
    assert UniformGrid((4, 4)).positions(5).tolist() == [5, 7, 8, 13, 15]


def test_uniform_keeps_the_middle_row_when_a_row_and_a_column_tie() -> None:
    # keep 3 on 3x3: a 1x3 row and a 3x1 column hold 3 points equally spaced by the same
    # measure (|1/3 - 3/3|); the first shape tried, one row, wins; its row is the middle one.
    assert UniformGrid((3, 3)).positions(3).tolist() == [3, 4, 5]


def test_spread_starts_at_the_centre_then_takes_corners_then_edges() -> None:
    # 3x3: the centre 4 first; every corner is sqrt(2) from it, farther than an edge (1), ties
    # to the lowest index: 0, then 2, 6, 8 (each still sqrt(2) from the centre); the edges
    # last, all at 1: 1, 3, 5, 7.
    spread = SpreadOrder((3, 3))
    assert spread(CROP, 1).tolist() == [[4]]
    assert spread(CROP, 5).tolist() == [[0, 2, 4, 6, 8]]
    assert spread(CROP, 6).tolist() == [[0, 1, 2, 4, 6, 8]]


def test_norm_ranks_by_the_euclidean_norm_not_the_sum_or_the_largest_entry() -> None:
    # L1 / L2 / max: (2.5, 2.5, 2.5) 7.5 / 4.33 / 2.5; (3.5, 3.5, 0) 7 / 4.95 / 3.5;
    # (4.5, 0, 0) 4.5 / 4.5 / 4.5. L2 keeps token 1, then 2; L1 would keep 0, max 2 first.
    tokens = torch.tensor([[[2.5, 2.5, 2.5], [3.5, 3.5, 0.0], [4.5, 0.0, 0.0]]])
    assert FeatureNormTopK()(tokens, 1).tolist() == [[1]]
    assert FeatureNormTopK()(tokens, 2).tolist() == [[1, 2]]


def test_divprune_breaks_exact_ties_to_the_lowest_index() -> None:
    # East, north, west, south: every nearest other is 90 deg away (distance 1), so the first
    # pick is 0; west (2) is then farthest (distance 2); north and south tie at 1 -> 1, then 3.
    compass = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])
    assert greedy_max_min_order(compass, 4).tolist() == [[0, 2, 1, 3]]
    assert DivPrune()(compass, 2).tolist() == [[0, 2]]


def test_divprune_ignores_token_norms() -> None:
    # Cosine distance: scaling tokens changes nothing, though Euclidean distances would.
    compass = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])
    scaled = compass * torch.tensor([1.0, 10.0, 0.1, 5.0])[None, :, None]
    assert greedy_max_min_order(scaled, 4).tolist() == [[0, 2, 1, 3]]


def pact_crop() -> torch.Tensor:
    """One crop (1, 9, 3) on the 3x3 grid, built so that PACT's answer can be read off.

    Unpruned (norms 4, 4, 9.7, 3): 1 = a = 4·(1, 0), 3 = b = 4·(0.8, 0.6), 6 = c =
    3·(0.6, −0.8), 4 = l = (−9.7, 0). Pruned (norms 1, 1, 1, 1, 0.5): 2 = (0.6, 0.8) and
    7 = (0.6, −0.8) (0.4 from a), 0 = +z and 8 = −z (1 from every unpruned token), 5 =
    (−0.5, 0) (0 from l). The tokens sum to 0, so EUTI's mean query is 0, its softmax is
    uniform, and it keeps the int(9 · 0.55) = 4 largest norms.

    Cosine distances of the unpruned: a–b 0.2, a–c 0.4, b–c 1, c–l 1.6, b–l 1.8, a–l 2.
    Densities Σ exp(−(d/2)²): a 3.319, c 3.267, b 3.214, l 2.340, so DBDPC visits a, c, b, l.
    """
    a, b, c, loner = [4.0, 0, 0], [3.2, 2.4, 0], [1.8, -2.4, 0], [-9.7, 0, 0]
    up, down, pruned_2, pruned_7 = [0, 0, 1.0], [0, 0, -1.0], [0.6, 0.8, 0], [0.6, -0.8, 0]
    tokens = [up, a, pruned_2, b, loner, [-0.5, 0, 0], c, pruned_7, down]
    return torch.tensor([tokens])


def test_pact_keeps_two_clusters_at_the_smallest_cutoff_and_retrieves_within_its_bound() -> None:
    # d_c: at 0.2, a, c (0.4 from a) and l are centres, 3 clusters; at 0.4, c and b fall
    # within d_c of a: centres a (1) and l (4). Clusters: a + b + c, and l. Retrieval within
    # 1.5 · 0.4 = 0.6: tokens 2 and 7 (0.4 from a) join a, 5 (0 from l) joins l; 0 and 8
    # (1 away) are dropped. Means: (a + b + c + (0.6, 0.8) + (0.6, -0.8)) / 5 = (10.2, 0) / 5
    # and (l + (-0.5, 0)) / 2 = (-10.2, 0) / 2.
    crop, method = pact_crop(), PACT()
    kept_idx = method(crop, 2)
    assert kept_idx.tolist() == [[1, 4]]
    torch.testing.assert_close(method.plan(crop, 2).cutoff, torch.tensor([0.4]))
    expected = torch.tensor([[[2.04, 0.0, 0.0], [-5.1, 0.0, 0.0]]])
    torch.testing.assert_close(method.merge(crop, kept_idx), expected)


def test_pact_tighter_cutoff_keeps_three_clusters_and_retrieves_less() -> None:
    # d_c = 0.2: centres a (1), l (4), c (6); b joins a (0.2), the rest as before. Retrieval
    # within 0.3: 7 = (0.6, -0.8) is c's direction (0 away) and joins c; 2 is 0.4 from a
    # and 1.28 from c, so it is dropped now; 5 joins l. Means: (a + b) / 2 = (3.6, 1.2),
    # (l + (-0.5, 0)) / 2, (c + (0.6, -0.8)) / 2 = (1.2, -1.6).
    crop, method = pact_crop(), PACT()
    kept_idx = method(crop, 3)
    assert kept_idx.tolist() == [[1, 4, 6]]
    torch.testing.assert_close(method.plan(crop, 3).cutoff, torch.tensor([0.2]))
    expected = torch.tensor([[[3.6, 1.2, 0.0], [-5.1, 0.0, 0.0], [1.2, -1.6, 0.0]]])
    torch.testing.assert_close(method.merge(crop, kept_idx), expected)


def test_pact_at_the_pruning_share_keeps_the_unpruned_tokens_unmerged() -> None:
    # keep 4 = the 4 tokens EUTI keeps: every one is a centre (d_c = -1), nothing is merged.
    crop, method = pact_crop(), PACT()
    kept_idx = method(crop, 4)
    assert kept_idx.tolist() == [[1, 3, 4, 6]]
    torch.testing.assert_close(method.merge(crop, kept_idx), crop[:, [1, 3, 4, 6]])
