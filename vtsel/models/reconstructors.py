"""The two reconstructors (paper §4.2): all tokens from the selection, then the image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vtsel.models.blocks import TokenTransformer, num_upsamplings


class FeatureReconstructor(nn.Module):
    """Rebuild every token (B, L, C) from the kept ones; kept tokens pass through unchanged.

    Each dropped token starts from an inverse-distance interpolation of the kept tokens (weight
    distance^-power over the grid, the token itself excluded, power learned from 2), carries
    the shared learned embedding ``mask_embedding`` (E_masked, in the model width), and a
    transformer over all tokens adds a correction (its output layer starts at zero, so an
    untrained reconstructor already interpolates). Kept tokens are returned as they came in:
    the reconstruction is of what was dropped. Trained from scratch on a few hundred crops, a
    plain transformer that sees dropped tokens only as E_masked learned little more than the
    mean token of real (DINOv2) features; the interpolation start is what made it use the kept
    neighbours (see README, "Choices").

    ``keep`` may carry a straight-through gradient: the interpolation weights and the mixing
    of kept and rebuilt tokens are differentiable in it.

    Args:
        feature_dim: Width C of the encoder's tokens.
        grid_size: (H, W) token grid.
        dim: Transformer width.
        depth: Transformer layers (paper: 4).
        num_heads: Attention heads.
    """

    def __init__(
        self,
        feature_dim: int,
        grid_size: tuple[int, int],
        dim: int = 512,
        depth: int = 4,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        self.trunk = TokenTransformer(feature_dim, dim, depth, num_heads, tuple(grid_size))
        self.mask_embedding = nn.Parameter(torch.zeros(dim))  # E_masked, shared by all
        self.power = nn.Parameter(torch.tensor(2.0))  # of the interpolation weights
        log_distance, others = _grid_distances(tuple(grid_size))
        self.register_buffer("log_distance", log_distance, persistent=False)  # (L, L)
        self.register_buffer("others", others, persistent=False)  # (L, L) 0 on the diagonal
        self.out = nn.Linear(dim, feature_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def interpolate(
        self, normed: torch.Tensor, keep: torch.Tensor, power: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each token (B, L, C) as the mean of the *other* kept tokens weighted by grid
        distance^-power (the learned power unless one is given)."""
        power = self.power if power is None else power
        kernel = (torch.exp(-power * self.log_distance) * self.others).to(normed.dtype)
        weights = keep[:, None, :].to(normed.dtype) * kernel  # (B, L, L)
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        return weights @ normed  # (B, L, C)

    def forward(self, normed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, L, C) and a keep mask (B, L) -> all tokens (B, L, C)."""
        kept = keep.unsqueeze(-1).to(normed.dtype)  # (B, L, 1)
        interpolated = self.interpolate(normed, keep)  # (B, L, C)
        start = kept * normed + (1 - kept) * interpolated
        correction = self.out(self.trunk(start, offset=(1 - kept) * self.mask_embedding))
        return kept * normed + (1 - kept) * (interpolated + correction)  # (B, L, C)


def _grid_distances(grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """log grid distance between every two positions (L, L) (0 on the diagonal) and the
    (L, L) float mask of pairs of different positions."""
    height, width = grid
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=-1)  # (L, 2)
    distances = torch.cdist(positions, positions)  # (L, L), >= 1 off the diagonal
    others = 1.0 - torch.eye(height * width)
    return distances.clamp(min=1.0).log(), others


class ResidualConvBlock(nn.Module):
    """Two 3x3 convolutions with a skip; GroupNorm so that batch size 1 still trains."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = min(8, channels)
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ImageReconstructor(nn.Module):
    """Rebuild the crop (B, 3, S, S) from reconstructed tokens (B, L, C).

    Transformer layers, then the token grid as a feature map, doubled in size by nearest
    upsampling + 3x3 conv + residual block until it reaches ``image_size`` (a final bilinear
    resize covers sizes that are not grid * 2^n, e.g. 24 -> 336).

    Args:
        feature_dim: Width C of the encoder's tokens.
        grid_size: (H, W) token grid.
        image_size: Side S of the target image.
        dim: Transformer width.
        depth: Transformer layers (paper: 2).
        num_heads: Attention heads.
        base_channels: Channels of the first upsampling stage; halved at each later stage, never
            below 16.
    """

    def __init__(
        self,
        feature_dim: int,
        grid_size: tuple[int, int],
        image_size: int,
        dim: int = 512,
        depth: int = 2,
        num_heads: int = 8,
        base_channels: int = 256,
    ) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.image_size = image_size
        self.trunk = TokenTransformer(feature_dim, dim, depth, num_heads, self.grid_size)
        stages: list[nn.Module] = [nn.Conv2d(dim, base_channels, 1)]
        channels = base_channels
        for _ in range(num_upsamplings(min(self.grid_size), image_size)):
            out_channels = max(16, channels // 2)
            stages += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, out_channels, 3, padding=1),
                ResidualConvBlock(out_channels),
            ]
            channels = out_channels
        stages.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.decoder = nn.Sequential(*stages)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h, w = self.grid_size
        x = self.trunk(feats)  # (B, L, D)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (B, D, H, W)
        image = self.decoder(x)  # (B, 3, H*2^n, W*2^n)
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.interpolate(
                image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return image  # (B, 3, S, S)
