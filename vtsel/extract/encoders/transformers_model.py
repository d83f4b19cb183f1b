"""Any transformers vision backbone (DINOv2, CLIP, SigLIP, ViT, ...) as an extraction encoder.

The backbone comes from a local folder (``save_pretrained`` layout) or a hub id the user can
reach; its own ``preprocessor_config.json`` gives the pixel normalisation, the input side and the
resize filter, so the tokens are the ones the backbone computes in its own pipeline. A folder of
a dual model (CLIP, SigLIP) gives its vision tower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vtsel.extract.encoders.base import as_pair
from vtsel.extract.encoders.hf_checkpoint import PROCESSOR_FILE, import_transformers, read_processor
from vtsel.extract.encoders.hf_tower import TransformersTower


class TransformersEncoder(TransformersTower):
    """The patch tokens of one layer of a transformers vision model, prefix tokens dropped.

    Prefix tokens (CLS, DINOv2's registers) are counted from a probe forward at load time:
    whatever precedes the H*W patches is dropped. CLS→patch attention, when asked for, is
    recomputed from the feature block's own q/k projections, so the model keeps its fused
    attention kernel.

    Args:
        model: Local folder or hub id of a transformers vision model, with its image
            processor's ``preprocessor_config.json``.
        layer: Hidden-states index read: 0 the embeddings, k the output of block k, negative
            from the end; -2 (default) is the penultimate block, as LLaVA reads CLIP. Block
            outputs are taken before any final norm of the model.
        attention: Also return the CLS→patch attention of that block (VisionZip).
        received_attention: Also return the attention patches receive in HiPrune's object
            block and in that block, (B, 2, L) (``hf_tower`` module doc).
        revision: Hub revision (branch, tag or commit) of a hub id; pin it for repeatable
            features.

    Attributes:
        encoder_id: ``transformers:<folder name or hub id>:layer<N>``.
    """

    def __init__(
        self,
        model: str,
        layer: int = -2,
        attention: bool = False,
        revision: str | None = None,
        received_attention: bool = False,
    ) -> None:
        super().__init__()
        transformers = import_transformers(type(self).__name__)
        local = Path(model)
        if local.exists() and not local.is_dir():
            raise ValueError(f"{model} is a file: give the folder of a transformers model")
        self.model, self.revision = str(local.resolve()) if local.is_dir() else model, revision
        config = transformers.AutoConfig.from_pretrained(self.model, revision=revision)
        vision_config = getattr(config, "vision_config", config)  # dual models: the tower
        model_class = transformers.MODEL_MAPPING.get(type(vision_config), None)
        if model_class is None:
            raise ValueError(
                f"{model}: transformers has no vision model for model_type "
                f"{vision_config.model_type!r}"
            )
        # float32 whatever the checkpoint stores: the extraction engine picks compute precision.
        tower = model_class.from_pretrained(self.model, revision=revision, dtype=torch.float32)
        self.model_type = vision_config.model_type
        processor = read_processor(self._processor_folder(transformers))
        if processor.crop_size is None:
            raise ValueError(f"{model}/{PROCESSOR_FILE} names no input size (crop_size, size)")
        self.image_size = processor.crop_size
        self.mean, self.std, self.resample = processor.mean, processor.std, processor.resample
        patch_h, patch_w = as_pair(vision_config.patch_size)
        patch_grid = (self.image_size // patch_h, self.image_size // patch_w)
        num_prefix = _count_prefix(tower, self.image_size, patch_grid, model)
        name = Path(self.model).name if local.is_dir() else model
        self.encoder_id = f"transformers:{name}:layer{layer}"
        self._read_layer(
            tower, layer, attention, patch_grid, num_prefix, model, received_attention
        )

    def _processor_folder(self, transformers: Any) -> Path:
        """The folder holding ``preprocessor_config.json`` (the hub cache for a hub id)."""
        found = transformers.utils.cached_file(
            self.model, PROCESSOR_FILE, revision=self.revision,
            _raise_exceptions_for_missing_entries=False,
        )
        if found is None:
            raise FileNotFoundError(
                f"{self.model} has no {PROCESSOR_FILE}: the backbone's normalisation and input "
                f"size are read from its image processor; save it there "
                f"(processor.save_pretrained)"
            )
        return Path(found).parent

    def _details(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "revision": self.revision,
            "model_type": self.model_type,
            "num_prefix": self.num_prefix,
            "attention": self.attention,
            **self._received_details(),
        }


@torch.no_grad()
def _count_prefix(
    tower: torch.nn.Module, image_size: int, patch_grid: tuple[int, int], source: str
) -> int:
    """Tokens before the patches in the model's output, from one forward of a blank input."""
    blank = torch.zeros(1, 3, image_size, image_size)
    try:
        tokens = tower(pixel_values=blank).last_hidden_state  # (1, N, C)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"{source} does not run on {image_size}x{image_size} inputs, the size its image "
            f"processor gives: {err}"
        ) from err
    num_prefix = tokens.shape[1] - patch_grid[0] * patch_grid[1]
    if num_prefix < 0:
        raise ValueError(
            f"{source} returns {tokens.shape[1]} tokens for a {patch_grid[0]}x{patch_grid[1]} "
            f"patch grid: not a ViT that keeps one token per patch"
        )
    return num_prefix
