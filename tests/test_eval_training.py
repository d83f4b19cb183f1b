"""Training a selector that an independent judge scores well: the decoupled reconstructors
learn from drawn masks only, and the top-k term trains the ranking at every budget."""

from __future__ import annotations

import torch

from vtsel.train.masking import sampled_topk_mask
from vtsel.train.selector_module import SelectorModule

KEEP_RANGE = (0.05, 0.6)


def tiny_module(masking: str, topk_weight: float = 0.0) -> SelectorModule:
    return SelectorModule(
        feature_dim=32, grid_size=(4, 4), image_size=32, dim=32, num_heads=2, image_channels=16,
        masking=masking, keep_range=KEEP_RANGE, topk_weight=topk_weight,
    )


def tiny_batch() -> dict[str, torch.Tensor]:
    return {"feats": torch.randn(4, 16, 32), "image": torch.rand(4, 3, 32, 32)}


def reconstructor_grads(module: SelectorModule) -> list[torch.Tensor]:
    reconstructors = [module.feature_reconstructor, module.image_reconstructor]
    return [w.grad.clone() for r in reconstructors for w in r.parameters()]


def test_decoupled_reconstructors_learn_from_random_masks_only_and_the_selector_through_them(
) -> None:
    torch.manual_seed(0)
    module = tiny_module("decoupled")
    batch = tiny_batch()
    normed = module.normalize(batch["feats"])  # (B, L, C)
    terms, keep_logits = module._objective(batch, normed, torch.Generator().manual_seed(1))
    assert keep_logits is not None and terms.reconstructor_loss is not None
    terms.total.backward()
    assert module.selector.head.weight.grad.abs().sum() > 0  # the selector learns
    from_everything = reconstructor_grads(module)
    module.zero_grad()
    module._reconstructor_loss(batch, normed, torch.Generator().manual_seed(1)).backward()
    from_random_masks = reconstructor_grads(module)
    for full, random_only in zip(from_everything, from_random_masks, strict=True):
        torch.testing.assert_close(full, random_only)
    assert sum(g.abs().sum() for g in from_random_masks) > 0


def test_joint_training_lets_the_selector_masks_train_the_reconstructors() -> None:
    torch.manual_seed(0)
    module = tiny_module("selector")
    batch = tiny_batch()
    terms, _ = module._objective(batch, module.normalize(batch["feats"]))
    assert terms.reconstructor_loss is None
    terms.total.backward()
    assert module.feature_reconstructor.out.weight.grad.abs().sum() > 0


def test_a_topk_term_trains_the_ranking_without_moving_the_keep_share() -> None:
    torch.manual_seed(0)
    keep_logits = torch.linspace(-3, 3, 20).repeat(2000, 1).requires_grad_()  # (B, L)
    counts = torch.tensor([1, 5, 20, 12]).repeat(500)
    mask = sampled_topk_mask(keep_logits, counts, tau=2.0)
    assert torch.equal(mask.detach().sum(-1), counts.float())
    kept_share = mask.detach()[counts == 5].mean(0)  # (L,) how often each token is in a top 5
    assert kept_share[-1] > 0.5 and kept_share[0] < 0.05
    assert (kept_share[1:] >= kept_share[:-1] - 0.03).all()  # higher logit, kept more often
    # any loss: the gradient reorders tokens within a row, never shifts the row as a whole
    (mask * torch.randn(20)).sum().backward()
    torch.testing.assert_close(keep_logits.grad.sum(-1), torch.zeros(2000), atol=1e-4, rtol=0)
    assert keep_logits.grad.abs().sum() > 0


def test_the_topk_term_joins_the_training_loss_only() -> None:
    torch.manual_seed(0)
    module = tiny_module("selector", topk_weight=0.5)
    batch = tiny_batch()
    normed = module.normalize(batch["feats"])
    terms, _ = module._objective(batch, normed)
    assert terms.topk_loss is not None and terms.topk_loss > 0
    eq8 = terms.feature + terms.image + terms.regularizer
    torch.testing.assert_close(terms.total, eq8 + 0.5 * terms.topk_loss)
    module.eval()
    assert module._objective(batch, normed)[0].topk_loss is None  # validation: eq. 8 alone
