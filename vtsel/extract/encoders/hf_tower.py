"""A VLM's own vision tower from a transformers checkpoint, read at the VLM's feature layer.

The VLM's projector reads one layer's hidden states of its fine-tuned tower (transformers'
``vision_feature_layer``; index 0 is the embeddings, k >= 1 the output of block k, negative
counts from the end). Blocks after that layer are dropped, and the layer's output is taken with
a hook, so the tokens are the ones the VLM computes whatever the tower's final norms do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vtsel.extract.encoders.base import (
    EncodedBatch,
    VisionEncoder,
    as_pair,
    cls_patch_attention,
    recorded_inputs,
    recorded_outputs,
)
from vtsel.extract.encoders.hf_checkpoint import (
    import_transformers,
    load_config,
    load_tower_weights,
    read_processor,
)


class HFVisionTower(VisionEncoder):
    """Base of the transformers towers: loading, layer pruning, CLS attention.

    Subclasses name the checkpoint family and where the tower keeps its blocks, and may reshape
    the tokens (``_to_grid``) as their VLM does before the projector.

    Args:
        checkpoint: Folder of a Hugging Face VLM checkpoint (config.json,
            preprocessor_config.json, safetensors weights).
        layer: The tower's ``vision_feature_layer`` to read (hidden-states index, >= 1 or < 0).
        attention: Also return the CLS→patch attention of that layer's block.
    """

    family: ClassVar[str]  # e.g. "LLaVA-NeXT", for messages
    id_prefix: ClassVar[str]  # first part of encoder_id
    model_types: ClassVar[tuple[str, ...]]  # accepted config model_type values
    blocks_path: ClassVar[str]  # attribute path of the tower's block list
    attention_name: ClassVar[str]  # attribute of a block holding its attention module

    def __init__(self, checkpoint: str, layer: int, attention: bool = False) -> None:
        super().__init__()
        transformers = import_transformers(type(self).__name__)
        self.checkpoint = Path(checkpoint).resolve()
        self.config = load_config(transformers, self.checkpoint, self.model_types, self.family)
        vision_config = self.config.vision_config
        processor = read_processor(self.checkpoint)
        height, width = as_pair(vision_config.image_size)
        if height != width or processor.crop_size not in (None, height):
            raise ValueError(
                f"{self.checkpoint}: the tower takes {height}x{width} inputs, the processor "
                f"cuts {processor.crop_size}-px squares; square inputs of one size are needed"
            )
        self.image_size = height
        self.mean, self.std, self.resample = processor.mean, processor.std, processor.resample
        patch_h, patch_w = as_pair(vision_config.patch_size)
        self.patch_grid = (height // patch_h, width // patch_w)  # (H, W) of the tower's tokens
        # Select strategy "default" (LLaVA's, InternVL's) drops the CLS token; "full" keeps all.
        strategy = self.config.vision_feature_select_strategy
        self.num_prefix = 1 if strategy == "default" else 0
        if attention and self.num_prefix == 0:
            raise ValueError(
                f"{self.checkpoint}: vision_feature_select_strategy {strategy!r} keeps every "
                f"token, so there is no CLS token to read attention from: use attention=False"
            )
        self.layer, self.attention = layer, attention
        self.encoder_id = f"{self.id_prefix}:{self.checkpoint.name}:layer{layer}"
        # float32 whatever the checkpoint stores: the extraction engine picks compute precision.
        self.tower = transformers.AutoModel.from_config(vision_config, dtype=torch.float32)
        load_tower_weights(self.checkpoint, self.tower)
        self._keep_blocks_through(layer)
        self.tower.eval().requires_grad_(False)  # frozen: features only
        self.grid, self.feature_dim = self.patch_grid, int(vision_config.hidden_size)

    def forward(self, pixels: torch.Tensor) -> EncodedBatch:
        """Tokens of the feature layer (B, H*W, C) and optionally CLS attention (B, H*W)."""
        block = self._blocks()[-1]
        attention_module = getattr(block, self.attention_name)
        with (
            recorded_outputs(block) as block_outputs,
            recorded_inputs(attention_module, enabled=self.attention) as attention_inputs,
        ):
            self.tower(pixel_values=pixels)
        tokens = self._layer_tokens(block_outputs[0])  # (B, N, C)
        patch_tokens = tokens[:, self.num_prefix :]  # (B, h*w, C)
        height, width = self.patch_grid
        if patch_tokens.shape[1] != height * width:
            raise ValueError(
                f"{self.encoder_id}: {patch_tokens.shape[1]} patch tokens for a "
                f"{height}x{width} grid; inputs must be {self.image_size}x{self.image_size}"
            )
        attention = None
        if self.attention:
            attention = _cls_attention(attention_module, attention_inputs[0], self.num_prefix)
        return self._to_grid(patch_tokens, attention)

    def _details(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "model_type": self.config.model_type,
            "attention": self.attention,
        }

    def _layer_tokens(self, block_output: torch.Tensor) -> torch.Tensor:
        """The VLM's tokens (B, N, C) from the feature block's output; subclasses add norms."""
        return block_output

    def _to_grid(self, patch_tokens: torch.Tensor, attention: torch.Tensor | None) -> EncodedBatch:
        """Patch tokens (B, h*w, C) as the VLM's projector receives them; default: unchanged."""
        return EncodedBatch(patch_tokens, attention)

    def _blocks(self) -> nn.ModuleList:
        return self.tower.get_submodule(self.blocks_path)

    def _keep_blocks_through(self, layer: int) -> None:
        """Drop the blocks after hidden-states index ``layer``: their output is never read."""
        num_blocks = len(self._blocks())
        index = layer if layer >= 0 else num_blocks + 1 + layer
        if not 1 <= index <= num_blocks:
            raise ValueError(
                f"layer={layer} does not name one of the {num_blocks} blocks of the tower in "
                f"{self.checkpoint} (1..{num_blocks} or -1..-{num_blocks})"
            )
        parent_path, _, name = self.blocks_path.rpartition(".")
        setattr(self.tower.get_submodule(parent_path), name, self._blocks()[:index])


def _cls_attention(module: nn.Module, hidden: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """CLS→patch attention (B, N - num_prefix) of a transformers attention module's input.

    Queries and keys go through the module's own projections (and q/k norms, if it has them).
    """
    cls_query = module.q_proj(hidden[:, 0])  # (B, D)
    keys = module.k_proj(hidden)  # (B, N, D)
    if hasattr(module, "q_norm"):
        cls_query, keys = module.q_norm(cls_query), module.k_norm(keys)
    return cls_patch_attention(cls_query, keys, module.num_heads, num_prefix)

