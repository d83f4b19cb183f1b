"""FastV and PyramidDrop inside real Hugging Face LLaVA-NeXT and InternVL models (tiny configs).

The reference is written from the papers' definitions with the model's own parts: the eager
attention weights of the ranking layer (the ones ``output_attentions`` returns), the top visual
tokens of the last prompt token's row, and the remaining decoder layers run by hand on the kept
positions, one prompt at a time and without a cache. The hooked model runs batched, padded,
with its KV cache, under SDPA and eager; its generated tokens and their logits must be the
reference's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_vlms import (
    INTERNVL_IMAGE_TOKENS,
    LLAVA_IMAGE_TOKENS,
    WORDS,
    Stack,
    tiny_internvl,
    tiny_llava_next,
    word_tokenizer,
)
from vtsel import Budget
from vtsel.integrations import attach, prune_inputs
from vtsel.integrations.llm_attention import last_token_attention
from vtsel.llm_methods import FastV, LLMMethod, PyramidDrop, Stage, kept_count, tokens_by_layer

CROP, PATCH, TILE = 28, 7, 56
PINPOINTS = [[CROP, 2 * CROP], [2 * CROP, CROP], [2 * CROP, 2 * CROP]]
LLM = Stack(width=64, layers=8, heads=4, kv_heads=2)  # 8 layers: PyramidDrop's stages at 2, 4, 6
NEW_TOKENS = 4


def photos(*sizes: tuple[int, int]) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for size in sizes]


@pytest.fixture(scope="module")
def llava() -> tuple[Any, Any]:
    return tiny_llava_next(word_tokenizer(WORDS, **LLAVA_IMAGE_TOKENS), Stack(32, 2, 2), LLM,
                           crop=CROP, patch=PATCH, pinpoints=PINPOINTS, pixel_norm=0.5)


@pytest.fixture(scope="module")
def internvl() -> tuple[Any, Any]:
    return tiny_internvl(word_tokenizer(WORDS, **INTERNVL_IMAGE_TOKENS), Stack(16, 2, 2), LLM,
                         tile=TILE, patch=PATCH, pixel_norm=0.5)


def llava_inputs(processor: Any) -> Any:
    """Two prompts of different lengths and image sizes (52 and 88 visual tokens)."""
    return processor(images=photos((28, 56), (56, 56)),
                     text=["describe <image> the picture", "what is <image> this"],
                     return_tensors="pt", padding=True)


def internvl_inputs(processor: Any) -> Any:
    return processor(images=photos((56, 112), (56, 56)),
                     text=["describe <IMG_CONTEXT> the picture", "what <IMG_CONTEXT>"],
                     return_tensors="pt", padding=True)


@pytest.fixture
def eager(request: pytest.FixtureRequest) -> Any:
    """Switch a model to the eager kernel for one test (the reference reads its weights)."""
    models: list[Any] = []

    def switch(model: Any) -> Any:
        models.append(model)
        model.set_attn_implementation("eager")
        return model

    yield switch
    for model in models:
        model.set_attn_implementation("sdpa")


def generate(model: Any, inputs: Any, **options: Any) -> Any:
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS,
                              output_scores=True, return_dict_in_generate=True, **options)


def llm_embeddings(model: Any, inputs: Any) -> torch.Tensor:
    """The embeddings (B, T, C) the VLM hands its language model, images merged in."""
    seen: list[torch.Tensor] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["inputs_embeds"])

    hook = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


def causal_eager_mask(length: int, dtype: torch.dtype) -> torch.Tensor:
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    return torch.zeros(1, 1, length, length, dtype=dtype).masked_fill(~allowed,
                                                                      torch.finfo(dtype).min)


def reference_logits(
    model: Any, embeds: torch.Tensor, is_image: torch.Tensor, prompt: int, stages: list[Stage]
) -> torch.Tensor:
    """Logits (S, V) of one unpadded sequence (prompt, then generated tokens) under ``stages``,
    by hand: eager attention of the ranking layer, the last prompt token's row averaged over
    heads, its top visual tokens kept (of the prompt's original count), original positions."""
    language_model = model.model.language_model
    positions = torch.arange(embeds.shape[0])  # (S,) original positions of the current tokens
    hidden = embeds[None]  # (1, S, C)
    cos, sin = language_model.rotary_emb(hidden, positions[None])
    images = int(is_image.sum())
    ranked: dict[int, torch.Tensor] = {}  # prune layer -> the original positions it keeps
    for index, layer in enumerate(language_model.layers):
        for stage in [stage for stage in stages if stage.rank_layer == index]:
            rotary = (cos[:, positions], sin[:, positions])
            mask = causal_eager_mask(len(positions), hidden.dtype)
            _, weights = layer.self_attn(layer.input_layernorm(hidden), rotary, mask)
            last = int((positions == prompt - 1).nonzero())
            row = weights[0, :, last].mean(dim=0)  # (S,) heads averaged
            row[~is_image[positions]] = float("-inf")
            ranked[stage.prune_layer] = positions[row.topk(kept_count(images, stage.share)).indices]
        if index in ranked:
            keep = ~is_image[positions] | torch.isin(positions, ranked.pop(index))
            positions, hidden = positions[keep], hidden[:, keep]
        hidden = layer(hidden, attention_mask=causal_eager_mask(len(positions), hidden.dtype),
                       position_embeddings=(cos[:, positions], sin[:, positions]),
                       position_ids=positions[None])
    logits = model.lm_head(language_model.norm(hidden))[0]  # (S', V)
    return logits[positions >= prompt - 1]  # the last prompt token's, then each generated one's


@pytest.mark.parametrize("method", [FastV(), PyramidDrop()], ids=lambda m: m.name)
@pytest.mark.parametrize("family", ["llava", "internvl"])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_generate_matches_the_by_hand_reference_batched_with_cache(
    method: LLMMethod, family: str, kernel: str, request: pytest.FixtureRequest, eager: Any
) -> None:
    model, processor = request.getfixturevalue(family)
    inputs = (llava_inputs if family == "llava" else internvl_inputs)(processor)
    image_token = model.config.image_token_id
    with attach(model, method, Budget(keep=0.5)) as handle:
        if kernel == "eager":
            eager(model)
        result = generate(model, prune_inputs(handle, inputs))
    eager(model)
    prompt_length = inputs["input_ids"].shape[1]
    scores = torch.stack(result.scores, dim=1)  # (B, new, V)
    prompt_embeds = llm_embeddings(model, inputs)  # (B, T, C) per token: padding is dropped below
    with torch.no_grad():
        for row in range(inputs["input_ids"].shape[0]):
            real = inputs["attention_mask"][row].bool()
            generated = result.sequences[row, prompt_length:]  # (new,)
            embeds = torch.cat([prompt_embeds[row][real],
                                model.get_input_embeddings()(generated)])  # (S, C)
            is_image = torch.cat([inputs["input_ids"][row][real] == image_token,
                                  torch.zeros(NEW_TOKENS, dtype=torch.bool)])  # decoded: text
            expected = reference_logits(model, embeds, is_image, int(real.sum()), handle.stages)
            torch.testing.assert_close(scores[row], expected[:NEW_TOKENS], atol=1e-4, rtol=1e-4)
            assert torch.equal(expected[:NEW_TOKENS].argmax(-1), generated)


def test_the_recomputed_row_is_the_eager_kernels_attention(llava: Any, eager: Any) -> None:
    model, processor = llava
    eager(model)
    inputs = llava_inputs(processor)
    with torch.no_grad():
        output = model(**inputs, output_attentions=True, output_hidden_states=True)
    language_model = model.model.language_model
    valid = inputs["attention_mask"].bool()
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, T), as generate numbers them
    for index in (1, 5):
        hidden = output.hidden_states[index]  # input of layer `index`
        rotary = language_model.rotary_emb(hidden, positions)
        with torch.no_grad():
            row = last_token_attention(language_model.layers[index], hidden, rotary, valid)
        expected = output.attentions[index][:, :, -1].mean(dim=1)  # (B, T)
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", [FastV(), PyramidDrop()], ids=lambda m: m.name)
def test_at_keep_one_nothing_changes(llava: Any, method: LLMMethod) -> None:
    model, processor = llava
    inputs = llava_inputs(processor)
    for beams in (1, 2):
        unpruned = generate(model, inputs, num_beams=beams)
        with attach(model, method, Budget(keep=1.0)) as handle:
            pruned = generate(model, prune_inputs(handle, inputs), num_beams=beams)
        assert torch.equal(pruned.sequences, unpruned.sequences)


