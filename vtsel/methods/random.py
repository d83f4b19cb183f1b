"""Uniform random selection: the floor every other method has to beat.

The paper (§5) evaluates random selection at matched ratios on every task, to show how much a
task suffers from pruning at all; this is that baseline. No source paper beyond that.
"""

from __future__ import annotations

import zlib

import torch

from vtsel.methods.base import SelectionMethod, sorted_topk


class RandomSelection(SelectionMethod):
    """Keep a uniformly random subset of ``keep`` tokens per crop.

    The top ``keep`` of i.i.d. uniform scores is a uniform random subset. Each crop draws its
    scores from its own CPU generator, seeded by ``seed`` and a CRC-32 of the crop's features
    (as float32), so its subset depends on nothing but the seed and its content: the same crop
    keeps the same tokens alone or in any batch, at any row, on any device, in every run, so a
    resumed evaluation or one with another batch size repeats the numbers of an uninterrupted
    one. Different crops, and identical crops under different seeds, get unrelated subsets.

    Args:
        seed: Seed of the generators.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _select(
        self, features: torch.Tensor, keep: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        num_tokens = features.shape[1]
        # Hashing values, not memory: one layout and dtype whatever the caller's tensor.
        crops = features.detach().to("cpu", torch.float32).contiguous()  # (B, L, C)
        seed_crc = zlib.crc32(str(self.seed).encode())
        random_scores = torch.stack([
            torch.rand(num_tokens, generator=self._generator(seed_crc, crop)) for crop in crops
        ])  # (B, L)
        return sorted_topk(random_scores, keep).to(features.device)

    @staticmethod
    def _generator(seed_crc: int, crop: torch.Tensor) -> torch.Generator:
        """A CPU generator seeded by the CRC-32 of the seed's text followed by the crop's bytes."""
        crop_crc = zlib.crc32(crop.numpy(), seed_crc)  # (L, C) float32, contiguous
        return torch.Generator(device="cpu").manual_seed(crop_crc)
