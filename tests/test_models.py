"""Shapes, gradients and mask behaviour of the plain nn.Modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vtsel.models import FeatureReconstructor, FeatureSelector, ImageReconstructor, topk_mask
from vtsel.models.blocks import SelfAttention, sincos_position_embedding

C, GRID, DIM = 24, (3, 5), 32


def selector(**kwargs: object) -> FeatureSelector:
    return FeatureSelector(C, GRID, dim=DIM, depth=2, num_heads=4, **kwargs)


def test_selector_shapes_and_mask_embedding() -> None:
    sel = selector().eval()
    normed = sel.normalize(torch.randn(2, 15, C) * 50 + 3)  # (B, L, C)
    assert torch.allclose(normed.mean(-1), torch.zeros(2, 15), atol=1e-5)
    mask = torch.zeros(2, 15)
    mask[:, :4] = 1
    out = sel(normed, mask)
    assert out.selected.shape == (2, 15, C) and out.keep_logits.shape == (2, 15)
    assert torch.equal(out.selected[:, :4], normed[:, :4])
    assert torch.equal(out.selected[:, 4:], sel.mask_embedding.expand(2, 11, C))


@pytest.mark.parametrize(("grid", "image_size"), [((3, 5), 20), ((4, 4), 32), ((6, 6), 6)])
def test_reconstructor_shapes(grid: tuple[int, int], image_size: int) -> None:
    feats = torch.randn(2, grid[0] * grid[1], C)
    rec = FeatureReconstructor(C, grid, dim=DIM, depth=1, num_heads=4)
    img = ImageReconstructor(C, grid, image_size, dim=DIM, depth=1, num_heads=4, base_channels=16)
    assert rec(feats).shape == feats.shape
    assert img(feats).shape == (2, 3, image_size, image_size)


@pytest.mark.parametrize("estimator", ["gumbel", "straight_through"])
def test_every_parameter_gets_a_gradient(estimator: str) -> None:
    torch.manual_seed(0)
    sel = selector(estimator=estimator).train()
    rec = FeatureReconstructor(C, GRID, dim=DIM, depth=1, num_heads=4)
    img = ImageReconstructor(C, GRID, 12, dim=DIM, depth=1, num_heads=4, base_channels=16)
    normed = sel.normalize(torch.randn(4, 15, C))
    out = sel(normed)
    feats_rec = rec(out.selected)
    loss = F.mse_loss(feats_rec, normed) + img(feats_rec).square().mean() + out.mask.mean()
    loss.backward()
    for module in (sel, rec, img):
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


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
