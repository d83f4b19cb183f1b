"""transformers vision towers read at one layer: the part every HF encoder shares.

A tower's tokens at hidden-states index k (0 is the embeddings, k >= 1 the output of block k,
negative counts from the end, as ``output_hidden_states`` and VLMs' ``vision_feature_layer``
count) are taken with a hook on block k, and the blocks after it are dropped since their output
is never read. Blocks and their attention are found by what they are (the module list of
``num_hidden_layers`` blocks; the submodule with ``q_proj`` and ``k_proj``), so any ViT-like
transformers tower works without a per-model table.

With ``received_attention`` a tower also returns, for HiPrune, the attention each patch
receives (``vtsel.attention_maps.patch_received_attention``) in the object layer
(``vtsel.methods.hiprune.object_layer``: the 9th of 24 blocks, scaled to the tower's depth) and
in the feature block, stacked (B, 2, L), recomputed from the blocks' own q/k projections.

``HFVisionTower`` reads a VLM's own tower out of its checkpoint; ``TransformersEncoder``
(``transformers_model.py``) loads a standalone vision backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vtsel.attention_maps import patch_received_attention, project_qk
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
from vtsel.methods.hiprune import object_layer


class TransformersTower(VisionEncoder):
    """Reads a transformers vision tower's tokens at one layer, prefix tokens dropped.

    Subclasses load the tower and its preprocessing, set ``image_size``, ``mean``, ``std``,
    ``resample``, ``encoder_id``, then call ``_read_layer``; they may reshape the tokens
    (``_to_grid``) as their VLM does before its projector.
    """

    def _read_layer(
        self,
        tower: nn.Module,
        layer: int,
        attention: bool,
        patch_grid: tuple[int, int],
        num_prefix: int,
        source: str,
        received_attention: bool = False,
    ) -> None:
        """Keep ``tower`` up to hidden-states index ``layer`` and remember how to read it.

        Args:
            tower: The transformers vision model, weights loaded.
            layer: Hidden-states index to read (>= 1 or < 0).
            attention: Also return the CLS→patch attention of that layer's block.
            patch_grid: (H, W) of the tower's patch tokens at ``image_size``.
            num_prefix: Tokens before the patches (CLS, registers); 0 for towers without.
            source: Where the tower came from, named in messages.
            received_attention: Also return the attention patches receive in HiPrune's object
                block and in the feature block (module doc).
        """
        if attention and num_prefix == 0:
            raise ValueError(
                f"{source}: the tower's output has no CLS token before its patches, so there "
                f"is no CLS→patch attention to read: use attention=False"
            )
        self.tower = tower
        self.layer, self.attention = layer, attention
        self.patch_grid, self.num_prefix = patch_grid, num_prefix
        self.num_heads = int(tower.config.num_attention_heads)
        self._blocks = _find_blocks(tower, int(tower.config.num_hidden_layers), source)
        index = layer if layer >= 0 else len(self._blocks) + 1 + layer
        if not 1 <= index <= len(self._blocks):
            raise ValueError(
                f"layer={layer} does not name one of the {len(self._blocks)} blocks of the "
                f"tower in {source} (1..{len(self._blocks)} or -1..-{len(self._blocks)})"
            )
        self.received_attention = received_attention
        # 1-based blocks whose received attention is returned: (object block, feature block)
        self.received_layers = (object_layer(len(self._blocks), index), index)
        self._received_modules = [
            _find_attention(self._blocks[block - 1]) for block in self.received_layers
        ]
        del self._blocks[index:]  # their output is never read
        self.tower.eval().requires_grad_(False)  # frozen: features only
        self.grid, self.feature_dim = patch_grid, int(tower.config.hidden_size)

    def forward(self, pixels: torch.Tensor) -> EncodedBatch:
        """Tokens of the feature layer (B, H*W, C), optionally CLS attention (B, H*W) and the
        received attention (B, 2, H*W) of the object and feature blocks."""
        block = self._blocks[-1]
        attention_module = _find_attention(block)
        object_module, feature_module = self._received_modules
        with (
            recorded_outputs(block) as block_outputs,
            recorded_inputs(attention_module, enabled=self.attention) as attention_inputs,
            recorded_inputs(object_module, enabled=self.received_attention) as object_inputs,
            recorded_inputs(feature_module, enabled=self.received_attention) as feature_inputs,
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
            attention = _cls_attention(
                attention_module, attention_inputs[0], self.num_heads, self.num_prefix
            )
        received = None
        if self.received_attention:
            received = torch.stack([
                patch_received_attention(
                    *project_qk(module, inputs[0]), self.num_heads, self.num_prefix
                )
                for module, inputs in zip(
                    self._received_modules, (object_inputs, feature_inputs), strict=True
                )
            ], dim=1)  # (B, 2, h*w)
        return self._to_grid(patch_tokens, attention, received)

    def _layer_tokens(self, block_output: torch.Tensor) -> torch.Tensor:
        """The tokens (B, N, C) from the feature block's output; subclasses add norms."""
        return block_output

    def _to_grid(
        self,
        patch_tokens: torch.Tensor,
        attention: torch.Tensor | None,
        received: torch.Tensor | None,
    ) -> EncodedBatch:
        """Patch tokens (B, h*w, C) and their maps ((B, h*w), (B, 2, h*w)) as the consumer
        receives them; default: unchanged."""
        return EncodedBatch(patch_tokens, attention, received)


