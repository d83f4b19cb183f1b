"""LLaVA-NeXT's own CLIP tower, as fine-tuned with the VLM, read from its checkpoint."""

from __future__ import annotations

from typing import Any

from vtsel.extract.encoders.hf_tower import HFVisionTower


class LlavaNextVisionTower(HFVisionTower):
    """The patch tokens LLaVA-NeXT's projector receives for one crop.

    LLaVA-1.6 fine-tuned its CLIP ViT-L/14-336 together with the LLM, so stock CLIP weights are
    not what its LLM sees; this reads the tower's weights (only those) from a local
    transformers checkpoint such as ``llava-hf/llava-v1.6-mistral-7b-hf``. Normalisation and
    resize filter come from the checkpoint's ``preprocessor_config.json``; the CLS token is
    dropped when the checkpoint's select strategy is "default" (LLaVA's), giving 24x24x1024
    tokens per 336-px crop.

    Args:
        checkpoint: Folder of the transformers LLaVA-NeXT checkpoint.
        layer: Hidden-states index read (LLaVA: -2, the penultimate block's output).
        attention: Also return the CLS→patch attention of that block.
        received_attention: Also return the attention patches receive in HiPrune's object
            block (the 9th of CLIP-L's 24) and in that block, for HiPrune.

    Attributes:
        encoder_id: ``llava_next:<checkpoint folder name>:layer<N>``.
        grid_pinpoints: The checkpoint's anyres canvases, (height, width): give them to
            ``LlavaNextAnyres`` so crops and tower agree.
    """

    family = "LLaVA-NeXT"
    id_prefix = "llava_next"
    model_types = ("llava_next",)

    def __init__(
        self, checkpoint: str, layer: int = -2, attention: bool = False,
        received_attention: bool = False,
    ) -> None:
        super().__init__(checkpoint, layer, attention, received_attention)
        self.grid_pinpoints = [tuple(p) for p in self.config.image_grid_pinpoints]

    def _details(self) -> dict[str, Any]:
        return {**super()._details(), "grid_pinpoints": [list(p) for p in self.grid_pinpoints]}
