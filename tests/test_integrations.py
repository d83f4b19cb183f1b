"""Token pruning inside real Hugging Face LLaVA-NeXT and InternVL models built from tiny configs.

The models, processors and tokenizer are the real transformers classes with random weights
(SDPA attention), built offline; the processors write the placeholder counts, so the unpruned
model running on their output is the reference every pruned run is compared with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
from vtsel.inference import TokenSelector
from vtsel.integrations import attach, prune_inputs
from vtsel.integrations.attention import encoder_layers
from vtsel.methods import LearnedSelection, SelectionMethod, VisionZipStyle, build_method
from vtsel.models import FeatureSelector, SelectorConfig
from vtsel.models.selector import tokens_for_ratio

IMAGE, IMG_CONTEXT = WORDS.index("<image>"), WORDS.index("<IMG_CONTEXT>")
CROP, PATCH = 28, 7  # LLaVA-NeXT: 28-px crops of 4x4 tokens (CLIP-L/14-336 is 336 px, 24x24)
TILE = 56  # InternVL: 56-px tiles, patch 7: 8x8 tokens, 4x4 after pixel shuffle (448: 32 -> 16)
PINPOINTS = [[CROP, 2 * CROP], [2 * CROP, CROP], [2 * CROP, 2 * CROP]]
LLAVA_WIDTH, INTERNVL_WIDTH = 32, 16
LLM = Stack(width=64, layers=2, heads=4, kv_heads=2)


def build_llava_next() -> tuple[Any, Any]:
    """(model, processor): CLIP tower 3x32 at 28 px, Llama LM, anyres up to 2x2 crops."""
    return tiny_llava_next(word_tokenizer(WORDS, **LLAVA_IMAGE_TOKENS),
                           Stack(width=LLAVA_WIDTH, layers=3, heads=2), LLM, crop=CROP,
                           patch=PATCH, pinpoints=PINPOINTS, pixel_norm=0.5)


def build_internvl() -> tuple[Any, Any]:
    """(model, processor): InternViT 2x16 at 56 px, Qwen2 LM, up to 4 tiles + thumbnail."""
    return tiny_internvl(word_tokenizer(WORDS, **INTERNVL_IMAGE_TOKENS),
                         Stack(width=INTERNVL_WIDTH, layers=2, heads=2), LLM, tile=TILE,
                         patch=PATCH, pixel_norm=0.5)


def random_selector(feature_dim: int, side: int) -> TokenSelector:
    """A TokenSelector with random weights for a side x side grid of feature_dim-wide tokens."""
    torch.manual_seed(1)
    config = SelectorConfig(feature_dim, (side, side), dim=16, depth=1, num_heads=2)
    selector = FeatureSelector(config)
    return TokenSelector(selector, {"encoder": f"random-{feature_dim}x{side}"})


def photos(*sizes: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for size in sizes]


@pytest.fixture(scope="module")
def llava() -> tuple[Any, Any]:
    return build_llava_next()


@pytest.fixture(scope="module")
def internvl() -> tuple[Any, Any]:
    return build_internvl()


@contextmanager
def language_model_inputs(model: Any) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Record the embeddings and attention mask each call hands the language model."""
    calls: list[dict[str, torch.Tensor]] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        calls.append({"embeds": kwargs["inputs_embeds"], "mask": kwargs["attention_mask"]})

    hook = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        hook.remove()


def logits(model: Any, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def text_tokens(inputs: Any, image_token: int) -> torch.Tensor:
    """Attended non-image tokens per row (B,) of processor outputs."""
    return ((inputs["input_ids"] != image_token) & inputs["attention_mask"].bool()).sum(dim=1)


def ask_llava(processor: Any, images: list[Image.Image]) -> Any:
    prompts = ["describe <image> the picture", "what is <image> this"][: len(images)]
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)


