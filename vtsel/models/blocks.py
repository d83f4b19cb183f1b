"""Building blocks shared by the selector and both reconstructors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def normalize_tokens(feats: torch.Tensor) -> torch.Tensor:
    """Per-token standardisation (LayerNorm without affine) of raw encoder features (B, L, C).

    Encoders such as CLIP carry a few channels hundreds of times larger than the rest, which
    would otherwise dominate both the selector's input and the reconstruction loss; the
    normalised tokens are what selector and reconstructors see and what reconstruction targets.
    """
    return F.layer_norm(feats, (feats.shape[-1],))


def sincos_position_embedding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding for an (H, W) token grid, shape (H*W, dim).

    Fixed rather than learned so that a model trained at one grid still knows where a token
    sits on another (InternVL tiles and LLaVA-NeXT crops share a grid, but users try others).
    Half the channels encode the row, half the column.
    """
    if dim % 4:
        raise ValueError(f"position embedding width must be divisible by 4, got {dim}")
    h, w = grid
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))  # (D/4,)
    rows = torch.arange(h, dtype=torch.float32)[:, None] * freqs  # (H, D/4)
    cols = torch.arange(w, dtype=torch.float32)[:, None] * freqs  # (W, D/4)
    row_emb = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(h, w, dim // 2)
    col_emb = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(h, w, dim // 2)
    return torch.cat([row_emb, col_emb], dim=2).reshape(h * w, dim)  # (L, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``, so PyTorch picks the
    flash / memory-efficient kernel on GPU and the math kernel on CPU."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_width = width // self.num_heads
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, head_width)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, D/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, D/heads)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenTransformer(nn.Module):
    """Project tokens of width ``in_dim`` to ``dim``, add grid positions, run ``depth`` layers.

    The common trunk of the selector and both reconstructors: each of them differs only in the
    head it puts on top.
    """

    def __init__(
        self, in_dim: int, dim: int, depth: int, num_heads: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        self.in_proj = nn.Linear(in_dim, dim)
        self.register_buffer("pos", sincos_position_embedding(grid, dim), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, in_dim) -> (B, L, D); ``offset`` (B, L, D) is added to the projected tokens
        with the positions (the reconstructor marks dropped tokens with it)."""
        x = self.in_proj(tokens) + self.pos  # (B, L, D)
        if offset is not None:
            x = x + offset
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, L, D)


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights and zero biases, the usual ViT initialisation."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def num_upsamplings(grid_side: int, image_size: int) -> int:
    """How many 2x upsamplings take a token grid side to at least ``image_size`` pixels."""
    return max(0, math.ceil(math.log2(image_size / grid_side)))
