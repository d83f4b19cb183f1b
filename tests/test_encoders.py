"""Vision towers against the real models: tiny random LLaVA-NeXT and InternVL checkpoints saved
with transformers, and a random open_clip ViT-S-16.

The reference for a tower's features is what the full VLM hands its projector (a hook on the
projector's input while ``get_image_features`` runs); for attention, the eager attention
weights transformers itself returns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    Qwen2Config,
)

from vtsel.extract.crops import InternVLTiles, LlavaNextAnyres
from vtsel.extract.encoders import (
    InternVisionTower,
    LlavaNextVisionTower,
    OpenClipEncoder,
)

SIZE = 32  # tower input side of both tiny VLMs
PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # LLaVA-1.6's 1x2, 2x1, 2x2 canvases at 32 px
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}
PHOTO = Image.fromarray(skimage.data.astronaut())


def _projector_input(model: torch.nn.Module, **inputs: object) -> torch.Tensor:
    """What the VLM's ``get_image_features`` feeds its projector."""
    seen: list[torch.Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0])
    )
    with torch.no_grad():
        model.model.get_image_features(**inputs)
    hook.remove()
    return seen[0]


def _cls_rows(attentions: torch.Tensor) -> torch.Tensor:
    """CLS→patch rows (B, N - 1) of eager attention weights (B, heads, N, N), renormalised."""
    rows = attentions.mean(dim=1)[:, 0, 1:]
    return rows / rows.sum(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, image_size=SIZE, patch_size=8)
    config = LlavaNextConfig(vision_config=vision, text_config=LlamaConfig(**TEXT),
                             image_grid_pinpoints=PINPOINTS, image_token_index=127)
    folder = tmp_path_factory.mktemp("llava-next-tiny")
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    LlavaNextImageProcessorPil(size={"shortest_edge": SIZE}, image_grid_pinpoints=PINPOINTS,
                               crop_size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava(llava_dir: Path) -> LlavaNextForConditionalGeneration:
    model = LlavaNextForConditionalGeneration.from_pretrained(
        llava_dir, attn_implementation="eager"
    )
    return model.eval()


@pytest.fixture(scope="module")
def internvl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    # use_mean_pooling=False gives the tower a final LayerNorm that only layer -1 reads;
    # use_qk_norm (InternViT-6B's) puts RMSNorms on queries and keys.
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "image_size": [SIZE, SIZE], "patch_size": [4, 4],
              "use_mean_pooling": False, "use_qk_norm": True}
    config = InternVLConfig(vision_config=vision, text_config=Qwen2Config(**TEXT),
                            image_token_id=127)
    folder = tmp_path_factory.mktemp("internvl-tiny")
    InternVLForConditionalGeneration(config).save_pretrained(folder)
    GotOcr2ImageProcessorPil(size={"height": SIZE, "width": SIZE}, crop_to_patches=True,
                             image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def internvl(internvl_dir: Path) -> InternVLForConditionalGeneration:
    model = InternVLForConditionalGeneration.from_pretrained(
        internvl_dir, attn_implementation="eager"
    )
    return model.eval()


@pytest.mark.parametrize("image_size", [(80, 80), (90, 30), (21, 50)])
def test_llava_next_tower_gives_the_projector_its_input(
    llava_dir: Path, llava: LlavaNextForConditionalGeneration, image_size: tuple[int, int]
) -> None:
    tower = LlavaNextVisionTower(str(llava_dir))
    assert (tower.grid, tower.feature_dim, tower.image_size) == ((4, 4), 32, SIZE)
    image = PHOTO.resize(image_size)
    crops = LlavaNextAnyres(tower.grid_pinpoints, tower.resample).crops(image, tower.image_size)
    pixels = torch.stack([tower.normalize(crop.view) for crop in crops])  # (N, 3, S, S)
    processed = LlavaNextImageProcessorPil.from_pretrained(llava_dir)(image, return_tensors="pt")
    torch.testing.assert_close(pixels, processed["pixel_values"][0], atol=1e-5, rtol=0)
    expected = _projector_input(
        llava, pixel_values=processed["pixel_values"], image_sizes=processed["image_sizes"],
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # (N, 16, 32)
    with torch.no_grad():
        encoded = tower(pixels)
    assert encoded.features.shape == (len(crops), 16, 32) and encoded.attention is None
    torch.testing.assert_close(encoded.features, expected, atol=1e-5, rtol=1e-4)
    if image_size == (80, 80):
        assert len(crops) == 5  # 2x2 best fit: base + 4 tiles


def test_llava_next_attention_is_the_cls_row_of_its_layer(
    llava_dir: Path, llava: LlavaNextForConditionalGeneration
) -> None:
    tower = LlavaNextVisionTower(str(llava_dir), attention=True)
    pixels = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        encoded = tower(pixels)
        reference = llava.model.vision_tower(pixels, output_attentions=True).attentions[-2]
    assert encoded.attention.shape == (3, 16)
    torch.testing.assert_close(encoded.attention.sum(dim=-1), torch.ones(3))
    torch.testing.assert_close(encoded.attention, _cls_rows(reference), atol=1e-6, rtol=1e-4)


def test_llava_next_layer_choice_and_pruning(
    llava_dir: Path, llava: LlavaNextForConditionalGeneration
) -> None:
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        hidden = llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        for layer, blocks in ((1, 1), (-1, 3), (3, 3)):
            tower = LlavaNextVisionTower(str(llava_dir), layer=layer)
            assert len(tower.tower.encoder.layers) == blocks
            torch.testing.assert_close(tower(pixels).features, hidden[layer][:, 1:])
    for layer in (0, 4, -4):
        with pytest.raises(ValueError, match=f"layer={layer} does not name one of the 3 blocks"):
            LlavaNextVisionTower(str(llava_dir), layer=layer)


def test_sharded_legacy_checkpoint_loads_without_reading_the_llm(
    llava_dir: Path, tmp_path: Path
) -> None:
    """transformers-4 names (``vision_tower.vision_model.*``), two shards and an index; the
    language model's shard is garbage, and loading succeeds because it is never opened."""
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_text((llava_dir / name).read_text())
    state = load_file(llava_dir / "model.safetensors")
    tower_state = {
        name.replace("vision_tower.", "vision_tower.vision_model.", 1): value
        for name, value in state.items() if name.startswith("vision_tower.")
    }
    save_file(tower_state, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"not safetensors at all")
    weight_map = {name: "model-00002-of-00002.safetensors" for name in tower_state}
    weight_map["language_model.model.embed_tokens.weight"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        legacy = LlavaNextVisionTower(str(tmp_path))(pixels).features
        current = LlavaNextVisionTower(str(llava_dir))(pixels).features
    torch.testing.assert_close(legacy, current, atol=0, rtol=0)


def test_half_precision_checkpoint_gives_a_float32_tower(llava_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").symlink_to(llava_dir / "preprocessor_config.json")
    config = json.loads((llava_dir / "config.json").read_text())
    config["dtype"] = config["vision_config"]["dtype"] = "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = load_file(llava_dir / "model.safetensors")
    save_file({name: value.bfloat16() for name, value in state.items()},
              tmp_path / "model.safetensors")
    tower = LlavaNextVisionTower(str(tmp_path))
    weight = tower.tower.embeddings.patch_embedding.weight
    assert weight.dtype == torch.float32
    stored = state["vision_tower.embeddings.patch_embedding.weight"].bfloat16()
    torch.testing.assert_close(weight, stored.float(), atol=0, rtol=0)


@pytest.mark.parametrize("layer", [-1, -2])
def test_internvl_tower_gives_the_projector_its_input(
    internvl_dir: Path, internvl: InternVLForConditionalGeneration, layer: int
) -> None:
    tower = InternVisionTower(str(internvl_dir), layer=layer)
    assert (tower.grid, tower.feature_dim) == ((4, 4), 128)  # 8x8x32 folded 2x2
    image = PHOTO.resize((90, 40))
    crops = InternVLTiles(max_tiles=6, resample=tower.resample).crops(image, tower.image_size)
    pixels = torch.stack([tower.normalize(crop.view) for crop in crops])  # (N, 3, S, S)
    processor = GotOcr2ImageProcessorPil.from_pretrained(internvl_dir)
    processed = processor(image, max_patches=6, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, processed, atol=1e-5, rtol=0)
    expected = _projector_input(
        internvl, pixel_values=processed, vision_feature_layer=layer,
        vision_feature_select_strategy="default",
    )  # (N, 16, 128)
    with torch.no_grad():
        features = tower(pixels).features
    assert features.shape == (len(crops), 16, 128)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)


def test_internvl_without_pixel_shuffle_and_attention(
    internvl_dir: Path, internvl: InternVLForConditionalGeneration
) -> None:
    pixels = torch.randn(2, 3, SIZE, SIZE)
    plain = InternVisionTower(str(internvl_dir), pixel_shuffle=False, attention=True)
    folded = InternVisionTower(str(internvl_dir), attention=True)
    assert (plain.grid, plain.feature_dim) == ((8, 8), 32)
    assert plain.encoder_id + ":pixel_shuffle" == folded.encoder_id
    with torch.no_grad():
        out = internvl.model.vision_tower(pixels, output_attentions=True)
        unfolded, shuffled = plain(pixels), folded(pixels)
    torch.testing.assert_close(unfolded.features, out.last_hidden_state[:, 1:])
    rows = _cls_rows(out.attentions[-1])  # (2, 64)
    torch.testing.assert_close(unfolded.attention, rows, atol=1e-6, rtol=1e-4)
    groups = rows.view(2, 4, 2, 4, 2).sum(dim=(2, 4)).view(2, 16)  # each 2x2 group's share
    torch.testing.assert_close(shuffled.attention, groups, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(shuffled.attention.sum(dim=-1), torch.ones(2))


def test_describe_is_json(llava_dir: Path, internvl_dir: Path) -> None:
    llava = LlavaNextVisionTower(str(llava_dir)).describe()
    internvl = InternVisionTower(str(internvl_dir)).describe()
    assert llava["encoder_id"] == f"llava_next:{llava_dir.name}:layer-2"
    assert internvl["encoder_id"] == f"internvl:{internvl_dir.name}:layer-1:pixel_shuffle"
    assert llava["grid_pinpoints"] == PINPOINTS and internvl["interpolation"] == "bicubic"
    assert json.loads(json.dumps([llava, internvl])) == [llava, internvl]


def test_not_a_checkpoint_is_refused_by_name(
    llava_dir: Path, internvl_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'} is not a folder"):
        LlavaNextVisionTower(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no config.json"):
        LlavaNextVisionTower(str(tmp_path))
    with pytest.raises(ValueError, match="model_type 'llava_next', not a InternVL checkpoint"):
        InternVisionTower(str(llava_dir))
    with pytest.raises(ValueError, match="model_type 'internvl', not a LLaVA-NeXT checkpoint"):
        LlavaNextVisionTower(str(internvl_dir))
    (tmp_path / "config.json").write_text((llava_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no preprocessor_config.json"):
        LlavaNextVisionTower(str(tmp_path))
    processor = (llava_dir / "preprocessor_config.json").read_text()
    (tmp_path / "preprocessor_config.json").write_text(processor)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has neither model.safetensors"):
        LlavaNextVisionTower(str(tmp_path))
    save_file({"lm_head.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=f"the weights in {tmp_path} hold no vision_tower"):
        LlavaNextVisionTower(str(tmp_path))


def test_attention_needs_a_cls_token(llava_dir: Path, tmp_path: Path) -> None:
    for name in ("preprocessor_config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(llava_dir / name)
    config = json.loads((llava_dir / "config.json").read_text())
    config["vision_feature_select_strategy"] = "full"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert LlavaNextVisionTower(str(tmp_path)).num_prefix == 0
    with pytest.raises(ValueError, match=r"strategy 'full'\): the tower's output has no CLS token"):
        LlavaNextVisionTower(str(tmp_path), attention=True)


def test_missing_transformers_names_the_extra(
    llava_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'vtsel\[hf\]'"):
        LlavaNextVisionTower(str(llava_dir))


@pytest.fixture(scope="module")
def vit_s() -> OpenClipEncoder:
    return OpenClipEncoder("ViT-S-16", layer=-2, attention=True)


def test_open_clip_attention_is_its_blocks_own(vit_s: OpenClipEncoder) -> None:
    """The CLS row of torch's own MultiheadAttention weights on the feature block's input (the
    output of the block before it)."""
    visual = vit_s.visual
    assert len(visual.transformer.resblocks) == 11  # ViT-S-16's 12 blocks, the last pruned
    pixels = torch.stack([vit_s.normalize(view) for view in _views(vit_s, 2)])  # (2, 3, S, S)
    with torch.no_grad():
        encoded = vit_s(pixels)
        block_input = visual.forward_intermediates(
            pixels, indices=[9], intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=True,
        )
        tokens = torch.cat([block_input["image_intermediates_prefix"][0],
                            block_input["image_intermediates"][0]], dim=1)  # (2, 197, 384)
        block = visual.transformer.resblocks[10]
        normed = block.ln_1(tokens)
        _, weights = block.attn(normed, normed, normed, need_weights=True)  # (2, 197, 197)
    assert encoded.features.shape == (2, 196, 384) and encoded.attention.shape == (2, 196)
    expected = weights[:, 0, 1:] / weights[:, 0, 1:].sum(dim=-1, keepdim=True)
    torch.testing.assert_close(encoded.attention, expected, atol=1e-6, rtol=1e-4)


def test_open_clip_prepare_is_center_crop_and_normalize(vit_s: OpenClipEncoder) -> None:
    crop = vit_s.prepare(PHOTO.resize((300, 200)))
    assert crop.box == (50, 0, 250, 200)
    torch.testing.assert_close(crop.pixels, vit_s.normalize(crop.view))
    description = vit_s.describe()
    assert description["encoder_id"] == "open_clip:ViT-S-16:random:layer-2"
    assert (description["grid"], description["interpolation"]) == ([14, 14], "bicubic")


def test_normalize_refuses_views_of_another_size(vit_s: OpenClipEncoder) -> None:
    with pytest.raises(ValueError, match=r"takes 224x224 RGB views, got 100x224 RGB"):
        vit_s.normalize(Image.new("RGB", (100, 224)))


def _views(encoder: OpenClipEncoder, count: int) -> list[Image.Image]:
    """``count`` different square views of the photo at the encoder's input size."""
    side = encoder.image_size
    return [PHOTO.crop((60 * i, 60 * i, 60 * i + side, 60 * i + side)) for i in range(count)]


def _received(attentions: torch.Tensor) -> torch.Tensor:
    """Attention each patch receives (B, N - 1) from eager weights (B, heads, N, N): the
    head-averaged map's column mean over all queries, CLS column dropped."""
    return attentions.mean(dim=1).mean(dim=1)[:, 1:]


def test_llava_next_and_internvl_received_attention_are_the_eager_column_means(
    llava_dir: Path, llava: LlavaNextForConditionalGeneration,
    internvl_dir: Path, internvl: InternVLForConditionalGeneration,
) -> None:
    pixels = torch.randn(2, 3, SIZE, SIZE)
    tower = LlavaNextVisionTower(str(llava_dir), received_attention=True)
    assert tower.received_layers == (1, 2)  # 9/24 of 3 blocks -> 1; features from block 2
    with torch.no_grad():
        encoded = tower(pixels)
        eager = llava.model.vision_tower(pixels, output_attentions=True).attentions
    expected = torch.stack([_received(eager[0]), _received(eager[1])], dim=1)  # (2, 2, 16)
    torch.testing.assert_close(encoded.received_attention, expected, atol=1e-5, rtol=0)
    # InternViT with q/k norms, before and after its pixel shuffle (2x2 groups summed)
    plain = InternVisionTower(str(internvl_dir), pixel_shuffle=False, received_attention=True)
    folded = InternVisionTower(str(internvl_dir), received_attention=True)
    assert plain.received_layers == (1, 2)
    with torch.no_grad():
        eager = internvl.model.vision_tower(pixels, output_attentions=True).attentions
        unfolded, shuffled = plain(pixels), folded(pixels)
    expected = torch.stack([_received(eager[0]), _received(eager[1])], dim=1)  # (2, 2, 64)
    torch.testing.assert_close(unfolded.received_attention, expected, atol=1e-5, rtol=0)
    groups = expected.view(2, 2, 4, 2, 4, 2).sum(dim=(3, 5)).view(2, 2, 16)
    torch.testing.assert_close(shuffled.received_attention, groups, atol=1e-5, rtol=0)


def test_open_clip_received_attention_is_its_blocks_own() -> None:
    """Column means of torch's own MultiheadAttention weights on the inputs of HiPrune's object
    block (4 of ViT-S-16's 12: 9/24 * 12 = 4.5 rounds to even) and of the feature block (11)."""
    encoder = OpenClipEncoder("ViT-S-16", layer=-2, received_attention=True)
    assert encoder.received_layers == (4, 11)
    visual = encoder.visual
    pixels = torch.stack([encoder.normalize(view) for view in _views(encoder, 2)])
    expected = []
    with torch.no_grad():
        encoded = encoder(pixels)
        for block_index in (3, 10):  # 0-based; its input is the output of the block before
            before = visual.forward_intermediates(
                pixels, indices=[block_index - 1], intermediates_only=True,
                output_fmt="NLC", output_extra_tokens=True,
            )
            tokens = torch.cat([before["image_intermediates_prefix"][0],
                                before["image_intermediates"][0]], dim=1)  # (2, 197, 384)
            block = visual.transformer.resblocks[block_index]
            normed = block.ln_1(tokens)
            _, weights = block.attn(normed, normed, normed, need_weights=True)  # heads averaged
            expected.append(weights.mean(dim=1)[:, 1:])  # (2, 196)
    assert encoded.attention is None
    torch.testing.assert_close(encoded.received_attention, torch.stack(expected, dim=1),
                               atol=1e-5, rtol=0)
    assert encoder.describe()["received_layers"] == [4, 11]
