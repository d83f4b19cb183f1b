"""Shapes, gradients and mask behaviour of the plain nn.Modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vtsel.models import (
    FeatureReconstructor,
    FeatureSelector,
    ImageReconstructor,
    SelectorConfig,
    topk_mask,
)
from vtsel.models.blocks import SelfAttention, sincos_position_embedding
from vtsel.models.coverage import coverage_prior, farthest_point_order

C, GRID, DIM = 24, (3, 5), 32


def selector(grid: tuple[int, int] = GRID, depth: int = 2, **kwargs: object) -> FeatureSelector:
    """A small selector; without the coverage prior unless asked, so the head alone decides."""
    options = {"coverage": 0.0, **kwargs}
    return FeatureSelector(SelectorConfig(C, grid, dim=DIM, depth=depth, num_heads=4, **options))


def test_selector_normalises_tokens_and_scores_each() -> None:
    sel = selector().eval()
    normed = sel.normalize(torch.randn(2, 15, C) * 50 + 3)  # (B, L, C)
    assert torch.allclose(normed.mean(-1), torch.zeros(2, 15), atol=1e-5)
    out = sel(normed)
    assert out.mask.shape == (2, 15) and out.keep_logits.shape == (2, 15)


def test_coverage_prior_spreads_the_first_picks_of_an_untrained_selector() -> None:
    """With a small head the prior decides: the first picks are the farthest-point order's."""
    torch.manual_seed(0)
    sel = selector((8, 8), depth=1, coverage=3.0).eval()
    picks = sel.scores(torch.randn(1, 64, C)).topk(4).indices[0]
    assert set(picks.tolist()) == set(farthest_point_order((8, 8))[:4].tolist())
    positions = torch.stack([picks // 8, picks % 8], -1).float()  # (4, 2) row, column
    assert torch.cdist(positions, positions).add(torch.eye(4) * 99).min() >= 3  # far apart
    flat = selector((8, 8), depth=1).eval()
    feats = torch.randn(1, 64, C)
    head = flat.head_logits(flat.normalize(feats))
    assert torch.equal(flat.scores(feats), head[..., 1] - head[..., 0])  # no prior added


def test_farthest_point_order_is_a_spread_permutation() -> None:
    order = farthest_point_order((4, 6))
    assert sorted(order.tolist()) == list(range(24))
    assert order[0].item() in (2 * 6 + 2, 1 * 6 + 2, 2 * 6 + 3, 1 * 6 + 3)  # a centre position
    prior = coverage_prior((4, 6))
    assert prior[order[0]] == 0 and torch.all(prior[order[1:]] < 0)
    assert torch.all(prior[order[:-1]] > prior[order[1:]])  # strictly by rank


@pytest.mark.parametrize(("grid", "image_size"), [((3, 5), 20), ((4, 4), 32), ((6, 6), 6)])
def test_reconstructor_shapes(grid: tuple[int, int], image_size: int) -> None:
    feats = torch.randn(2, grid[0] * grid[1], C)
    keep = (torch.rand(2, grid[0] * grid[1]) < 0.5).float()
    rec = FeatureReconstructor(C, grid, dim=DIM, depth=1, num_heads=4)
    img = ImageReconstructor(C, grid, image_size, dim=DIM, depth=1, num_heads=4, base_channels=16)
    assert rec(feats, keep).shape == feats.shape
    assert img(feats).shape == (2, 3, image_size, image_size)


def test_reconstructor_passes_kept_tokens_and_starts_from_interpolation() -> None:
    """Kept tokens come back unchanged; an untrained reconstructor (zero output layer) rebuilds
    a dropped token as the inverse-square-distance mean of the kept ones, itself excluded."""
    torch.manual_seed(0)
    rec = FeatureReconstructor(C, (1, 4), dim=DIM, depth=1, num_heads=4)
    feats = torch.randn(1, 4, C)
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0]])  # token 1 dropped; distances 1, 1, 2 from it
    out = rec(feats, keep)
    assert torch.equal(out[:, [0, 2, 3]], feats[:, [0, 2, 3]])
    expected = (feats[0, 0] + feats[0, 2] + feats[0, 3] / 4) / 2.25
    torch.testing.assert_close(out[0, 1], expected)
    alone = rec(feats, torch.ones(1, 4))  # nothing dropped: the input itself
    assert torch.equal(alone, feats)


