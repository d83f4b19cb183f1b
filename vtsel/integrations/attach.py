"""``attach`` picks the handle for a model's family; ``prune_inputs`` is the processor-side half."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from transformers import (
    InternVLForConditionalGeneration,
    InternVLModel,
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
)

from vtsel.integrations.handle import PruningHandle
from vtsel.integrations.internvl import InternVLPruning
from vtsel.integrations.llava_next import LlavaNextPruning
from vtsel.integrations.llm_pruning import LLMPruningHandle
from vtsel.integrations.masks import Budget, Method
from vtsel.llm_methods import LLMMethod

FAMILIES: dict[tuple[type[nn.Module], ...], type[PruningHandle]] = {
    (LlavaNextForConditionalGeneration, LlavaNextModel): LlavaNextPruning,
    (InternVLForConditionalGeneration, InternVLModel): InternVLPruning,
}


def attach(
    model: nn.Module, method: Method | LLMMethod, budget: Budget, **options: Any
) -> PruningHandle | LLMPruningHandle:
    """Make ``model`` feed its LLM only the visual tokens ``method`` keeps under ``budget``.

    Args:
        model: A loaded ``LlavaNextForConditionalGeneration`` or
            ``InternVLForConditionalGeneration`` (or their base ``...Model``), any attention
            implementation.
        method: A ``SelectionMethod`` or an exported ``TokenSelector`` (chosen before the LLM),
            or ``FastV()`` / ``PyramidDrop()`` (``vtsel.llm_methods``: dropped inside the LLM).
        budget: ``Budget(keep=...)``, ``Budget(k=...)`` or ``Budget(threshold=...)``,
            optionally ``per_image=True``; FastV and PyramidDrop take ``keep`` alone, the
            share of visual tokens the LLM's layers read on average.
        options: Family options: ``newline_rows`` (LLaVA-NeXT), ``feature_stage`` (InternVL).

    Returns:
        The handle: ``prune_inputs`` for processor outputs, ``detach`` (or ``with``) to undo.

    Raises:
        ValueError: The model family is not supported, the selector's width or grid does not
            match the tower, or the budget needs scores the method does not give.
    """
    for model_types, handle_type in FAMILIES.items():
        if not isinstance(model, model_types):
            continue
        if isinstance(method, LLMMethod):
            if options:
                raise ValueError(f"{method.name} takes no family options; got {sorted(options)}")
            return LLMPruningHandle(model, method, budget)
        return handle_type(model, method, budget, **options)
    supported = ", ".join(kind.__name__ for kinds in FAMILIES for kind in kinds)
    raise ValueError(f"token pruning supports {supported}; got a {type(model).__name__}")


def prune_inputs(
    handle: PruningHandle | LLMPruningHandle,
    inputs: Mapping[str, Any],
    clips: Sequence[int] | None = None,
) -> Mapping[str, Any]:
    """Processor outputs made to fit the pruned model: two lines change in a pipeline.

    Encodes the images once (the model's own call reuses the result for the same
    ``pixel_values``) and cuts every image's placeholder tokens to the number it keeps, in
    ``input_ids``, ``attention_mask`` and every other per-token tensor, re-padding the batch.
    FastV and PyramidDrop hand the inputs on unchanged: the LLM drops tokens itself.

    Args:
        handle: What ``attach`` returned.
        inputs: The processor's output (a ``BatchFeature`` or a dict of tensors).
        clips: For video, the number of consecutive images that are frames of one clip (in
            prompt order across the batch); with ``Budget(per_image=True)`` each clip shares one
            budget. None: every image is its own.
    """
    return handle.prune_inputs(inputs, clips)
