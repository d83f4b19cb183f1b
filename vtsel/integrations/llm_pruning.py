"""FastV and PyramidDrop run inside a Hugging Face VLM's language model.

The LLM receives every visual token; hooks on its decoder layers drop them at depth
(``vtsel.llm_methods`` holds the schedules):

- A pre-hook on the VLM's base model sees each call's ``input_ids``: at prefill (an empty
  cache) it finds the visual tokens (the image placeholder id) and the padding; at decode it
  notes the new tokens.
- At prefill, the pre-hook of a stage's ranking layer recomputes the last token's attention over
  the current sequence from the layer's q/k (``llm_attention``; any attention kernel), and the
  pre-hook of its pruning layer keeps every text token (padding dropped) and the top visual
  tokens, gathering the hidden states, rotary embeddings and position ids. Kept tokens keep
  their original positions (FastV's choice; PyramidDrop's code renumbers them, which shortens
  the rotary distance between the text after the image and everything before the dropped
  ones). Rows that keep different numbers are re-padded on the left, so every row's last token
  stays last.
- Every later layer gets the mask of its shorter sequence, at prefill and at each decode step:
  the KV cache of a pruned layer holds only its kept tokens, plus those decoded since.

Works with ``generate`` (greedy, sampling, beam search: beams of one prompt keep the same
tokens, so a beam reorder needs nothing) and batches of prompts of different lengths, with the
eager, SDPA and FlashAttention kernels and the default dynamic cache. Inference only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from vtsel.budget import Budget
from vtsel.integrations.llm_attention import check_decoder_layer, last_token_attention
from vtsel.llm_methods import LLMMethod, Stage, kept_count

KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
_ATTACHED = "_vtsel_llm_pruning"


@dataclass
class _Sequence:
    """The tokens a run of decoder layers reads at prefill, and so the keys they cache."""

    valid: torch.Tensor  # (B, S) bool, False at padding
    is_image: torch.Tensor  # (B, S) bool
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # rotary cos, sin: (B, S, d) each
    position_ids: torch.Tensor  # (B, S)
    decoded: list[torch.Tensor] = field(default_factory=list)  # (B, q) valid, per decode call

    def gather(self, index: torch.Tensor, valid: torch.Tensor) -> _Sequence:
        """The tokens at ``index`` (B, S') of each row, ``valid`` (B, S') where kept."""
        cos, sin = self.position_embeddings
        return _Sequence(valid, self.is_image.gather(1, index) & valid,
                         (_gather_rows(cos, index), _gather_rows(sin, index)),
                         self.position_ids.gather(1, index))

    def key_valid(self) -> torch.Tensor:
        """(B, S + decoded) validity of the keys a layer reading this sequence has cached."""
        return torch.cat([self.valid, *self.decoded], dim=1)


@dataclass(frozen=True)
class LLMPruned:
    """What the LLM read in the latest prefill: visual tokens per layer, per prompt row."""

    visual_tokens: list[list[int]]  # (layers, B)


class LLMPruningHandle:
    """FastV or PyramidDrop attached to one VLM; build it with ``vtsel.integrations.attach``.

    Args:
        model: A loaded ``...ForConditionalGeneration`` (or its base ``...Model``) whose LLM
            has Llama-family decoder layers.
        method: ``FastV()`` or ``PyramidDrop()``.
        budget: ``Budget(keep=ρ)``: the visual tokens the LLM reads, averaged over its layers,
            are ρ of all (``vtsel.llm_methods``).
    """

    def __init__(self, model: nn.Module, method: LLMMethod, budget: Budget) -> None:
        if budget.keep is None or budget.per_image:
            raise ValueError(f"{method.name} prunes inside the LLM by a share of each prompt's "
                             f"visual tokens: give Budget(keep=...), got {budget}")
        self.model = model
        self.base = getattr(model, "model", model)
        language_model = getattr(self.base, "language_model", None)
        if language_model is None or not hasattr(language_model, "layers"):
            raise ValueError(f"{type(model).__name__} has no language_model.layers to prune in")
        self.layers: nn.ModuleList = language_model.layers
        self._llm_config = language_model.config
        self.method = method
        self._check_kernel()
        self.budget = budget
        self.stages: list[Stage] = method.schedule(len(self.layers), budget.keep)
        for stage in self.stages:
            check_decoder_layer(self.layers[stage.rank_layer], stage.rank_layer)
        if _ATTACHED in vars(self.base):
            raise ValueError(f"{type(model).__name__} already has LLM pruning attached: detach "
                             f"that handle first")
        self.image_token_id = int(self.base.config.image_token_id)
        self._reset()
        first = self.stages[0].rank_layer
        self._hooks = [self.base.register_forward_pre_hook(self._on_call, with_kwargs=True)] + [
            self.layers[index].register_forward_pre_hook(partial(self._on_layer, index),
                                                         with_kwargs=True)
            for index in range(first, len(self.layers))
        ]
        vars(self.base)[_ATTACHED] = self

    def prune_inputs(
        self, inputs: Mapping[str, Any], clips: Sequence[int] | None = None
    ) -> Mapping[str, Any]:
        """The processor's outputs unchanged: the LLM receives every visual token and drops
        them itself (the same call as for tower methods, so pipelines need not tell them apart)."""
        return inputs

    def visual_tokens_read(self, input_ids: torch.Tensor) -> list[float]:
        """Visual tokens the LLM read per row of the latest prefill, averaged over its layers
        (what a budget of ``keep`` fixes); the placeholders of ``input_ids`` (B, T) if that
        prefill had no image."""
        if self.last is None:
            return (input_ids == self.image_token_id).sum(dim=1).tolist()
        layers = len(self.last.visual_tokens)
        return [sum(row) / layers for row in zip(*self.last.visual_tokens, strict=True)]

    def detach(self) -> None:
        """Restore the model: remove the hooks and forget the run's state."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        vars(self.base).pop(_ATTACHED, None)
        self._reset()

    def __enter__(self) -> LLMPruningHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @property
    def kernel(self) -> str:
        """The LLM's attention kernel now (``set_attn_implementation`` may change it)."""
        return self._llm_config._attn_implementation

    def _check_kernel(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"{self.method.name} builds its masks for the {', '.join(KERNELS)} "
                             f"kernels; the LLM runs {self.kernel!r}")

    def _reset(self) -> None:
        self.last: LLMPruned | None = None  # set at each prune of a prefill
        self._active = False
        self._prefill = False
        self._prompt: tuple[torch.Tensor, torch.Tensor] | None = None  # is_image, valid (B, T)
        self._sequences: list[_Sequence] = []  # after each stage's pruning, in order
        self._scores: torch.Tensor | None = None  # (B, S) the next stage's ranking
        self._decode_masks: dict[int, Any] = {}

    def _on_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Base model pre-hook: a prefill starts the run, a decode step extends its keys."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if cache is None or cache.get_seq_length() == 0:
            self._reset()
            self._check_kernel()
            if cache is not None and not isinstance(cache, DynamicCache):
                raise ValueError(f"{self.method.name} keeps fewer keys in later layers, which "
                                 f"a {type(cache).__name__} cannot hold; use the default cache")
            if input_ids is None:
                raise ValueError(f"{self.method.name} finds the visual tokens by their id in "
                                 f"input_ids; the call gave inputs_embeds only")
            is_image = input_ids == self.image_token_id  # (B, T)
            valid = torch.ones_like(is_image) if mask is None else mask.bool()
            self._prompt = (is_image, valid)
            self._active = bool(is_image.any())
            self._prefill = True
            return
        self._prefill = False
        self._decode_masks = {}
        if not self._active or not self._sequences:
            return
        new = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
        valid = self._sequences[0].valid
        new_valid = (torch.ones(valid.shape[0], new, dtype=torch.bool, device=valid.device)
                     if mask is None else mask[:, -new:].bool())  # (B, q)
        for sequence in self._sequences:
            sequence.decoded.append(new_valid)

    def _on_layer(
        self, index: int, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Decoder-layer pre-hook: rank, prune, and hand the layer its sequence's mask."""
        if not self._active:
            return None
        hidden = args[0] if args else kwargs.pop("hidden_states")  # (B, S, C)
        if not self._prefill:
            done = sum(stage.prune_layer <= index for stage in self.stages)
            if done == 0:
                return None
            if done not in self._decode_masks:
                keys = self._sequences[done - 1].key_valid()
                self._decode_masks[done] = _mask(keys, hidden.shape[1], self.kernel, hidden.dtype)
            kwargs["attention_mask"] = self._decode_masks[done]
            return (hidden, *args[1:]), kwargs
        current = self._sequences[-1] if self._sequences else self._unpruned(hidden, kwargs)
        upcoming = self.stages[len(self._sequences)] if len(self._sequences) < len(self.stages) \
            else None
        if upcoming is not None and upcoming.rank_layer == index:
            self._scores = last_token_attention(layer, hidden, current.position_embeddings,
                                                current.valid)  # (B, S)
        if upcoming is not None and upcoming.prune_layer == index:
            index_kept, valid = self._kept(current, upcoming)  # (B, S') each
            hidden = _gather_rows(hidden, index_kept)
            current = current.gather(index_kept, valid)
            self._sequences.append(current)
            self._record()
        if self._sequences:
            kwargs["attention_mask"] = _mask(current.valid, current.valid.shape[1], self.kernel,
                                             hidden.dtype)
            kwargs["position_embeddings"] = current.position_embeddings
            kwargs["position_ids"] = current.position_ids
        return (hidden, *args[1:]), kwargs

    def _unpruned(self, hidden: torch.Tensor, kwargs: dict[str, Any]) -> _Sequence:
        """The full prompt as the first hooked layer receives it."""
        is_image, valid = self._prompt
        batch, length = valid.shape
        cos, sin = kwargs["position_embeddings"]
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(length, device=hidden.device)[None]
        return _Sequence(valid, is_image,
                         (cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)),
                         position_ids.expand(batch, -1))

    def _kept(self, current: _Sequence, stage: Stage) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, S') each row keeps (text and its top visual tokens), right-aligned in
        their order, and which of them are real (False: the new left padding)."""
        images = current.is_image & current.valid  # (B, S)
        prompt_images = self._prompt[0].sum(dim=1).tolist()  # (B,) visual tokens before pruning
        budget = torch.tensor([kept_count(count, stage.share) for count in prompt_images],
                              device=images.device)  # (B,)
        ranking = self._scores.masked_fill(~images, float("-inf"))
        order = ranking.argsort(dim=1, descending=True, stable=True)  # (B, S)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        keep = (current.valid & ~current.is_image) | (images & (rank < budget[:, None]))
        length = int(keep.sum(dim=1).max())
        index = torch.sort(keep.int(), dim=1, stable=True).indices[:, -length:]  # (B, S')
        return index, keep.gather(1, index)

    def _record(self) -> None:
        """``last``: the visual tokens each layer read, per row, given the stages so far."""
        counts = [self._prompt[0].sum(dim=1).tolist()]
        counts += [sequence.is_image.sum(dim=1).tolist() for sequence in self._sequences]
        per_layer = []
        for index in range(len(self.layers)):
            done = sum(stage.prune_layer <= index for stage in self.stages[:len(self._sequences)])
            per_layer.append(counts[done])
        self.last = LLMPruned(per_layer)


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, S, D) at index (B, S') along the sequence -> (B, S', D)."""
    return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))


def _mask(key_valid: torch.Tensor, queries: int, kernel: str, dtype: torch.dtype) -> torch.Tensor:
    """The mask ``kernel`` takes for the last ``queries`` of ``key_valid`` (B, K) attending
    causally: FlashAttention's (B, K) padding mask, SDPA's (B, 1, q, K) bool, eager's float.

    A padding query that could attend nothing attends everything instead (its output is never
    read), so no row of the softmax is empty.
    """
    if kernel.startswith("flash"):
        return key_valid.long()
    keys = key_valid.shape[1]
    positions = torch.arange(keys, device=key_valid.device)
    causal = positions[None, :] <= positions[keys - queries:, None]  # (q, K)
    allowed = causal[None] & key_valid[:, None, :]  # (B, q, K)
    allowed = (allowed | ~allowed.any(dim=-1, keepdim=True))[:, None]  # (B, 1, q, K)
    if kernel == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return allowed