@pytest.mark.parametrize("estimator", ["gumbel", "straight_through"])
def test_every_parameter_gets_a_gradient(estimator: str) -> None:
    torch.manual_seed(0)
    sel = selector(estimator=estimator).train()
    rec = FeatureReconstructor(C, GRID, dim=DIM, depth=1, num_heads=4)
    img = ImageReconstructor(C, GRID, 12, dim=DIM, depth=1, num_heads=4, base_channels=16)
    normed = sel.normalize(torch.randn(4, 15, C))
    out = sel(normed)
    torch.nn.init.normal_(rec.out.weight, std=0.02)  # it starts at 0, passing no gradient back
    feats_rec = rec(normed, out.mask)
    loss = F.mse_loss(feats_rec, normed) + img(feats_rec).square().mean() + out.mask.mean()
    loss.backward()
    for module in (sel, rec, img):
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_keep_gradient_of_a_dropped_token_stays_bounded() -> None:
    """A token's own position carries no interpolation weight, so the straight-through gradient
    of the loss in one token's keep value is of the loss's scale (an earlier draft weighted the
    token itself by distance 0 and gave gradients of 1e6)."""
    torch.manual_seed(0)
    rec = FeatureReconstructor(C, GRID, dim=DIM, depth=1, num_heads=4)
    normed = F.layer_norm(torch.randn(2, 15, C), (C,))
    keep = (torch.rand(2, 15) < 0.4).float().requires_grad_()
    F.mse_loss(rec(normed, keep), normed).backward()
    assert keep.grad.abs().max() < 10


def test_gumbel_mask_ratio_follows_keep_probability() -> None:
    torch.manual_seed(0)
    sel = selector(init_keep_ratio=0.3, tau=0.5).train()
    out = sel(sel.normalize(torch.randn(256, 15, C)))
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    # Hard Gumbel-Softmax keeps a token with probability sigmoid(keep logit), whatever tau.
    expected = out.keep_logits.sigmoid().mean().item()
    assert out.mask.mean().item() == pytest.approx(expected, abs=0.03)
    assert 0.15 < expected < 0.45  # and the head's bias started it near init_keep_ratio


def test_straight_through_mask_is_deterministic_argmax() -> None:
    sel = selector(estimator="straight_through", init_keep_ratio=0.7).train()
    normed = sel.normalize(torch.randn(2, 15, C))
    first, second = sel(normed).mask, sel(normed).mask
    assert torch.equal(first, second)
    assert torch.equal(first, (sel(normed).keep_logits > 0).float())


def test_eval_mask_thresholds_logits_without_noise() -> None:
    sel = selector(init_keep_ratio=0.8).eval()
    out = sel(sel.normalize(torch.randn(2, 15, C)))
    assert torch.equal(out.mask, (out.keep_logits > 0).float())


def test_topk_mask_keeps_exactly_the_highest() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 1.0, 2.0, 3.0]])
    assert topk_mask(scores, 2).tolist() == [[0, 1, 1, 0], [1, 0, 0, 1]]
    assert topk_mask(scores, 0).sum(-1).tolist() == [1, 1]  # at least one token


def test_sdpa_attention_matches_explicit_softmax_attention() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 2)
    x = torch.randn(3, 7, 16)
    q, k, v = attn.qkv(x).reshape(3, 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-1, -2) / 8**0.5).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(3, 7, 16))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_position_embedding_tells_every_token_apart() -> None:
    pos = sincos_position_embedding((4, 6), 32)
    assert pos.shape == (24, 32)
    assert torch.cdist(pos, pos).add(torch.eye(24)).min() > 1e-3