def ask_internvl(processor: Any, images: list[Image.Image]) -> Any:
    prompts = ["describe <IMG_CONTEXT> the picture", "what is <IMG_CONTEXT> this"][: len(images)]
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.1])
def test_llava_next_feeds_the_llm_the_budgeted_tokens(llava: Any, ratio: float) -> None:
    model, processor = llava
    # 28x56 fits the 1x2 pinpoint: base + 2 crops, a 4x8 stitched grid (4 newlines);
    # 56x56 fits 2x2: base + 4 crops, an 8x8 grid (8 newlines). Neither is letterboxed.
    inputs = ask_llava(processor, photos((28, 56), (56, 56)))
    reference = logits(model, inputs)
    per_crop = tokens_for_ratio(16, ratio)
    expected_visual = torch.tensor([3 * per_crop + 4, 5 * per_crop + 8])

    with attach(model, random_selector(LLAVA_WIDTH, 4), Budget(keep=ratio)) as handle:
        pruned = prune_inputs(handle, inputs)
        with language_model_inputs(model) as calls:
            pruned_logits = logits(model, pruned)
            generated = model.generate(**pruned, max_new_tokens=3, min_new_tokens=3)

    assert torch.equal(calls[0]["mask"].sum(dim=1), text_tokens(inputs, IMAGE) + expected_visual)
    assert calls[1]["embeds"].shape[1] == pruned["input_ids"].shape[1]  # generate's prefill
    assert generated.shape == (2, pruned["input_ids"].shape[1] + 3)
    if ratio == 1.0:
        assert torch.equal(pruned_logits, reference)
    assert torch.equal(logits(model, inputs), reference)  # detached: the model is as before


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.1])
def test_internvl_feeds_the_llm_the_budgeted_tokens(internvl: Any, ratio: float) -> None:
    model, processor = internvl
    inputs = ask_internvl(processor, photos((56, 112), (56, 56)))  # 2 tiles + thumbnail, 1 tile
    reference = logits(model, inputs)
    expected_visual = torch.tensor([3, 1]) * tokens_for_ratio(16, ratio)

    with attach(model, random_selector(4 * INTERNVL_WIDTH, 4), Budget(keep=ratio)) as handle:
        pruned = prune_inputs(handle, inputs)
        with language_model_inputs(model) as calls:
            pruned_logits = logits(model, pruned)
            generated = model.generate(**pruned, max_new_tokens=3, min_new_tokens=3)

    expected_lengths = text_tokens(inputs, IMG_CONTEXT) + expected_visual
    assert torch.equal(calls[0]["mask"].sum(dim=1), expected_lengths)
    assert generated.shape == (2, pruned["input_ids"].shape[1] + 3)
    if ratio == 1.0:
        assert torch.equal(pruned_logits, reference)
    assert torch.equal(logits(model, inputs), reference)


class FirstTokens(SelectionMethod):
    """Keeps each crop's first ``keep`` tokens in raster order and records what it was shown,
    so a test knows exactly which tokens the LLM must receive and in what order."""

    name = "first"

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def _select(self, features: torch.Tensor, keep: int, attention: Any) -> torch.Tensor:
        self.seen.append(features.clone())
        return torch.arange(keep).expand(features.shape[0], keep)


