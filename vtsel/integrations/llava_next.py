"""Token pruning inside Hugging Face ``LlavaNextForConditionalGeneration``.

What the method sees: per crop (the low-resolution base view first, then the anyres crops),
the tower's ``vision_feature_layer`` output without CLS, before the projector — a 24×24 grid of
1024-wide tokens for CLIP ViT-L/14-336, what ``conf/llava_next.yaml`` trains on.

Layout. LLaVA-NeXT feeds the LLM the base crop's tokens, then the crops stitched into one
(rows·24)×(cols·24) grid, cut to the image's aspect ratio (``unpad``) and read row by row with an
``image_newline`` embedding after each row. Pruned, the same reading order is kept: the base
crop's kept tokens in raster order, then the stitched grid's kept tokens row by row. Only tokens
that survive unpad are candidates (budgets count what the LLM would see). Newlines:

- ``newline_rows="all"`` (default): every row of the unpadded grid keeps its newline, even a row
  whose tokens were all dropped. The LLM still reads the image as a raster with the same number
  of rows, so the row of every kept token stays known; it costs one token per row (48 for a
  672×672 image, 1.6% of its unpruned 2928), and with ratio or count budgets the token count
  depends on the image size alone.
- ``newline_rows="kept"``: only rows that keep a token end with a newline; empty rows vanish.

At a 100% budget both give exactly the unpruned model's sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from vtsel.budget import Budget
from vtsel.contract import FeatureContract
from vtsel.integrations.anyres import NEWLINE, AnyresLayout, NewlineRows, anyres_layout
from vtsel.integrations.attention import (
    attention_layers,
    encoder_layers,
    feature_layer_index,
    merge_metric,
    method_attention,
)
from vtsel.integrations.handle import Encoding, PruningHandle
from vtsel.integrations.masks import Method, kept_tokens
from vtsel.integrations.video import budget_groups


class LlavaNextPruning(PruningHandle):
    """Pruning handle for ``LlavaNextForConditionalGeneration`` / ``LlavaNextModel``.

    Args:
        model: The loaded model.
        method: A ``SelectionMethod`` or an exported ``TokenSelector``.
        budget: How many tokens each crop (or image) keeps.
        newline_rows: ``"all"`` or ``"kept"``: which grid rows keep their newline (module doc).
    """

    def __init__(
        self, model: nn.Module, method: Method, budget: Budget, newline_rows: NewlineRows = "all"
    ) -> None:
        if newline_rows not in ("all", "kept"):
            raise ValueError(f"newline_rows={newline_rows!r}: choose 'all' or 'kept'")
        self.newline_rows = newline_rows
        super().__init__(model, method, budget)

    @property
    def image_token_id(self) -> int:
        return self.base.config.image_token_id

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) token grid of one crop."""
        vision = self.base.config.vision_config
        side = vision.image_size // vision.patch_size
        return side, side

    def _resolve(self, layer: Any, strategy: str | None) -> tuple[Any, str]:
        config = self.base.config
        layer = config.vision_feature_layer if layer is None else layer
        strategy = config.vision_feature_select_strategy if strategy is None else strategy
        if strategy != "default":
            raise ValueError(
                f"vision_feature_select_strategy={strategy!r}: pruning works on the patch grid "
                f"and needs 'default' (CLS dropped), as LLaVA-NeXT's anyres packing does"
            )
        return (tuple(layer) if isinstance(layer, list) else layer), strategy

    def _method_input(self) -> tuple[FeatureContract, str]:
        layer, _ = self._resolve(None, None)
        width = self.base.config.vision_config.hidden_size * (
            1 if isinstance(layer, int) else len(layer)
        )
        return FeatureContract(width, self.grid), (
            f"{type(self.model).__name__}'s vision tower gives, per crop at "
            f"vision_feature_layer {layer} (CLS dropped),"
        )

    def _attention_layer(self) -> int:
        layer, _ = self._resolve(None, None)
        if not isinstance(layer, int):
            raise ValueError(f"{self.method.name} ranks by attention around one layer; "
                             f"vision_feature_layer is the list {list(layer)}")
        return layer

    def _geometry(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if inputs.get("image_sizes") is None:
            raise ValueError("LLaVA-NeXT inputs need image_sizes (the processor returns them)")
        return {"image_sizes": inputs["image_sizes"]}

    def _cache_key(self, geometry: Mapping[str, Any]) -> tuple[Any, ...]:
        layer, strategy = self._resolve(geometry.get("layer"), geometry.get("strategy"))
        return geometry["image_sizes"], layer, strategy

    def _patched_get_image_features(self) -> Any:
        def get_image_features(
            pixel_values: torch.Tensor,
            image_sizes: torch.Tensor,
            vision_feature_layer: int | list[int] | None = None,
            vision_feature_select_strategy: str | None = None,
            **kwargs: Any,
        ) -> Any:
            """LlavaNextModel.get_image_features with vtsel token pruning (detach() restores)."""
            return self.image_features(
                pixel_values, image_sizes=image_sizes, layer=vision_feature_layer,
                strategy=vision_feature_select_strategy,
            )

        return get_image_features

    def encode(
        self,
        pixel_values: torch.Tensor,
        clips: Sequence[int] | None = None,
        image_sizes: torch.Tensor | None = None,
        layer: int | list[int] | None = None,
        strategy: str | None = None,
    ) -> Encoding:
        """Per image: the kept tokens, projected, in LLaVA-NeXT's order with its newlines.

        Args:
            pixel_values: (num_images, max_crops, 3, S, S) as the processor pads them, or the
                crops of all images stacked (total_crops, 3, S, S).
            clips: Images per clip sharing one budget (``video.budget_groups``).
            image_sizes: (num_images, 2) original (height, width).
            layer, strategy: The model call's overrides of the config's feature layer/strategy.
        """
        layer, _ = self._resolve(layer, strategy)
        config = self.base.config
        crops_per_image = [
            image_size_to_num_patches(size, config.image_grid_pinpoints,
                                      config.vision_config.image_size)
            for size in image_sizes
        ]
        if pixel_values.dim() == 5:  # drop the processor's padding crops
            pixel_values = torch.cat([
                image_crops[:count] for image_crops, count in zip(pixel_values, crops_per_image,
                                                                  strict=True)
            ])
        features, attention, metric = self._tower_features(pixel_values, layer)  # (N, L, C), ...
        layouts = [
            anyres_layout(size, count, self.grid, config.image_grid_pinpoints,
                          config.vision_config.image_size)
            for size, count in zip(image_sizes, crops_per_image, strict=True)
        ]
        candidates = torch.cat([layout.candidates for layout in layouts]).to(features.device)
        keep, handed_on = kept_tokens(
            self.method, features, self.grid, candidates, budget_groups(crops_per_image, clips),
            self.budget, attention, metric,
        )  # (N, L), (N, L, C): VisionZip's contextual tokens come merged
        return self._assemble(handed_on, keep, layouts, crops_per_image)

    def _tower_features(
        self, pixel_values: torch.Tensor, layer: int | tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Crops' feature-layer tokens without CLS (N, L, C), the attention the method ranks
        by if any (``attention.method_attention``) and what it merges on if not the tokens
        (``attention.merge_metric``), from one tower pass that keeps only the hidden states
        it needs."""
        tower = self.base.vision_tower
        num_layers = tower.config.num_hidden_layers
        layers = (layer,) if isinstance(layer, int) else layer
        indices = [feature_layer_index(each, num_layers) for each in layers]
        needs_attention = getattr(self.method, "needs_attention", False)
        attention_inputs = (attention_layers(self.method, indices[0], num_layers)
                            if needs_attention else [])  # layer i's input is hidden_states[i]
        outputs = tower(pixel_values, output_hidden_states=indices + attention_inputs,
                        return_dict=True)
        hidden = torch.cat([outputs.hidden_states[index] for index in indices], dim=-1)
        attention = metric = None
        if needs_attention:
            layers = encoder_layers(tower)
            attention = method_attention(self.method, layers, outputs.hidden_states, indices[0])
            metric = merge_metric(self.method, layers, outputs.hidden_states, indices[0])
        return hidden[:, 1:], attention, metric  # CLS dropped, as "default" does

    def _assemble(
        self,
        features: torch.Tensor,
        keep: torch.Tensor,
        layouts: list[AnyresLayout],
        crops_per_image: list[int],
    ) -> Encoding:
        """Project the kept tokens (only those) and order them per image with newlines."""
        projected = self.base.multi_modal_projector(features[keep])  # (K, D) crop-major
        row_in_projected = keep.flatten().cumsum(0) - 1  # (N*L,)
        newline = self.base.image_newline.to(projected.dtype)  # (D,)
        per_crop = features.shape[1]
        images, full_tokens, kept_tokens = [], [], []
        first_crop = 0
        for layout, num_crops in zip(layouts, crops_per_image, strict=True):
            image_keep = keep[first_crop:first_crop + num_crops]
            order = layout.order(image_keep.cpu(), self.newline_rows).to(features.device)  # (T,)
            is_token = order != NEWLINE
            tokens = projected.new_empty(order.shape[0], projected.shape[1])  # (T, D)
            tokens[is_token] = projected[row_in_projected[order[is_token] + first_crop * per_crop]]
            tokens[~is_token] = newline
            images.append(tokens)
            full_tokens.append(layout.full_tokens)
            kept_tokens.append(order.shape[0])
            first_crop += num_crops
        return Encoding(images, full_tokens, kept_tokens)
