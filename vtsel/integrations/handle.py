"""What every model family shares: patching ``get_image_features``, the encoding cache, the
placeholder adjustment and ``detach``.

Where the hook sits: Hugging Face VLMs compute image tokens in one method of the base model,
``get_image_features`` (vision tower, feature layer, projector, and for LLaVA-NeXT the anyres
packing); ``forward`` scatters its output into the placeholder tokens, and ``generate`` calls it
once before prefill. A handle shadows that method on the model *instance* (the class is
untouched, so other models are not affected) with one that runs the tower, lets the method
choose, projects only the kept tokens and lays them out; ``detach`` deletes the shadow.

The number of placeholders depends on what is kept (thresholds, per-image budgets), so
``prune_inputs`` encodes the images itself and remembers the result for those ``pixel_values``;
the model's own call then reuses it instead of running the tower twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vtsel.budget import Budget
from vtsel.contract import FeatureContract
from vtsel.integrations.attention import (
    attention_layers,
    attention_parts,
    encoder_layers,
    feature_layer_index,
)
from vtsel.integrations.inputs import resize_placeholders
from vtsel.integrations.masks import Method, check_budget, scorer_of


@dataclass
class Encoding:
    """The images of one batch after pruning, ready for the language model."""

    features: list[torch.Tensor] | torch.Tensor  # what get_image_features returns as pooler_output
    full_tokens: list[int]  # placeholders each unit (image or tile) takes unpruned, in order
    kept_tokens: list[int]  # ... and after pruning; the LLM receives sum(kept_tokens)


@dataclass
class _Cached:
    pixel_values: torch.Tensor
    key: tuple[Any, ...]  # everything else the encoding depends on (image sizes, layer, ...)
    encoding: Encoding


class PruningHandle(ABC):
    """Token pruning attached to one VLM; build it with ``vtsel.integrations.attach``.

    Args:
        model: A loaded ``...ForConditionalGeneration`` (or its base ``...Model``).
        method: A ``SelectionMethod`` or an exported ``TokenSelector``.
        budget: How many visual tokens each crop (or image) keeps.
    """

    def __init__(self, model: nn.Module, method: Method, budget: Budget) -> None:
        self.model = model
        self.base = getattr(model, "model", model)  # holds get_image_features and the tower
        self.method = method
        self.budget = budget
        self.last: Encoding | None = None  # the latest batch encoded, for its token counts
        self._cached: _Cached | None = None
        check_budget(method, budget)
        if getattr(method, "needs_attention", False):
            self._check_attention()
        scorer = scorer_of(method)
        self._check_fits(scorer)
        if scorer is not None:  # the selector scores the tower's output where it lies
            scorer.to(next(self.base.vision_tower.parameters()).device)
        if "get_image_features" in vars(self.base):
            raise ValueError(f"{type(model).__name__} already has token pruning attached: "
                             f"detach that handle first")
        self.base.get_image_features = self._patched_get_image_features()

    @property
    @abstractmethod
    def image_token_id(self) -> int:
        """The placeholder token the processor repeats for every visual token."""

    @abstractmethod
    def _patched_get_image_features(self) -> Any:
        """The stand-in for ``base.get_image_features``, with the same signature."""

    @abstractmethod
    def _method_input(self) -> tuple[FeatureContract, str]:
        """What the method is shown per crop, and where it comes from (``<model> gives, ...``)."""

    @abstractmethod
    def _attention_layer(self) -> int:
        """The vision feature layer the attention-ranked methods read attention around."""

    @abstractmethod
    def _geometry(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """What ``encode`` needs from processor outputs besides ``pixel_values``."""

    @abstractmethod
    def _cache_key(self, geometry: Mapping[str, Any]) -> tuple[Any, ...]:
        """What an encoding depends on besides ``pixel_values``, as the model's call sees it."""

    @abstractmethod
    def encode(
        self, pixel_values: torch.Tensor, clips: Sequence[int] | None = None, **geometry: Any
    ) -> Encoding:
        """Run the tower, choose, project and lay out the kept tokens of a batch."""

    def _check_fits(self, scorer: Any) -> None:
        """Refuse a selector (or grid method) whose width or grid the tower does not produce."""
        tower, gives = self._method_input()
        if scorer is not None:
            tower.check(scorer.contract, "the selector takes", gives,
                        "attach a selector trained on this tower's features")
        elif getattr(self.method, "grid", None) not in (None, tower.grid):
            raise ValueError(f"{self.method.name} was built for grid {self.method.grid}, "
                             f"but {gives} {tower.describe()}")

    def _check_attention(self) -> None:
        """Refuse attention-ranked methods when the feature layer has no attention to read."""
        tower = self.base.vision_tower
        num_layers = tower.config.num_hidden_layers
        index = feature_layer_index(self._attention_layer(), num_layers)
        for layer in attention_layers(self.method, index, num_layers):
            attention_parts(encoder_layers(tower)[layer])

    def prune_inputs(
        self, inputs: Mapping[str, Any], clips: Sequence[int] | None = None
    ) -> Mapping[str, Any]:
        """Processor outputs with the placeholders cut to the kept tokens (see ``prune_inputs``)."""
        if inputs.get("pixel_values") is None:
            return inputs
        geometry = self._geometry(inputs)
        encoding = self._encode_and_remember(inputs["pixel_values"], clips, geometry)
        return resize_placeholders(
            inputs, self.image_token_id, encoding.full_tokens, encoding.kept_tokens,
            self._pad_token_id(),
        )

    def visual_tokens_read(self, input_ids: torch.Tensor) -> list[float]:
        """Visual tokens the LLM read per row of the pruned ``input_ids`` (B, T): its
        placeholders, which every layer reads."""
        return (input_ids == self.image_token_id).sum(dim=1).tolist()

    def image_features(self, pixel_values: torch.Tensor, **geometry: Any) -> Any:
        """``get_image_features``' output for the model's own call: the remembered encoding of
        these pixels if ``prune_inputs`` made one, else a fresh one (images alone per budget)."""
        cached = self._cached
        if cached is None or not _same(cached, pixel_values, self._cache_key(geometry)):
            self._encode_and_remember(pixel_values, None, geometry)
        features = self._cached.encoding.features
        # a fresh output each call: generate() rewrites pooler_output in place when it expands
        return BaseModelOutputWithPooling(
            pooler_output=list(features) if isinstance(features, list) else features
        )

    def detach(self) -> None:
        """Restore the model: remove the patch and forget remembered encodings."""
        vars(self.base).pop("get_image_features", None)
        self._cached = None
        self.last = None

    def __enter__(self) -> PruningHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _encode_and_remember(
        self, pixel_values: torch.Tensor, clips: Sequence[int] | None, geometry: dict[str, Any]
    ) -> Encoding:
        with torch.no_grad():
            encoding = self.encode(pixel_values, clips, **geometry)
        self._cached = _Cached(pixel_values, self._cache_key(geometry), encoding)
        self.last = encoding
        return encoding

    def _pad_token_id(self) -> int:
        """The id that pads rows the pruned input left unpadded (they are masked out anyway)."""
        config = self.model.config
        text_config = getattr(config, "text_config", config)
        for candidate in (getattr(config, "pad_token_id", None),
                          getattr(text_config, "pad_token_id", None)):
            if candidate is not None:
                return int(candidate)
        return 0


def _same(cached: _Cached, pixel_values: torch.Tensor, key: tuple[Any, ...]) -> bool:
    """Whether an encoding was made from these pixels (the same tensor, or an equal copy)."""
    if not _equal(cached.key, key):
        return False
    if cached.pixel_values is pixel_values:
        return True
    other = cached.pixel_values
    return (other.shape == pixel_values.shape and other.dtype == pixel_values.dtype
            and other.device == pixel_values.device and torch.equal(other, pixel_values))


def _equal(first: tuple[Any, ...], second: tuple[Any, ...]) -> bool:
    if len(first) != len(second):
        return False
    for a, b in zip(first, second, strict=True):
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                    and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())):
                return False
        elif a != b:
            return False
    return True
