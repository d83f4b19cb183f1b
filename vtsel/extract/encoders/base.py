"""What every vision encoder gives extraction: normalised input, patch tokens, CLS attention.

Extraction pairs a ``CropPlan`` (which squares the VLM cuts) with a ``VisionEncoder`` (what its
tower makes of one square); the encoder's ``describe`` goes into the extraction manifest so that
features of different towers, layers or preprocessing are never mixed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn


class EncodedBatch(NamedTuple):
    """An encoder's output for a batch of crops."""

    features: torch.Tensor  # (B, L, C), L = H*W patch tokens in row-major grid order
    attention: torch.Tensor | None  # (B, L) CLS→patch attention of the feature layer, or None
    # (B, 2, L) attention patches receive at HiPrune's object layer and the feature layer
    received_attention: torch.Tensor | None = None


class VisionEncoder(nn.Module, ABC):
    """A frozen vision tower returning the patch tokens of one of its layers.

    Subclasses set the attributes below in ``__init__`` and implement ``forward``.

    Attributes:
        encoder_id: Names tower, weights and layer; stored in every sample.
        layer: The layer whose tokens are returned, as the subclass counts layers.
        grid: (H, W) of the token grid.
        feature_dim: Width C of each token.
        image_size: Side S of the square input.
        mean, std: Per-channel normalisation of pixels in [0, 1].
        resample: Resize filter of the tower's own preprocessing (``bicubic``, ...); a
            ``CropPlan`` for this tower should use the same.
        received_attention: Whether ``forward`` also returns the attention patches receive
            at ``received_layers``, (object block, feature block) 1-based, for HiPrune.
    """

    encoder_id: str
    layer: int
    grid: tuple[int, int]
    feature_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str
    received_attention: bool = False
    received_layers: tuple[int, int] | None = None

    def normalize(self, view: Image.Image) -> torch.Tensor:
        """(3, S, S) float32 input for an S x S RGB view: ``(pixel / 255 - mean) / std``."""
        if view.mode != "RGB" or view.size != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.encoder_id} takes {self.image_size}x{self.image_size} RGB views, got "
                f"{view.width}x{view.height} {view.mode}: cut views with a CropPlan at "
                f"size={self.image_size}"
            )
        unit = torch.from_numpy(np.array(view, dtype=np.float32) / 255.0)  # (S, S, 3)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (unit.permute(2, 0, 1) - mean) / std  # (3, S, S)

    @abstractmethod
    def forward(self, pixels: torch.Tensor) -> EncodedBatch:
        """Tokens (and attention, if asked for) of normalised pixels (B, 3, S, S)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description: two encoders that describe alike give the same features."""
        return {
            "encoder_id": self.encoder_id,
            "class": type(self).__name__,
            "layer": self.layer,
            "grid": list(self.grid),
            "feature_dim": self.feature_dim,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.resample,
            **self._details(),
        }

    def _details(self) -> dict[str, Any]:
        """The subclass's own settings, for ``describe``."""
        return {}

    def _received_details(self) -> dict[str, Any]:
        """The received-attention setting, for a subclass's ``_details``; left out when off, so
        manifests of extractions made before the option existed still match and resume."""
        if not self.received_attention:
            return {}
        return {"received_attention": True, "received_layers": list(self.received_layers)}


def cls_patch_attention(
    cls_query: torch.Tensor, keys: torch.Tensor, num_heads: int, num_prefix: int = 1
) -> torch.Tensor:
    """CLS→patch attention (B, N - num_prefix), averaged over heads, rows summing to 1.

    Recomputes the softmax row of the CLS query from a block's own projections (the fused
    attention kernels never materialise it). The prefix keys' share (CLS attending to itself)
    is removed and the rest rescaled, so each row is a distribution over the patch tokens;
    the ranking of patches is unchanged by that.

    Args:
        cls_query: The CLS token's query projection (B, D), D = heads * head_dim.
        keys: Key projections of every token (B, N, D), prefix tokens first.
        num_heads: Attention heads.
        num_prefix: Tokens before the patches (the CLS token and any registers).
    """
    batch, num_tokens, width = keys.shape
    head_dim = width // num_heads
    query = cls_query.float().view(batch, num_heads, 1, head_dim)
    keys = keys.float().view(batch, num_tokens, num_heads, head_dim).transpose(1, 2)
    logits = query @ keys.transpose(-1, -2) * head_dim**-0.5  # (B, heads, 1, N)
    weights = logits.softmax(dim=-1).mean(dim=1)[:, 0]  # (B, N)
    patch_weights = weights[:, num_prefix:]  # (B, N - num_prefix)
    return patch_weights / patch_weights.sum(dim=-1, keepdim=True)


@contextmanager
def recorded_inputs(module: nn.Module, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Record the hidden-state input of every call of ``module`` inside the ``with`` block.

    The input is the first positional argument, or the ``hidden_states`` keyword (how
    transformers' layers pass it). With ``enabled`` False nothing is hooked.
    """
    inputs: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs.append(args[0] if args else kwargs["hidden_states"])

    handle = module.register_forward_pre_hook(record, with_kwargs=True) if enabled else None
    try:
        yield inputs
    finally:
        if handle is not None:
            handle.remove()


@contextmanager
def recorded_outputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the hidden-state output of every call of ``module`` inside the ``with`` block.

    A block returning a tuple (as some transformers layers do) gives its first element.
    """
    outputs: list[torch.Tensor] = []

    def record(_module: nn.Module, _args: tuple, output: Any) -> None:
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(record)
    try:
        yield outputs
    finally:
        handle.remove()


def as_pair(size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of a size given as one side or as a pair."""
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])