@pytest.mark.parametrize("method", [FastV(), PyramidDrop()], ids=lambda m: m.name)
def test_every_beam_scores_what_the_reference_gives_its_tokens(
    llava: Any, method: LLMMethod, eager: Any
) -> None:
    """Beam search reorders the pruned caches each step; each returned beam's token
    log-probabilities must still be the by-hand reference's for that beam's sequence."""
    model, processor = llava
    inputs = llava_inputs(processor)
    with attach(model, method, Budget(keep=0.4)) as handle:
        result = generate(model, prune_inputs(handle, inputs), num_beams=3,
                          num_return_sequences=2)
    transition = model.compute_transition_scores(result.sequences, result.scores,
                                                 result.beam_indices)  # (B * 2, new)
    eager(model)
    prompt_length = inputs["input_ids"].shape[1]
    prompt_embeds = llm_embeddings(model, inputs)  # (B, T, C)
    with torch.no_grad():
        for beam, sequence in enumerate(result.sequences):
            row = beam // 2
            real = inputs["attention_mask"][row].bool()
            generated = sequence[prompt_length:]
            embeds = torch.cat([prompt_embeds[row][real],
                                model.get_input_embeddings()(generated)])
            is_image = torch.cat([inputs["input_ids"][row][real] == model.config.image_token_id,
                                  torch.zeros(NEW_TOKENS, dtype=torch.bool)])
            expected = reference_logits(model, embeds, is_image, int(real.sum()), handle.stages)
            log_probs = expected[:NEW_TOKENS].log_softmax(-1)  # (new, V)
            chosen = log_probs.gather(1, generated[:, None])[:, 0]
            torch.testing.assert_close(transition[beam], chosen, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", [FastV(), PyramidDrop()], ids=lambda m: m.name)
def test_each_layer_reads_the_scheduled_visual_tokens(llava: Any, method: LLMMethod) -> None:
    model, processor = llava
    inputs = llava_inputs(processor)
    images = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()  # [52, 88]
    with attach(model, method, Budget(keep=0.3)) as handle:
        generate(model, prune_inputs(handle, inputs))
        read = handle.last.visual_tokens  # (layers, B); detach forgets it
    per_row = [list(row) for row in zip(*read, strict=True)]
    assert per_row == [tokens_by_layer(handle.stages, LLM.layers, count) for count in images]
    average = sum(per_row[1]) / (LLM.layers * images[1])
    assert average == pytest.approx(0.3, abs=0.02)  # the budget is the layers' average share


def test_detach_restores_the_model(llava: Any) -> None:
    model, processor = llava
    inputs = llava_inputs(processor)
    before = generate(model, inputs).scores
    handle = attach(model, FastV(), Budget(keep=0.3))
    with pytest.raises(ValueError, match="already has LLM pruning attached"):
        attach(model, PyramidDrop(), Budget(keep=0.5))
    generate(model, inputs)
    handle.detach()
    after = generate(model, inputs).scores
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_prompt_without_images_runs_as_the_unpruned_model(llava: Any) -> None:
    model, processor = llava
    inputs = processor.tokenizer(["describe the picture", "what is this"], return_tensors="pt",
                                 padding=True)
    unpruned = generate(model, inputs)
    with attach(model, PyramidDrop(), Budget(keep=0.4)) as handle:
        pruned = generate(model, prune_inputs(handle, inputs))
        assert handle.last is None
        assert handle.visual_tokens_read(inputs["input_ids"]) == [0, 0]
    assert torch.equal(pruned.sequences, unpruned.sequences)


def test_bad_budgets_and_kernels_are_refused(llava: Any, eager: Any) -> None:
    model, _ = llava
    with pytest.raises(ValueError, match=r"give Budget\(keep=...\)"):
        attach(model, FastV(), Budget(k=10))
    with pytest.raises(ValueError, match=r"fastv at keep 0.2: its first 2 of 8 layers"):
        attach(model, FastV(), Budget(keep=0.2))
    with pytest.raises(ValueError, match=r"pdrop at keep 0.25: .*2 of 8 layers"):
        attach(model, PyramidDrop(), Budget(keep=0.25))
    with pytest.raises(ValueError, match="takes no family options"):
        attach(model, FastV(), Budget(keep=0.5), newline_rows="kept")
    eager(model)  # restored to SDPA after the test
    model.set_attn_implementation("flex_attention")
    with pytest.raises(ValueError, match="the LLM runs 'flex_attention'"):
        attach(model, FastV(), Budget(keep=0.5))


def test_schedules_follow_the_papers() -> None:
    assert FastV().schedule(32, 1.0) == [Stage(1, 2, 1.0)]
    (stage,) = FastV().schedule(32, 0.5)
    assert stage.share == pytest.approx((0.5 * 32 - 2) / 30)
    stages = PyramidDrop().schedule(32, 0.5)
    assert [s.prune_layer for s in stages] == [8, 16, 24]  # PyramidDrop's LLaVA layers
    ratio = stages[0].share
    assert [s.share for s in stages] == pytest.approx([ratio, ratio**2, ratio**3])
    assert (1 + ratio + ratio**2 + ratio**3) / 4 == pytest.approx(0.5)
    assert PyramidDrop().average_share(32, 0.5) == pytest.approx((1 + 0.5 + 0.25 + 0.125) / 4)
