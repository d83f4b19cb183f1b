"""Tiny random-weight LLaVA-NeXT and InternVL models with their processors, built offline.

Tests and benchmarks need the real transformers classes (model, image processor, tokenizer)
without a download: the models come from small configs with seeded random weights, and the
tokenizer is word-level over the caller's vocabulary, its image tokens special. What differs
between callers is a parameter: tower and LLM sizes, crop, tile and patch sizes, the anyres
canvases, the vocabulary and a chat template. Callers keep their own geometry, which is what
their selectors and assertions depend on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

# A vocabulary for hand-written prompts: the image tokens of both families and a few words.
WORDS = ("<pad>", "<unk>", "<image>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
         "describe", "the", "picture", "what", "is", "this")
# The special tokens each family's processor writes into a prompt.
LLAVA_IMAGE_TOKENS = {"image_token": "<image>"}
INTERNVL_IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
WEIGHTS_SEED = 0


@dataclass(frozen=True)
class Stack:
    """Sizes of a tiny transformer: a vision tower or an LLM."""

    width: int
    layers: int
    heads: int
    kv_heads: int | None = None
    """LLMs: key/value heads (grouped-query attention); None gives one per query head."""
    intermediate: int | None = None
    """MLP width; None gives 2 x width."""

    @property
    def mlp_width(self) -> int:
        return self.intermediate or 2 * self.width


def word_tokenizer(
    words: Sequence[str],
    bos_token: str | None = None,
    eos_token: str | None = None,
    **image_tokens: str,
) -> PreTrainedTokenizerFast:
    """A tokenizer whose ids are the positions in ``words`` (which hold ``<unk>`` and ``<pad>``).

    Words are split at white space only, so chat words such as ``USER:`` stay whole; padding is
    on the left, as batched generation needs. ``image_tokens`` are the processor's special
    tokens by role (``LLAVA_IMAGE_TOKENS``, ``INTERNVL_IMAGE_TOKENS``).
    """
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>", bos_token=bos_token,
        eos_token=eos_token, padding_side="left", extra_special_tokens=image_tokens,
    )


def chat_template(image_token: str) -> str:
    """A one-turn Jinja template: ``USER: <image token> <text> ASSISTANT:``."""
    return (
        "{% for message in messages %}USER: {% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_token + " {% else %}{{ part['text'] }}"
        "{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )


def text_config(
    config_class: type[PretrainedConfig],
    llm: Stack,
    tokenizer: PreTrainedTokenizerFast,
    vocab_size: int | None,
) -> PretrainedConfig:
    """An LLM config of ``llm``'s sizes with the tokenizer's pad, bos and eos ids (those it has).

    ``vocab_size`` None gives the tokenizer's; a larger one only widens the embedding and the
    LM head (a benchmark's realistic cost), the tokenizer never reaches the extra rows.
    """
    token_ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                 "eos_token_id": tokenizer.eos_token_id}
    return config_class(
        vocab_size=vocab_size or len(tokenizer), hidden_size=llm.width,
        intermediate_size=llm.mlp_width, num_hidden_layers=llm.layers,
        num_attention_heads=llm.heads, num_key_value_heads=llm.kv_heads or llm.heads,
        **{name: value for name, value in token_ids.items() if value is not None},
    )


def pixel_statistics(norm: float | None) -> dict[str, list[float]]:
    """``image_mean`` = ``image_std`` = ``norm`` for every channel; None keeps CLIP's defaults."""
    return {} if norm is None else {"image_mean": [norm] * 3, "image_std": [norm] * 3}


def tiny_llava_next(
    tokenizer: PreTrainedTokenizerFast,
    tower: Stack,
    llm: Stack,
    crop: int,
    patch: int,
    pinpoints: list[list[int]],
    pixel_norm: float | None = None,
    template: str | None = None,
    vocab_size: int | None = None,
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """(model, processor): a CLIP tower, a Llama LLM, anyres over ``pinpoints``; eval, SDPA.

    Each ``crop``-px crop is a (crop/patch)² grid of ``tower.width``-wide tokens (LLaVA-NeXT:
    the penultimate layer, CLS dropped). The tokenizer needs ``LLAVA_IMAGE_TOKENS``. Weights are
    seeded by seeding torch's global generator.
    """
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=tower.width, intermediate_size=tower.mlp_width,
            num_hidden_layers=tower.layers, num_attention_heads=tower.heads, image_size=crop,
            patch_size=patch,
        ),
        text_config=text_config(LlamaConfig, llm, tokenizer, vocab_size),
        image_token_id=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKENS["image_token"]),
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
        vision_feature_select_strategy="default", attn_implementation="sdpa",
    )
    torch.manual_seed(WEIGHTS_SEED)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=pinpoints, **pixel_statistics(pixel_norm),
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by "default"
        chat_template=template,
    )
    return model, processor


def tiny_internvl(
    tokenizer: PreTrainedTokenizerFast,
    tower: Stack,
    llm: Stack,
    tile: int,
    patch: int,
    pixel_norm: float | None = None,
    template: str | None = None,
) -> tuple[InternVLForConditionalGeneration, InternVLProcessor]:
    """(model, processor): an InternViT tower, a Qwen2 LLM, up to 4 tiles plus a thumbnail;
    eval, SDPA.

    Each ``tile``-px tile is a (tile/patch)² grid of ``tower.width``-wide tokens, pixel-shuffled
    by 0.5 into a (tile/patch/2)² grid of 4·width-wide tokens, what the LLM receives. The
    tokenizer needs ``INTERNVL_IMAGE_TOKENS``. Weights are seeded by seeding torch's global
    generator.
    """
    tokens_per_tile = (tile // patch // 2) ** 2  # after the 0.5 pixel shuffle
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=tower.width, intermediate_size=tower.mlp_width,
            num_hidden_layers=tower.layers, num_attention_heads=tower.heads,
            image_size=[tile, tile], patch_size=[patch, patch],
        ),
        text_config=text_config(Qwen2Config, llm, tokenizer, None),
        image_token_id=tokenizer.convert_tokens_to_ids(
            INTERNVL_IMAGE_TOKENS["context_image_token"]),
        image_seq_length=tokens_per_tile, downsample_ratio=0.5, attn_implementation="sdpa",
    )
    torch.manual_seed(WEIGHTS_SEED)
    model = InternVLForConditionalGeneration(config).eval()
    size = {"height": tile, "width": tile}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, max_patches=4,
                                              **pixel_statistics(pixel_norm)),
        video_processor=InternVLVideoProcessor(size=size, **pixel_statistics(pixel_norm)),
        tokenizer=tokenizer, image_seq_length=tokens_per_tile, chat_template=template,
    )
    return model, processor
