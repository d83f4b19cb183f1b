"""Token pruning inside Hugging Face ``InternVLForConditionalGeneration``.

InternVL cuts an image into 448-px tiles (plus a thumbnail), runs InternViT on each, and merges
every 2×2 block of the 32×32 token grid into one token (pixel shuffle: 16×16 tokens, 4× wider)
before the projector. Each tile fills 256 placeholders of its own, in tile order, so pruning
keeps a per-tile count in raster order; there are no newlines.

Where the method looks (``feature_stage``):

- ``"after"`` (default): the merged 16×16 grid of 4C-wide tokens, the tokens the LLM receives.
  Every method works here; attention-ranked baselines get, for each merged token, the sum of
  the attention its four parts receive.
- ``"before"``: the 32×32 grid of C-wide tokens (``conf/internvl.yaml``'s features). The
  selector scores the fine tokens and a merged token is worth its best part (max keep logit of
  its 2×2 block); budgets count merged tokens. Needs a score-based method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from vtsel.budget import Budget, mask_from_scores
from vtsel.contract import FeatureContract
from vtsel.integrations.attention import (
    attention_layers,
    encoder_layers,
    feature_layer_index,
    method_attention,
)
from vtsel.integrations.handle import Encoding, PruningHandle
from vtsel.integrations.inputs import placeholder_runs
from vtsel.integrations.masks import Method, kept_tokens, scorer_of
from vtsel.integrations.video import budget_groups

FeatureStage = Literal["after", "before"]


class InternVLPruning(PruningHandle):
    """Pruning handle for ``InternVLForConditionalGeneration`` / ``InternVLModel``.

    Args:
        model: The loaded model.
        method: A ``SelectionMethod`` or an exported ``TokenSelector``.
        budget: How many tokens each tile (or image) keeps.
        feature_stage: ``"after"`` or ``"before"`` pixel shuffle (module doc).
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        budget: Budget,
        feature_stage: FeatureStage = "after",
    ) -> None:
        if feature_stage not in ("after", "before"):
            raise ValueError(f"feature_stage={feature_stage!r}: choose 'after' or 'before'")
        if feature_stage == "before" and scorer_of(method) is None:
            raise ValueError(
                f"feature_stage='before' keeps a merged token by the best score of its 2x2 "
                f"block, which needs per-token scores (TokenSelector or LearnedSelection); "
                f"{type(method).__name__} returns indices: use feature_stage='after'"
            )
        self.feature_stage = feature_stage
        super().__init__(model, method, budget)

    @property
    def image_token_id(self) -> int:
        return self.base.config.image_token_id

    @property
    def fine_side(self) -> int:
        """Tokens per side of a tile before pixel shuffle (32 at 448 px, patch 14)."""
        vision = self.base.config.vision_config
        return _first(vision.image_size) // _first(vision.patch_size)

    @property
    def merged_side(self) -> int:
        """Tokens per side after pixel shuffle (16 at 448 px)."""
        return int(self.fine_side * self.base.config.downsample_ratio)

    @property
    def tokens_per_tile(self) -> int:
        return self.merged_side**2

    def _resolve(self, layer: int | None, strategy: str | None) -> tuple[int, str]:
        config = self.base.config
        layer = config.vision_feature_layer if layer is None else layer
        strategy = config.vision_feature_select_strategy if strategy is None else strategy
        if not isinstance(layer, int):
            raise ValueError(f"InternVL takes one vision_feature_layer, got {layer}")
        return layer, strategy

    def _method_input(self) -> tuple[FeatureContract, str]:
        width = self.base.config.vision_config.hidden_size
        if self.feature_stage == "after":
            side, width = self.merged_side, width * int(1 / self.base.config.downsample_ratio) ** 2
        else:
            side = self.fine_side
        return FeatureContract(width, (side, side)), (
            f"{type(self.model).__name__} gives, per tile {self.feature_stage} pixel shuffle,"
        )

    def _attention_layer(self) -> int:
        return self._resolve(None, None)[0]

    def _geometry(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Tiles per image, read from the runs of placeholders between ``<img>`` and ``</img>``."""
        runs = placeholder_runs(inputs["input_ids"], self.image_token_id)
        if any(run % self.tokens_per_tile for run in runs):
            raise ValueError(f"image placeholder runs {runs} are not multiples of the "
                             f"{self.tokens_per_tile} tokens of a tile")
        return {"tiles_per_image": [run // self.tokens_per_tile for run in runs]}

    def _cache_key(self, geometry: Mapping[str, Any]) -> tuple[Any, ...]:
        return self._resolve(geometry.get("layer"), geometry.get("strategy"))

    def _patched_get_image_features(self) -> Any:
        def get_image_features(
            pixel_values: torch.Tensor,
            vision_feature_layer: int | None = None,
            vision_feature_select_strategy: str | None = None,
            **kwargs: Any,
        ) -> Any:
            """InternVLModel.get_image_features with vtsel token pruning (detach() restores)."""
            return self.image_features(pixel_values, layer=vision_feature_layer,
                                       strategy=vision_feature_select_strategy)

        return get_image_features

    def encode(
        self,
        pixel_values: torch.Tensor,
        clips: Sequence[int] | None = None,
        tiles_per_image: Sequence[int] | None = None,
        layer: int | None = None,
        strategy: str | None = None,
    ) -> Encoding:
        """The kept tokens of all tiles, projected, one per row: (K, 1, D).

        Args:
            pixel_values: (N, 3, S, S) tiles of all images (and video frames), in prompt order.
            clips: Images per clip sharing one budget (``video.budget_groups``).
            tiles_per_image: Tiles of each image; only per-image budgets need it.
            layer, strategy: The model call's overrides of the config's feature layer/strategy.
        """
        layer, strategy = self._resolve(layer, strategy)
        if tiles_per_image is None:
            if self.budget.per_image:
                raise ValueError(
                    "a per-image budget needs to know which tiles form an image, which only "
                    "input_ids tell: call prune_inputs(handle, inputs) before forward/generate"
                )
            tiles_per_image = [1] * pixel_values.shape[0]
        fine, attention = self._tower_features(pixel_values.to(self.base.dtype), layer, strategy)
        merged = self._merge(fine)  # (N, L', 4C)
        candidates = torch.ones(merged.shape[:2], dtype=torch.bool, device=merged.device)
        groups = budget_groups(list(tiles_per_image), clips)
        if self.feature_stage == "after":
            if attention is not None:  # a merged token receives what its 4 parts receive
                maps = attention.reshape(-1, attention.shape[-1], 1)  # (N*maps, L, 1)
                attention = self._merge(maps).sum(dim=-1).view(*attention.shape[:-1], -1)
            side = self.merged_side
            keep, merged = kept_tokens(self.method, merged, (side, side), candidates, groups,
                                       self.budget, attention)  # VisionZip's come merged
        else:
            fine_scores = scorer_of(self.method).scores(fine)  # (N, L)
            block_scores = self._merge(fine_scores[..., None]).amax(dim=-1)  # (N, L')
            keep = mask_from_scores(block_scores, self.budget, candidates, groups)
        projected = self.base.multi_modal_projector(merged[keep])  # (K, D) tile by tile
        # (K, 1, D): one entry per token, so generate()'s beam expansion, which regroups entries
        # by each prompt's placeholder count, splits tiles of any kept counts at prompt bounds
        features = projected[:, None]
        return Encoding(features, [self.tokens_per_tile] * len(keep), keep.sum(dim=1).tolist())

    def _tower_features(
        self, pixel_values: torch.Tensor, layer: int, strategy: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tiles' tokens before pixel shuffle (N, L, C) as InternVL takes them, and the attention
        the method ranks by if any, (N, L) or (N, 2, L) (``attention.method_attention``)."""
        tower = self.base.vision_tower
        index = feature_layer_index(layer, tower.config.num_hidden_layers)
        needs_attention = getattr(self.method, "needs_attention", False)
        attention_inputs = (attention_layers(self.method, index, tower.config.num_hidden_layers)
                            if needs_attention else [])  # layer i's input is hidden_states[i]
        wanted = ([] if layer == -1 else [index]) + attention_inputs
        outputs = tower(pixel_values=pixel_values, output_hidden_states=wanted or False,
                        return_dict=True)
        hidden = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[index]
        attention = None
        if needs_attention:
            attention = method_attention(self.method, encoder_layers(tower),
                                         outputs.hidden_states, index)
        return (hidden[:, 1:] if strategy == "default" else hidden), attention

    def _merge(self, per_token: torch.Tensor) -> torch.Tensor:
        """(N, side², X) on the fine grid -> (N, L', 4X) with the model's own pixel shuffle."""
        tiles, _, channels = per_token.shape
        side = self.fine_side
        grid = per_token.reshape(tiles, side, side, channels)
        merged = self.base.pixel_shuffle(grid, scale_factor=self.base.config.downsample_ratio)
        return merged.reshape(tiles, self.tokens_per_tile, -1)


def _first(size: int | Sequence[int]) -> int:
    """The height of a size given as an int or as (height, width); tiles are square."""
    return size if isinstance(size, int) else size[0]
