"""The attention maps attention-ranked baselines read, from the tower layers' own query and key.

Hugging Face towers only return attention maps under the eager kernel, and asking for them
defeats SDPA/FlashAttention for the whole tower. Recomputing the maps a method needs from the
hidden state entering a layer costs that layer's q/k projections, whatever kernel the tower
runs. Each method gets what its source uses (see ``vtsel.methods``):

- VisionZip: the CLS query's attention over the patches in the feature layer, heads averaged
  (B, L); one query row, so the cost is a key projection. Its contextual merge measures
  similarity on that layer's keys averaged over heads (``merge_metric``).
- HiPrune: the attention each patch *receives* (head-averaged map, mean over all queries) in
  an object-centric middle layer and in the feature layer, stacked (B, 2, L).

The maps themselves come from ``vtsel.attention_maps``, which extraction uses too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vtsel.attention_maps import attention_probs, patch_received_attention, project_qk
from vtsel.methods import HiPruneStyle, SelectionMethod, VisionZipStyle
from vtsel.methods.hiprune import object_layer


def feature_layer_index(layer: int, num_layers: int) -> int:
    """Index into ``hidden_states`` (num_layers + 1 entries, 0 = embeddings) of ``layer``."""
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(f"vision_feature_layer {layer} is outside a {num_layers}-layer tower")
    return layer % (num_layers + 1)


def encoder_layers(tower: nn.Module) -> nn.ModuleList:
    """The transformer layers of a Hugging Face vision tower (CLIP/SigLIP or InternViT)."""
    for path in ("vision_model.encoder.layers", "encoder.layers", "encoder.layer"):
        module: Any = tower
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the transformer layers of a {type(tower).__name__}")


def attention_parts(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(pre-attention norm, attention module) of a tower layer, or a clear error."""
    norm = getattr(layer, "layer_norm1", None) or getattr(layer, "layernorm_before", None)
    attn = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
    if norm is None or attn is None or not hasattr(attn, "q_proj"):
        raise ValueError(
            f"cannot compute attention for a {type(layer).__name__}: it has no pre-norm and "
            f"q/k projections under a known name (layer_norm1/self_attn or "
            f"layernorm_before/attention); use a method that does not need attention"
        )
    return norm, attn


def attention_layers(method: SelectionMethod, feature_index: int, num_layers: int) -> list[int]:
    """Encoder layers (0-based) whose attention ``method`` reads, given the features come from
    ``hidden_states[feature_index]`` (the output of layer ``feature_index - 1``)."""
    feature_layer = feature_index - 1
    if feature_layer < 0:
        raise ValueError("the vision feature layer is the embedding output: it has no attention")
    if isinstance(method, HiPruneStyle):  # 1-based layer k is 0-based k - 1
        return [object_layer(num_layers, feature_layer + 1) - 1, feature_layer]
    return [feature_layer]


def method_attention(
    method: SelectionMethod, layers: nn.ModuleList, hidden_states: tuple[torch.Tensor, ...],
    feature_index: int,
) -> torch.Tensor:
    """The attention ``method`` ranks by: (N, L), or (N, 2, L) for HiPrune (module doc).

    ``hidden_states[i]`` must hold the input of every layer ``attention_layers`` names.
    """
    wanted = attention_layers(method, feature_index, len(layers))
    if isinstance(method, HiPruneStyle):
        return torch.stack([received_attention(layers[i], hidden_states[i]) for i in wanted], 1)
    return cls_attention(layers[wanted[0]], hidden_states[wanted[0]])


def cls_attention(layer: nn.Module, layer_input: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of the CLS query over the patches, (N, 1 + L, C) -> (N, L)."""
    weights = _attention_weights(layer, layer_input, queries=slice(0, 1))  # (N, h, 1, T)
    return weights.mean(dim=1)[:, 0, 1:]  # heads averaged, CLS column dropped


def merge_metric(
    method: SelectionMethod, layers: nn.ModuleList, hidden_states: tuple[torch.Tensor, ...],
    feature_index: int,
) -> torch.Tensor | None:
    """What ``method`` merges by similarity on, if it has such a source: VisionZip's keys of
    the feature layer averaged over heads, CLS dropped (N, L, head_dim); None for the others."""
    if not isinstance(method, VisionZipStyle):
        return None
    (layer,) = attention_layers(method, feature_index, len(layers))
    norm, attn = attention_parts(layers[layer])
    _, key = project_qk(attn, norm(hidden_states[layer]), slice(0, 1))  # (N, T, D)
    batch, length, width = key.shape
    return key.view(batch, length, attn.num_heads, width // attn.num_heads).mean(dim=2)[:, 1:]


def received_attention(layer: nn.Module, layer_input: torch.Tensor) -> torch.Tensor:
    """Attention each patch receives, averaged over heads and all queries: (N, 1+L, C) -> (N, L)."""
    norm, attn = attention_parts(layer)
    query, key = project_qk(attn, norm(layer_input))  # (N, T, D) each
    return patch_received_attention(query, key, attn.num_heads, num_prefix=1)


def _attention_weights(layer: nn.Module, layer_input: torch.Tensor, queries: slice) -> torch.Tensor:
    """Softmax attention (N, heads, q, T) of the ``queries`` rows in ``layer`` (CLIP-style
    ``layer_norm1`` + ``self_attn``, or InternViT ``layernorm_before`` + ``attention``),
    recomputed from the hidden state entering the layer."""
    norm, attn = attention_parts(layer)
    return attention_probs(*project_qk(attn, norm(layer_input), queries), attn.num_heads)
