"""Attention maps recomputed from a transformer layer's own query and key projections.

Fused attention kernels (SDPA, FlashAttention) never materialise the softmax map, and asking a
Hugging Face tower for its maps forces the eager kernel on every layer. The maps the
attention-ranked methods read are therefore rebuilt from the hidden state entering a layer's
attention (after its pre-norm), at the cost of that layer's q/k projections. Extraction
(``vtsel.extract.encoders``) and the VLM integrations (``vtsel.integrations.attention``) both
read them through this module, so the shards store exactly what the integrations compute.
"""

from __future__ import annotations

import torch
from torch import nn


def project_qk(
    attn: nn.Module, normed: torch.Tensor, queries: slice = slice(None)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries (N, q, D) of the ``queries`` rows and keys (N, T, D) of a transformers attention
    module for its input ``normed`` (N, T, C): ``q_proj``/``k_proj``, then ``q_norm``/``k_norm``
    on the projected width where the module has them (InternViT)."""
    query = getattr(attn, "q_norm", nn.Identity())(attn.q_proj(normed[:, queries]))
    key = getattr(attn, "k_norm", nn.Identity())(attn.k_proj(normed))
    return query, key


def attention_probs(query: torch.Tensor, key: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Softmax attention (N, heads, q, T) of projected queries (N, q, D) over keys (N, T, D),
    in float32, logits scaled by head_dim^-0.5 as every such tower does."""
    query, key = _split_heads(query, num_heads), _split_heads(key, num_heads)
    return (query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(dim=-1)


def patch_received_attention(
    query: torch.Tensor, key: torch.Tensor, num_heads: int, num_prefix: int
) -> torch.Tensor:
    """Attention each patch receives (N, T - num_prefix) from the projected queries and keys
    (N, T, D) of all T tokens: the head-averaged map's column mean over all queries (prefix
    queries included), prefix columns (CLS, registers) dropped; HiPrune's "global attention",
    not renormalised.

    One head's (N, T, T) map at a time: all of CLIP-L's 16 at once would hold 21 MB per crop.
    """
    query, key = _split_heads(query, num_heads), _split_heads(key, num_heads)  # (N, h, T, d)
    received = torch.zeros(key.shape[0], key.shape[2], device=key.device)  # (N, T)
    for head in range(num_heads):
        logits = query[:, head] @ key[:, head].transpose(-1, -2) * query.shape[-1] ** -0.5
        received += logits.softmax(dim=-1).mean(dim=1)  # (N, T) column means of this head
    return (received / num_heads)[:, num_prefix:]


def _split_heads(projected: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, T, D) -> (N, heads, T, D / heads), float32."""
    batch, length, _ = projected.shape
    return projected.float().view(batch, length, num_heads, -1).transpose(1, 2)
