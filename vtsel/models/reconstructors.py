"""The two reconstructors (paper §4.2): all tokens from the selection, then the image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vtsel.models.blocks import TokenTransformer, num_upsamplings


class FeatureReconstructor(nn.Module):
    """Rebuild every token (B, L, C) from the selection (B, L, C), masked ones included.

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
        self.out = nn.Linear(dim, feature_dim)

    def forward(self, selected: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(selected))  # (B, L, C)


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
