"""Vision encoders whose per-token features the selectors learn to prune.

A VLM such as LLaVA feeds the language model the patch tokens of one intermediate block of its
CLIP tower, so the encoder here returns exactly those tokens, not the pooled embedding CLIP was
trained to produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import open_clip
import torch
from PIL import Image

# Random-weight towers are seeded so that every run builds the same "random" encoder: features
# from two extraction runs (say train and a later val top-up) must come from one function.
RANDOM_INIT_SEED = 0


class PreparedCrop(NamedTuple):
    """One encoder input and where it came from."""

    pixels: torch.Tensor  # (3, S, S) normalised with the encoder's mean/std
    view: Image.Image  # (S, S) RGB: what the encoder saw, before normalisation
    box: tuple[int, int, int, int]  # [x0, y0, x1, y1] of the crop in source pixels


class OpenClipEncoder(torch.nn.Module):
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

    Attributes:
        encoder_id: Names architecture, weights and block, e.g.
            ``open_clip:ViT-S-16:random:layer-2``; stored in every sample so that features of
            different encoders are never mixed.
        grid: (H, W) of the patch-token grid.
        feature_dim: Width C of each token.
        image_size: Side S of the square input.
    """

    def __init__(
        self,
        model_name: str = "ViT-S-16",
        pretrained: str | None = None,
        layer: int = -2,
        drop_prefix: bool = True,
    ) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            clip_model = open_clip.create_model(model_name, pretrained=pretrained)
        visual = clip_model.visual
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "grid_size"):
            raise ValueError(f"{model_name!r} has no ViT image tower with per-block outputs")
        self.preprocess_cfg = dict(visual.preprocess_cfg)
        height, width = _as_pair(self.preprocess_cfg["size"])
        if height != width:
            raise ValueError(f"{model_name!r} expects non-square {height}x{width} inputs")
        self.image_size = height
        self.grid: tuple[int, int] = _as_pair(visual.grid_size)
        self.feature_dim: int = visual.transformer.width
        self.layer = layer
        self.drop_prefix = drop_prefix
        (self._block_index,) = visual.prune_intermediate_layers(
            indices=[layer], prune_norm=True, prune_head=True
        )
        self.visual = visual.eval().requires_grad_(False)  # frozen: features only
        self.encoder_id = f"open_clip:{model_name}:{_weights_name(pretrained)}:layer{layer}"
        self._resample = (
            Image.Resampling.BILINEAR
            if self.preprocess_cfg["interpolation"] == "bilinear"
            else Image.Resampling.BICUBIC
        )
        # Plain attributes, not buffers: preprocessing runs on the CPU in the data path.
        self._mean = _channel_tensor(self.preprocess_cfg["mean"])  # (3, 1, 1)
        self._std = _channel_tensor(self.preprocess_cfg["std"])  # (3, 1, 1)

    def prepare(self, image: Image.Image) -> PreparedCrop:
        """Center-crop the largest square and resize it to the encoder's input size.

        This matches open_clip's eval transform (resize shortest side, center-crop), but crops
        first so the crop box is exact in source pixels: training targets are cut from it.

        Args:
            image: An RGB PIL image of any size.

        Returns:
            The normalised pixels, the un-normalised view and the crop box.
        """
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
        view = image.crop(box).resize((self.image_size, self.image_size), self._resample)
        unit = torch.from_numpy(np.asarray(view, dtype=np.float32) / 255.0)  # (S, S, 3)
        pixels = (unit.permute(2, 0, 1) - self._mean) / self._std  # (3, S, S)
        return PreparedCrop(pixels=pixels, view=view, box=box)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Token features of the chosen block.

        Args:
            pixels: Normalised images, (B, 3, S, S).

        Returns:
            (B, L, C) features; L = H*W patch tokens, plus the prefix tokens first when
            ``drop_prefix`` is False.
        """
        out = self.visual.forward_intermediates(
            pixels,
            indices=[self._block_index],
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=not self.drop_prefix,
        )
        patch_tokens = out["image_intermediates"][0]  # (B, H*W, C)
        if self.drop_prefix:
            return patch_tokens
        prefix_tokens = out["image_intermediates_prefix"][0]  # (B, P, C)
        return torch.cat([prefix_tokens, patch_tokens], dim=1)


def _weights_name(pretrained: str | None) -> str:
    """The part of ``encoder_id`` that names the weights: tag, file name, or ``random``."""
    if pretrained is None:
        return "random"
    return Path(pretrained).name if Path(pretrained).is_file() else pretrained


def _as_pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _channel_tensor(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
