"""Shorten the image placeholders of processor outputs to the tokens pruning keeps.

A processor writes one placeholder token per visual token the unpruned model produces; after
pruning, each image (or tile) fills fewer. Every tensor with one entry per prompt token
(``input_ids``, ``attention_mask``, ``token_type_ids``, ``mm_token_type_ids``, ``labels``) is cut
the same way and the rows are padded again on the side the processor padded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import BatchFeature

DEFAULT_FILL = {"labels": -100}  # what pads a key when the input had no padding to copy


def resize_placeholders(
    inputs: Mapping[str, Any],
    image_token_id: int,
    full_tokens: Sequence[int],
    kept_tokens: Sequence[int],
    pad_token_id: int,
) -> Mapping[str, Any]:
    """``inputs`` with unit u's ``full_tokens[u]`` placeholders cut to its first ``kept_tokens[u]``.

    Units (images for LLaVA-NeXT, tiles for InternVL) own consecutive runs of placeholders in
    prompt order across the batch, as the model's ``masked_scatter`` fills them. Positions with
    ``attention_mask`` 0 are the old padding; they are dropped and each row is padded again to
    the new longest row, on the left if the input was left-padded or unpadded (what ``generate``
    needs), else on the right.

    Raises:
        ValueError: The placeholders in ``input_ids`` do not add up to the images' tokens
            (not this model's processor, or pruned twice), or a key cannot be carried over.
    """
    if "position_ids" in inputs:
        raise ValueError("inputs carry position_ids, which pruning would invalidate: drop them "
                         "and let the model derive positions from attention_mask")
    input_ids = inputs["input_ids"]  # (B, T)
    is_placeholder = input_ids == image_token_id  # (B, T)
    if int(is_placeholder.sum()) != sum(full_tokens):
        raise ValueError(
            f"input_ids hold {int(is_placeholder.sum())} image tokens (id {image_token_id}) but "
            f"the images take {sum(full_tokens)} unpruned: were they built by this model's "
            f"processor from these pixel_values, and not pruned already?"
        )
    keep_position = ~is_placeholder
    keep_position[is_placeholder] = _kept_placeholders(is_placeholder, full_tokens, kept_tokens)
    attention_mask = inputs.get("attention_mask", torch.ones_like(input_ids))
    carried = keep_position & attention_mask.bool()  # (B, T) positions the new rows keep
    left = _left_padded(attention_mask)
    length = int(carried.sum(dim=1).max())
    resized = dict(inputs)
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.shape == input_ids.shape:
            padding = value[~attention_mask.bool()]  # (n_pad,) what the processor padded with
            fill = pad_token_id if key == "input_ids" else DEFAULT_FILL.get(key, 0)
            fill = padding[0].item() if len(padding) else fill
            resized[key] = _repad(value, carried, length, fill, left)
    return BatchFeature(resized) if isinstance(inputs, BatchFeature) else resized


def _kept_placeholders(
    is_placeholder: torch.Tensor, full_tokens: Sequence[int], kept_tokens: Sequence[int]
) -> torch.Tensor:
    """(P,) bool over the placeholders in row-major order: the first kept of each unit's run."""
    device = is_placeholder.device
    full = torch.tensor(list(full_tokens), device=device)  # (U,)
    kept = torch.tensor(list(kept_tokens), device=device)  # (U,)
    unit_of = torch.repeat_interleave(torch.arange(len(full), device=device), full)  # (P,)
    starts = full.cumsum(0) - full  # (U,) first placeholder of each unit
    within = torch.arange(unit_of.numel(), device=device) - starts[unit_of]  # (P,)
    row_of = is_placeholder.nonzero()[:, 0]  # (P,)
    ends = starts + full - 1
    nonempty = full > 0
    if (row_of[starts[nonempty]] != row_of[ends[nonempty]]).any():
        raise ValueError("an image's placeholder tokens run across two prompts of the batch: the "
                         "input_ids do not match the images' token counts")
    return within < kept[unit_of]


def _left_padded(attention_mask: torch.Tensor) -> bool:
    """Whether rows are padded on the left; unpadded input counts as left (generation's side)."""
    return not bool((attention_mask[:, -1] == 0).any())


def _repad(
    value: torch.Tensor, carried: torch.Tensor, length: int, fill: Any, left: bool
) -> torch.Tensor:
    """Rows of ``value`` (B, T) at ``carried`` (B, T), each padded with ``fill`` to ``length``."""
    rows = []
    for row, keep in zip(value, carried, strict=True):
        kept = row[keep]  # (t,)
        pad = kept.new_full((length - kept.shape[0],), fill)
        rows.append(torch.cat([pad, kept] if left else [kept, pad]))
    return torch.stack(rows)


def placeholder_runs(input_ids: torch.Tensor, image_token_id: int) -> list[int]:
    """Lengths of the runs of consecutive placeholders (B, T), in prompt order across the batch."""
    runs: list[int] = []
    for row in input_ids == image_token_id:
        edges = torch.nn.functional.pad(row.int(), (1, 1)).diff()  # +1 where a run starts
        starts, ends = (edges == 1).nonzero(), (edges == -1).nonzero()
        runs += (ends - starts).flatten().tolist()
    return runs
