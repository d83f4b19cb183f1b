"""open_clip ViT towers: the patch tokens of one block, as LLaVA reads its CLIP tower.

A VLM such as LLaVA feeds the language model the patch tokens of one intermediate block of its
CLIP tower, so the encoder returns exactly those tokens, not the pooled embedding CLIP was
trained to produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vtsel.attention_maps import patch_received_attention
from vtsel.extract.crops import RESAMPLE_FILTERS, CenterCrop
from vtsel.extract.encoders.base import (
    EncodedBatch,
    VisionEncoder,
    as_pair,
    cls_patch_attention,
    recorded_inputs,
)
from vtsel.methods.hiprune import object_layer

# Random-weight towers are seeded so that every run builds the same "random" encoder: features
# from two extraction runs (say train and a later val top-up) must come from one function.
RANDOM_INIT_SEED = 0


class PreparedCrop(NamedTuple):
    """One encoder input and where it came from (``OpenClipEncoder.prepare``)."""

    pixels: torch.Tensor  # (3, S, S) normalised with the encoder's mean/std
    view: Image.Image  # (S, S) RGB: what the encoder saw, before normalisation
    box: tuple[int, int, int, int]  # [x0, y0, x1, y1] of the crop in source pixels


class OpenClipEncoder(VisionEncoder):
    """The patch tokens of one transformer block of an open_clip ViT image tower.

    Only the visual tower is kept (the text tower would double the memory for nothing), and
    blocks after the requested one are pruned since their output is never read.

    Args:
        model_name: An open_clip architecture name, e.g. ``"ViT-S-16"`` or
            ``"ViT-L-14-336-quickgelu"``.
        pretrained: ``None`` for random (seeded, hence reproducible) weights; an open_clip
            pretrained tag such as ``"openai"`` (downloads the weights); or the path of a local
            weights file.
        layer: Index of the transformer block whose output is returned; negative counts from
            the end. LLaVA reads the penultimate block, ``-2``.
        drop_prefix: Drop the CLS/prefix tokens so that only the ``H*W`` patch tokens remain.
        attention: Also return the CLS→patch attention of that block (for attention-ranked
            baselines such as VisionZip), recomputed from the block's own queries and keys.
        received_attention: Also return the attention patches receive in HiPrune's object
            block (``vtsel.methods.hiprune.object_layer``) and in that block, (B, 2, H*W),
            recomputed likewise.

    Attributes:
        encoder_id: ``open_clip:<model>:<weights>:layer<N>``, e.g.
            ``open_clip:ViT-S-16:random:layer-2``.
    """

    def __init__(
        self,
        model_name: str = "ViT-S-16",
        pretrained: str | None = None,
        layer: int = -2,
        drop_prefix: bool = True,
        attention: bool = False,
        received_attention: bool = False,
    ) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            clip_model = open_clip.create_model(model_name, pretrained=pretrained)
        visual = clip_model.visual
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "grid_size"):
            raise ValueError(f"{model_name!r} has no ViT image tower with per-block outputs")
        self.preprocess_cfg = dict(visual.preprocess_cfg)
        height, width = as_pair(self.preprocess_cfg["size"])
        if height != width:
            raise ValueError(f"{model_name!r} expects non-square {height}x{width} inputs")
        self.image_size = height
        self.grid: tuple[int, int] = as_pair(visual.grid_size)
        self.feature_dim: int = visual.transformer.width
        self.mean = tuple(float(v) for v in self.preprocess_cfg["mean"])
        self.std = tuple(float(v) for v in self.preprocess_cfg["std"])
        self.resample = str(self.preprocess_cfg["interpolation"])
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"{model_name!r} resizes with unsupported {self.resample!r}")
        self.layer = layer
        self.drop_prefix = drop_prefix
        self.attention = attention
        self.model_name = model_name
        self.pretrained = pretrained
        self.received_attention = received_attention
        num_blocks = len(visual.transformer.resblocks)
        (self._block_index,) = visual.prune_intermediate_layers(
            indices=[layer], prune_norm=True, prune_head=True
        )
        # 1-based blocks whose received attention is returned: (object block, feature block)
        feature_block = self._block_index + 1
        self.received_layers = (object_layer(num_blocks, feature_block), feature_block)
        self.visual = visual.eval().requires_grad_(False)  # frozen: features only
        if attention or received_attention:
            _check_attention_block(model_name, visual, needs_cls=attention)
        self.encoder_id = f"open_clip:{model_name}:{_weights_name(pretrained)}:layer{layer}"

    def prepare(self, image: Image.Image) -> PreparedCrop:
        """The centre crop of an RGB image, normalised (``CenterCrop`` + ``normalize``)."""
        (crop,) = CenterCrop(self.resample).crops(image, self.image_size)
        return PreparedCrop(pixels=self.normalize(crop.view), view=crop.view, box=crop.box)

    def forward(self, pixels: torch.Tensor) -> EncodedBatch:
        """Token features of the chosen block for normalised images (B, 3, S, S).

        Features are (B, L, C) with L = H*W patch tokens, plus the prefix tokens first when
        ``drop_prefix`` is False; attention is (B, H*W) or None.
        """
        blocks = self.visual.transformer.resblocks
        feature_block = blocks[self._block_index]
        received_blocks = [blocks[index - 1] for index in self.received_layers]
        with (
            recorded_inputs(feature_block, enabled=self.attention) as block_inputs,
            recorded_inputs(received_blocks[0], enabled=self.received_attention) as object_in,
            recorded_inputs(received_blocks[1], enabled=self.received_attention) as feature_in,
        ):
            out = self.visual.forward_intermediates(
                pixels,
                indices=[self._block_index],
                intermediates_only=True,
                output_fmt="NLC",
                output_extra_tokens=not self.drop_prefix,
            )
        features = out["image_intermediates"][0]  # (B, H*W, C)
        if not self.drop_prefix:
            prefix_tokens = out["image_intermediates_prefix"][0]  # (B, P, C)
            features = torch.cat([prefix_tokens, features], dim=1)  # (B, P + H*W, C)
        attention = None
        if self.attention:
            block_input = self._batch_first(block_inputs[0])  # (B, N, C)
            attention = _block_cls_attention(feature_block, block_input)  # (B, H*W)
        received = None
        if self.received_attention:
            num_prefix = 0 if getattr(self.visual, "class_embedding", None) is None else 1
            received = torch.stack([
                patch_received_attention(
                    *_block_qk(block, self._batch_first(inputs[0])), block.attn.num_heads,
                    num_prefix,
                )
                for block, inputs in zip(received_blocks, (object_in, feature_in), strict=True)
            ], dim=1)  # (B, 2, H*W)
        return EncodedBatch(features, attention, received)

    def _batch_first(self, block_input: torch.Tensor) -> torch.Tensor:
        """A block's recorded input as (B, N, C); sequence-first towers record (N, B, C)."""
        return block_input if self.visual.transformer.batch_first else block_input.transpose(0, 1)

    def _details(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "drop_prefix": self.drop_prefix,
            "attention": self.attention,
            **self._received_details(),
        }