def image_embeddings(call: dict[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """The embeddings (n, D) the language model received at the image placeholders."""
    return call["embeds"][input_ids == input_ids.new_tensor(IMAGE)]


@pytest.mark.parametrize("newline_rows", ["all", "kept"])
def test_llava_next_keeps_raster_order_and_row_newlines(llava: Any, newline_rows: str) -> None:
    model, processor = llava
    inputs = ask_llava(processor, photos((28, 56)))  # base + 2 crops side by side
    crops = inputs["pixel_values"][0, :3]
    with torch.no_grad():  # what LLaVA-NeXT's projector gets: penultimate layer, no CLS
        tower_tokens = model.model.vision_tower(crops, output_hidden_states=True).hidden_states[-2]
        features = tower_tokens[:, 1:]  # (3, 16, 32)
        projected = model.model.multi_modal_projector(features)  # (3, 16, D)
    method = FirstTokens()

    with attach(model, method, Budget(keep=0.5), newline_rows=newline_rows) as handle:
        pruned = prune_inputs(handle, inputs)
        with language_model_inputs(model) as calls:
            logits(model, pruned)

    assert torch.equal(torch.cat(method.seen), features)
    # Each crop keeps its first 8 tokens = its top 2 rows of 4. The stitched 4x8 grid reads
    # row 0 of crop 1 then of crop 2, then row 1 likewise; rows 2 and 3 keep nothing.
    newline = model.model.image_newline[None]
    rows = [torch.cat([projected[1, 4 * r:4 * r + 4], projected[2, 4 * r:4 * r + 4], newline])
            for r in range(2)]
    empty_rows = [newline, newline] if newline_rows == "all" else []
    expected = torch.cat([projected[0, :8], *rows, *empty_rows])
    assert torch.allclose(image_embeddings(calls[0], pruned["input_ids"]), expected, atol=1e-6)


def test_internvl_method_sees_pixel_shuffled_tiles(internvl: Any) -> None:
    model, processor = internvl
    inputs = ask_internvl(processor, photos((56, 56)))
    with torch.no_grad():
        fine = model.model.vision_tower(inputs["pixel_values"]).last_hidden_state[:, 1:]
        merged = model.model.pixel_shuffle(fine.reshape(1, 8, 8, -1)).reshape(1, 16, -1)
        projected = model.model.multi_modal_projector(merged)  # (1, 16, D)
    method = FirstTokens()

    with attach(model, method, Budget(k=5)) as handle:
        pruned = prune_inputs(handle, inputs)
        with language_model_inputs(model) as calls:
            logits(model, pruned)

    assert torch.equal(method.seen[0], merged)
    received = calls[0]["embeds"][pruned["input_ids"] == IMG_CONTEXT]
    assert torch.allclose(received, projected[0, :5], atol=1e-6)


def test_internvl_video_frames_share_one_budget(internvl: Any) -> None:
    model, processor = internvl
    frames = np.stack([np.asarray(image) for image in photos(*[(56, 56)] * 3, seed=3)])
    frames[1] = 128  # a blank frame among two busy ones
    inputs = processor(videos=[frames], text=["describe <video> the picture"],
                       return_tensors="pt")
    selector = random_selector(4 * INTERNVL_WIDTH, 4)
    with torch.no_grad():
        fine = model.model.vision_tower(inputs["pixel_values"]).last_hidden_state[:, 1:]
        merged = model.model.pixel_shuffle(fine.reshape(3, 8, 8, -1)).reshape(3, 16, -1)
        scores = selector.scores(merged)  # (3 frames, 16)
        budget = tokens_for_ratio(48, 0.25)
        kept = torch.zeros(48, dtype=torch.bool)
        kept[scores.flatten().topk(budget).indices] = True  # one top-k over the whole clip
        expected = model.model.multi_modal_projector(merged[kept.view(3, 16)])

    with attach(model, LearnedSelection(selector), Budget(keep=0.25, per_image=True)) as handle:
        pruned = prune_inputs(handle, inputs, clips=[3])
        with language_model_inputs(model) as calls:
            generated = model.generate(**pruned, max_new_tokens=2, min_new_tokens=2)
        assert handle.last.kept_tokens == kept.view(3, 16).sum(dim=1).tolist()

    received = calls[0]["embeds"][pruned["input_ids"] == IMG_CONTEXT]
    assert torch.allclose(received, expected, atol=1e-6)
    assert generated.shape[1] == pruned["input_ids"].shape[1] + 2


def test_llava_next_threshold_keeps_what_scores_above_it(llava: Any) -> None:
    model, processor = llava
    inputs = ask_llava(processor, photos((56, 56), (28, 56)))
    selector = random_selector(LLAVA_WIDTH, 4)
    with torch.no_grad():
        crops = torch.cat([inputs["pixel_values"][0, :5], inputs["pixel_values"][1, :3]])
        hidden = model.model.vision_tower(crops, output_hidden_states=True).hidden_states[-2]
        scores = selector.scores(hidden[:, 1:])  # (8 crops, 16)
    threshold = float(scores.median())
    above = (scores > threshold).sum(dim=1)
    expected_visual = torch.stack([above[:5].sum() + 8, above[5:].sum() + 4])

    with attach(model, selector, Budget(threshold=threshold)) as handle:
        pruned = prune_inputs(handle, inputs)
        with language_model_inputs(model) as calls:
            model.generate(**pruned, max_new_tokens=2, min_new_tokens=2)

    assert torch.equal(calls[0]["mask"].sum(dim=1), text_tokens(inputs, IMAGE) + expected_visual)


def test_letterboxed_images_spend_the_budget_on_what_the_llm_sees(llava: Any) -> None:
    model, processor = llava
    # 40x56 is resized into the 2x2 pinpoint (56x56) as 40x56 and padded 8 px top and bottom.
    # unpad keeps rows 1..6 of the stitched 8x8 grid: 3 visible rows in each of the 4 crops
    # (12 tokens, 6 kept at 50%), plus the base crop's 8 of 16 and 6 newlines.
    inputs = ask_llava(processor, photos((40, 56), (56, 56)))
    reference = logits(model, inputs)
    with attach(model, build_method("uniform", grid=(4, 4)), Budget(keep=1.0)) as handle:
        assert torch.equal(logits(model, prune_inputs(handle, inputs)), reference)
    with attach(model, build_method("uniform", grid=(4, 4)), Budget(keep=0.5)) as handle:
        pruned = prune_inputs(handle, inputs)
        with language_model_inputs(model) as calls:
            model.generate(**pruned, max_new_tokens=2, min_new_tokens=2)
    expected_visual = torch.tensor([8 + 4 * 6 + 6, 5 * 8 + 8])
    assert torch.equal(calls[0]["mask"].sum(dim=1), text_tokens(inputs, IMAGE) + expected_visual)


@pytest.mark.parametrize("family", ["llava", "internvl"])
@pytest.mark.parametrize("name", ["visionzip", "hiprune", "divprune"])
def test_baselines_run_under_sdpa(family: str, name: str, request: pytest.FixtureRequest) -> None:
    model, processor = request.getfixturevalue(family)
    ask, token = (ask_llava, IMAGE) if family == "llava" else (ask_internvl, IMG_CONTEXT)
    inputs = ask(processor, photos((28, 56), (56, 56)))
    method = build_method(name, grid=(4, 4)) if name == "hiprune" else build_method(name)
    with attach(model, method, Budget(keep=0.5)) as handle:
        pruned = prune_inputs(handle, inputs)
        generated = model.generate(**pruned, max_new_tokens=2, min_new_tokens=2)
        kept_tokens, full_tokens = handle.last.kept_tokens, handle.last.full_tokens
    assert generated.shape[1] == pruned["input_ids"].shape[1] + 2
    assert (pruned["input_ids"] == token).sum() == sum(kept_tokens)
    assert sum(kept_tokens) < sum(full_tokens)


class UnmergedVisionZip(VisionZipStyle):
    """VisionZip's kept set handed on as raw tokens: what the integrations gave before."""

    kept_features = SelectionMethod.kept_features


@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_the_llm_reads_visionzips_contextual_tokens_merged(
    family: str, request: pytest.FixtureRequest
) -> None:
    model, processor = request.getfixturevalue(family)
    ask = ask_llava if family == "llava" else ask_internvl
    inputs = ask(processor, photos((28, 56), (56, 56)))
    encodings = []
    for method in (VisionZipStyle(), UnmergedVisionZip()):
        with attach(model, method, Budget(keep=0.5)) as handle:
            prune_inputs(handle, inputs)
            features = handle.last.features
            encodings.append(torch.cat(list(features)) if isinstance(features, list)
                             else features)
    merged, unmerged = encodings  # (T, D) or (K, 1, D): the same kept positions, in order
    assert merged.shape == unmerged.shape
    differs = (merged != unmerged).flatten(1).any(dim=-1)
    # only contextual tokens change: round(54/64 * k) of every crop's k are dominant
    assert 0 < int(differs.sum()) <= int(0.25 * differs.numel())


def test_llava_next_merges_visionzips_contextual_tokens_by_the_feature_layers_keys(
    llava: Any,
) -> None:
    """The base crop's tokens, by hand: CLS attention and head-averaged keys of the layer that
    outputs the features (vision_feature_layer -2), VisionZip's merge on those keys, projected.
    12 of 16 tokens: 10 dominant, 2 contextual, so the keys decide which target each joins."""
    model, processor = llava
    inputs = ask_llava(processor, photos((28, 56)))
    with attach(model, VisionZipStyle(), Budget(keep=0.75)) as handle:
        prune_inputs(handle, inputs)
        handed_on = handle.last.features[0][:tokens_for_ratio(16, 0.75)]  # base crop's, first
    tower = model.model.vision_tower
    with torch.no_grad():
        hidden = tower(inputs["pixel_values"][0][:1], output_hidden_states=True).hidden_states
        layer = encoder_layers(tower)[1]  # its output is hidden_states[-2]
        normed = layer.layer_norm1(hidden[1])  # (1, 17, C)
        heads = layer.self_attn.num_heads
        query = layer.self_attn.q_proj(normed[:, :1]).view(1, 1, heads, -1).transpose(1, 2)
        key = layer.self_attn.k_proj(normed).view(1, 17, heads, -1).transpose(1, 2)
        cls_row = (query @ key.transpose(-1, -2) * key.shape[-1] ** -0.5).softmax(-1)
        attention = cls_row.mean(dim=1)[:, 0, 1:]  # (1, 16)
        keys = key.mean(dim=1)[:, 1:]  # (1, 16, d) heads averaged, CLS dropped
        features = hidden[2][:, 1:]  # (1, 16, C)
        method = VisionZipStyle()
        kept = method.select(features, tokens_for_ratio(16, 0.75), attention)
        by_keys = method.merge(features, kept, attention, metric=keys)
        by_tokens = method.merge(features, kept, attention)
        expected = model.model.multi_modal_projector(by_keys)[0]
    assert not torch.allclose(by_keys, by_tokens)  # the metric decides who joins whom here
    torch.testing.assert_close(handed_on, expected, atol=1e-5, rtol=1e-5)


def test_the_tower_runs_once_per_batch(llava: Any) -> None:
    model, processor = llava
    inputs = ask_llava(processor, photos((28, 56), (56, 56)))
    tower_calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: tower_calls.append(1))
    try:
        with attach(model, random_selector(LLAVA_WIDTH, 4), Budget(keep=0.4)) as handle:
            pruned = prune_inputs(handle, inputs)
            model.generate(**pruned, max_new_tokens=2, min_new_tokens=2)
            logits(model, {**pruned, "pixel_values": pruned["pixel_values"].clone()})
    finally:
        hook.remove()
    assert len(tower_calls) == 1  # prune_inputs encodes; generate and forward reuse it


@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_attention_from_q_k_matches_the_eager_attention_map(
    family: str, request: pytest.FixtureRequest
) -> None:
    from vtsel.integrations.attention import cls_attention, encoder_layers, received_attention

    model, _ = request.getfixturevalue(family)
    tower = model.model.vision_tower
    eager = type(tower)._from_config(tower.config, attn_implementation="eager").eval()
    eager.load_state_dict(tower.state_dict())
    side = CROP if family == "llava" else TILE
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = eager(pixels, output_attentions=True, output_hidden_states=True)
        layer = encoder_layers(tower)[1]
        cls_row = cls_attention(layer, outputs.hidden_states[1])  # (2, L)
        received = received_attention(layer, outputs.hidden_states[1])  # (2, L)
    eager_map = outputs.attentions[1]  # (2, heads, 1+L, 1+L)
    assert torch.allclose(cls_row, eager_map[:, :, 0, 1:].mean(dim=1), atol=1e-6)
    assert torch.allclose(received, eager_map.mean(dim=(1, 2))[:, 1:], atol=1e-6)


def test_internvl_before_pixel_shuffle_keeps_the_blocks_with_the_best_part(internvl: Any) -> None:
    model, processor = internvl
    inputs = ask_internvl(processor, photos((56, 56)))
    selector = random_selector(INTERNVL_WIDTH, 8)  # the 8x8 grid of 16-wide tokens
    with torch.no_grad():
        fine = model.model.vision_tower(inputs["pixel_values"]).last_hidden_state[:, 1:]
        fine_scores = selector.scores(fine).view(1, 8, 8)  # (1, 8, 8)
        block_best = fine_scores.view(4, 2, 4, 2).amax(dim=(1, 3)).flatten()  # (16,) 2x2 blocks
        merged = model.model.pixel_shuffle(fine.reshape(1, 8, 8, -1)).reshape(16, -1)
        kept = block_best.topk(4).indices.sort().values
        expected = model.model.multi_modal_projector(merged[kept])

    with attach(model, selector, Budget(k=4), feature_stage="before") as handle:
        pruned = prune_inputs(handle, inputs)
        with language_model_inputs(model) as calls:
            logits(model, pruned)
    received = calls[0]["embeds"][pruned["input_ids"] == IMG_CONTEXT]
    assert torch.allclose(received, expected, atol=1e-6)


def test_a_selector_of_another_width_or_grid_is_refused(llava: Any, internvl: Any) -> None:
    with pytest.raises(ValueError, match=r"4x4 grid of 16-wide.*4x4 grid of 32-wide"):
        attach(llava[0], random_selector(16, 4), Budget(keep=0.5))
    with pytest.raises(ValueError, match=r"6x6 grid of 32-wide.*4x4 grid of 32-wide"):
        attach(llava[0], random_selector(32, 6), Budget(keep=0.5))
    with pytest.raises(ValueError, match=r"4x4 grid of 64-wide.*8x8 grid of 16-wide"):
        attach(internvl[0], random_selector(64, 4), Budget(keep=0.5), feature_stage="before")
    with pytest.raises(ValueError, match=r"uniform was built for grid \(24, 24\)"):
        attach(llava[0], build_method("uniform", grid=(24, 24)), Budget(keep=0.5))
    assert "get_image_features" not in vars(llava[0].model)  # nothing was attached


def test_budgets_that_need_scores_are_refused_for_index_methods(llava: Any) -> None:
    with pytest.raises(ValueError, match="threshold budget needs per-token keep scores"):
        attach(llava[0], build_method("random"), Budget(threshold=0.0))
    with pytest.raises(ValueError, match="per_image budget needs per-token keep scores"):
        attach(llava[0], build_method("norm"), Budget(keep=0.3, per_image=True))
    with pytest.raises(ValueError, match=r"feature_stage='before'.*use feature_stage='after'"):
        attach(build_internvl()[0], build_method("norm"), Budget(keep=0.3),
               feature_stage="before")


def test_attaching_twice_is_refused_and_detach_restores(llava: Any) -> None:
    model, _ = llava
    handle = attach(model, build_method("norm"), Budget(keep=0.5))
    with pytest.raises(ValueError, match="already has token pruning attached"):
        attach(model, build_method("random"), Budget(keep=0.5))
    handle.detach()
    assert "get_image_features" not in vars(model.model)
    attach(model, build_method("random"), Budget(keep=0.5)).detach()


def test_other_models_are_refused() -> None:
    with pytest.raises(ValueError, match=r"supports LlavaNext.*got a Linear"):
        attach(torch.nn.Linear(2, 2), build_method("random"), Budget(keep=0.5))


def test_inputs_pruned_twice_are_refused(llava: Any) -> None:
    model, processor = llava
    inputs = ask_llava(processor, photos((28, 56)))
    with attach(model, build_method("norm"), Budget(keep=0.5)) as handle:
        pruned = prune_inputs(handle, inputs)
        with pytest.raises(ValueError, match=r"input_ids hold 28 image tokens.*take 52 unpruned"):
            prune_inputs(handle, {**pruned, "pixel_values": inputs["pixel_values"]})


def test_beam_search_gives_each_internvl_prompt_its_own_tiles(internvl: Any) -> None:
    model, processor = internvl
    inputs = ask_internvl(processor, photos((56, 112), (56, 56)))
    with attach(model, random_selector(4 * INTERNVL_WIDTH, 4), Budget(threshold=0.0)) as handle:
        pruned = prune_inputs(handle, inputs)
        assert len(set(handle.last.kept_tokens)) > 1  # tiles keep different numbers
        with language_model_inputs(model) as calls:
            model.generate(**pruned, max_new_tokens=2, num_beams=2)
    first_prompt, _, second_prompt, _ = calls[0]["embeds"]  # beams: each prompt twice
    assert torch.equal(calls[0]["embeds"][1], first_prompt)
    assert torch.equal(calls[0]["embeds"][3], second_prompt)
