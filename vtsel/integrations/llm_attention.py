"""The last prompt token's attention in an LLM decoder layer, recomputed from its q/k weights.

FastV and PyramidDrop rank visual tokens by the attention the last token pays them. SDPA and
FlashAttention never materialise that map, and ``output_attentions`` forces the eager kernel on
every layer; one query row costs a key projection. The row is computed as Llama-family layers
(Llama, Mistral, Qwen2/2.5/3) do: pre-norm, q/k projections (per-head ``q_norm``/``k_norm``
where the layer has them), rotary embedding, grouped-query heads shared, scaled softmax in
float32, then averaged over heads.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half


def check_decoder_layer(layer: nn.Module, index: int) -> None:
    """Refuse a decoder layer this module cannot read, naming what it lacks."""
    attn = getattr(layer, "self_attn", None)
    missing = [name for name, owner in (("input_layernorm", layer), ("self_attn", layer),
                                        ("q_proj", attn), ("k_proj", attn), ("head_dim", attn))
               if owner is None or not hasattr(owner, name)]
    if missing:
        raise ValueError(
            f"LLM layer {index} ({type(layer).__name__}) has no {', '.join(missing)}: FastV and "
            f"PyramidDrop read Llama-family decoder layers (Llama, Mistral, Qwen2, Qwen3)"
        )


def last_token_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Head-averaged attention (B, T) of each row's last token over its T keys at ``layer``.

    Args:
        layer: A decoder layer (``check_decoder_layer``).
        hidden: The layer's input hidden states (B, T, C).
        position_embeddings: The rotary (cos, sin), each (B or 1, T, head_dim), as the layer
            receives them.
        key_valid: (B, T) bool, False at padding (never attended).
    """
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)  # (B, T, C)
    query = _heads(attn.q_proj(normed[:, -1:]), attn.head_dim, getattr(attn, "q_norm", None))
    key = _heads(attn.k_proj(normed), attn.head_dim, getattr(attn, "k_norm", None))
    cos, sin = position_embeddings
    query = _rotate(query, cos[:, -1:], sin[:, -1:])  # (B, h, 1, d)
    key = _rotate(key, cos, sin)  # (B, h_kv, T, d)
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # (B, h, T, d)
    logits = (query.float() @ key.float().transpose(-1, -2)) * attn.scaling  # (B, h, 1, T)
    logits = logits.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]  # (B, T)


def _heads(projected: torch.Tensor, head_dim: int, norm: nn.Module | None) -> torch.Tensor:
    """(B, T, heads * d) -> (B, heads, T, d), with the per-head norm if the layer has one."""
    batch, length, _ = projected.shape
    split = projected.view(batch, length, -1, head_dim)
    return (split if norm is None else norm(split)).transpose(1, 2)


def _rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (B, h, T, d) by cos/sin (B, T, d), as Llama applies it."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return states * cos + rotate_half(states) * sin