def _check_attention_block(model_name: str, visual: nn.Module, needs_cls: bool) -> None:
    """Refuse attention options where the maps cannot be recomputed (CLS→patch attention
    also needs a CLS token, ``needs_cls``)."""
    if needs_cls and getattr(visual, "class_embedding", None) is None:
        raise ValueError(f"{model_name!r} has no CLS token: it has no CLS→patch attention")
    block = visual.transformer.resblocks[-1]
    attn = getattr(block, "attn", None)
    if not (
        isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and hasattr(block, "ln_1")
    ):
        raise ValueError(
            f"{model_name!r} uses {type(block).__name__} blocks; attention is read from "
            f"blocks with ln_1 and a torch MultiheadAttention only: use attention=False and "
            f"received_attention=False"
        )


def _block_cls_attention(block: nn.Module, block_input: torch.Tensor) -> torch.Tensor:
    """CLS→patch attention (B, N - 1) of an open_clip residual block for its input (B, N, C)."""
    queries, keys = _block_qk(block, block_input)  # (B, N, C) each
    return cls_patch_attention(queries[:, 0], keys, block.attn.num_heads)


def _block_qk(block: nn.Module, block_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys (B, N, C) of an open_clip residual block for its input (B, N, C), from
    its MultiheadAttention's packed in-projection."""
    normed = block.ln_1(block_input)  # (B, N, C): the block attends over its pre-norm input
    attn = block.attn
    w_query, w_key, _ = attn.in_proj_weight.chunk(3)
    b_query, b_key = (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.chunk(3)[:2]
    return F.linear(normed, w_query, b_query), F.linear(normed, w_key, b_key)


def _weights_name(pretrained: str | None) -> str:
    """The part of ``encoder_id`` that names the weights: tag, file name, or ``random``."""
    if pretrained is None:
        return "random"
    return Path(pretrained).name if Path(pretrained).is_file() else pretrained