class HFVisionTower(TransformersTower):
    """A VLM's own vision tower, read from the VLM's transformers checkpoint without its LLM.

    Subclasses name the checkpoint family.

    Args:
        checkpoint: Folder of a Hugging Face VLM checkpoint (config.json,
            preprocessor_config.json, safetensors weights).
        layer: The tower's ``vision_feature_layer`` to read (hidden-states index, >= 1 or < 0).
        attention: Also return the CLS→patch attention of that layer's block.
        received_attention: Also return the attention patches receive in HiPrune's object
            block and in that layer's block (module doc).
    """

    family: ClassVar[str]  # e.g. "LLaVA-NeXT", for messages
    id_prefix: ClassVar[str]  # first part of encoder_id
    model_types: ClassVar[tuple[str, ...]]  # accepted config model_type values

    def __init__(
        self, checkpoint: str, layer: int, attention: bool = False,
        received_attention: bool = False,
    ) -> None:
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
        # Select strategy "default" (LLaVA's, InternVL's) drops the CLS token; "full" keeps all.
        num_prefix = 1 if self.config.vision_feature_select_strategy == "default" else 0
        self.encoder_id = f"{self.id_prefix}:{self.checkpoint.name}:layer{layer}"
        # float32 whatever the checkpoint stores: the extraction engine picks compute precision.
        tower = transformers.AutoModel.from_config(vision_config, dtype=torch.float32)
        load_tower_weights(self.checkpoint, tower)
        self._read_layer(
            tower, layer, attention, (height // patch_h, width // patch_w), num_prefix,
            f"{self.checkpoint} (vision_feature_select_strategy "
            f"{self.config.vision_feature_select_strategy!r})",
            received_attention,
        )

    def _details(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "model_type": self.config.model_type,
            "attention": self.attention,
            **self._received_details(),
        }


def _find_blocks(tower: nn.Module, num_layers: int, source: str) -> nn.ModuleList:
    """The tower's list of transformer blocks: the one ``nn.ModuleList`` of ``num_layers``."""
    lists = [
        module
        for module in tower.modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers
    ]
    if len(lists) != 1:
        raise ValueError(
            f"{source}: expected one list of {num_layers} transformer blocks in "
            f"{type(tower).__name__}, found {len(lists)}"
        )
    return lists[0]


def _find_attention(block: nn.Module) -> nn.Module:
    """The block's self-attention: the submodule with query and key projections."""
    for module in block.modules():
        if hasattr(module, "q_proj") and hasattr(module, "k_proj"):
            return module
    raise ValueError(f"{type(block).__name__} has no attention module with q_proj and k_proj")


def _cls_attention(
    module: nn.Module, hidden: torch.Tensor, num_heads: int, num_prefix: int
) -> torch.Tensor:
    """CLS→patch attention (B, N - num_prefix) of a transformers attention module's input.

    Queries and keys go through the module's own projections (and q/k norms, if it has them).
    """
    cls_query = module.q_proj(hidden[:, 0])  # (B, D)
    keys = module.k_proj(hidden)  # (B, N, D)
    if hasattr(module, "q_norm"):
        cls_query, keys = module.q_norm(cls_query), module.k_norm(keys)
    return cls_patch_attention(cls_query, keys, num_heads, num_prefix)
