"""InternVL's InternViT tower, read from a transformers InternVL checkpoint."""

from __future__ import annotations

from typing import Any

import torch

from vtsel.extract.encoders.base import EncodedBatch
from vtsel.extract.encoders.hf_tower import HFVisionTower


class InternVisionTower(HFVisionTower):
    """The tokens InternVL's projector receives for one tile, pixel shuffle included or not.

    InternVL3 reads the last layer of InternViT-300M-448px (32x32x1024 per 448-px tile) and
    folds each 2x2 group of tokens into one (pixel shuffle, scale 0.5: 16x16x4096) before its
    projector. With ``pixel_shuffle`` the selector works on the 256 tokens the LLM receives;
    without it on the tower's 1024. Needs a checkpoint in transformers' format (model_type
    "internvl", e.g. ``OpenGVLab/InternVL3-1B-hf``); the original remote-code format
    ("internvl_chat") is refused.

    Args:
        checkpoint: Folder of the transformers InternVL checkpoint.
        layer: Hidden-states index read (InternVL: -1; as in transformers, only -1 applies
            the tower's final norm, where it has one).
        pixel_shuffle: Fold tokens as the VLM does, by its ``downsample_ratio``.
        attention: Also return the CLS→patch attention of that block; with ``pixel_shuffle``
            each folded token gets the sum of its source tokens' attention.
        received_attention: Also return the attention patches receive in HiPrune's object
            block and in that block (summed over each folded group, like ``attention``).

    Attributes:
        encoder_id: ``internvl:<checkpoint folder name>:layer<N>``, plus ``:pixel_shuffle``.
    """

    family = "InternVL"
    id_prefix = "internvl"
    model_types = ("internvl",)

    def __init__(
        self,
        checkpoint: str,
        layer: int = -1,
        pixel_shuffle: bool = True,
        attention: bool = False,
        received_attention: bool = False,
    ) -> None:
        super().__init__(checkpoint, layer, attention, received_attention)
        self.pixel_shuffle = pixel_shuffle
        self.fold = round(1 / self.config.downsample_ratio) if pixel_shuffle else 1
        height, width = self.patch_grid
        if height % self.fold or width % self.fold:
            raise ValueError(
                f"{self.checkpoint}: a {height}x{width} token grid does not fold by "
                f"downsample_ratio={self.config.downsample_ratio}"
            )
        self.grid = (height // self.fold, width // self.fold)
        self.feature_dim *= self.fold * self.fold
        if pixel_shuffle:
            self.encoder_id += ":pixel_shuffle"

    def _layer_tokens(self, block_output: torch.Tensor) -> torch.Tensor:
        # transformers reads last_hidden_state (after the final norm) for -1 only.
        return self.tower.layernorm(block_output) if self.layer == -1 else block_output

    def _to_grid(
        self,
        patch_tokens: torch.Tensor,
        attention: torch.Tensor | None,
        received: torch.Tensor | None,
    ) -> EncodedBatch:
        features = self._shuffle(patch_tokens)  # (B, h*w / fold², C * fold²)
        if attention is not None:
            attention = self._shuffle(attention[..., None]).sum(dim=-1)  # (B, h*w / fold²)
        if received is not None:  # (B, 2, h*w): fold² parts per map, summed
            folded = self._shuffle(received.transpose(1, 2))  # (B, h*w / fold², fold² * 2)
            received = folded.unflatten(-1, (-1, received.shape[1])).sum(dim=2).transpose(1, 2)
        return EncodedBatch(features, attention, received)

    def _shuffle(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h*w, C) -> (B, h*w / f², f² C): each f x f group of tokens becomes one token.

        A folded token holds its group's tokens row by row (top-left, top-right, ... for
        f = 2), the channel order of InternVL's pixel shuffle.
        """
        fold, (height, width) = self.fold, self.patch_grid
        batch, _, channels = tokens.shape
        groups = tokens.reshape(batch, height // fold, fold, width // fold, fold, channels)
        groups = groups.permute(0, 1, 3, 2, 4, 5)  # (B, h/f, w/f, f, f, C)
        return groups.reshape(batch, (height // fold) * (width // fold), fold * fold * channels)

    def _details(self) -> dict[str, Any]:
        return {
            **super()._details(),
            "pixel_shuffle": self.pixel_shuffle,
            "downsample_ratio": self.config.downsample_ratio,
        }
