"""``TransformersEncoder`` against the real transformers models it loads: tiny random DINOv2
(with and without registers), ViT, CLIP (a dual-model folder) and SigLIP, saved offline.

The reference for features is the model's own ``output_hidden_states``; for attention, the
eager attention weights transformers returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from tests.extract_support import (
    TOWER_CONFIG,
    TOWER_PATCH,
    TOWER_SIZE,
    TOWER_WIDTH,
    read_split,
    save_tower,
    write_photos,
)
from vtsel.data.manifest import read_manifest
from vtsel.extract import extract
from vtsel.extract.encoders import TransformersEncoder

# (config class, image processor class, extra config, prefix tokens before the patches)
FAMILIES = {
    "dinov2": ("Dinov2Config", "BitImageProcessor", {}, 1),
    "dinov2_registers": ("Dinov2WithRegistersConfig", "BitImageProcessor",
                         {"num_register_tokens": 4}, 5),
    "vit": ("ViTConfig", "ViTImageProcessor", {}, 1),
    "siglip": ("SiglipVisionConfig", "SiglipImageProcessor", {}, 0),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    config_name, processor_name, extra, num_prefix = FAMILIES[request.param]
    folder = save_tower(tmp_path_factory.mktemp(request.param), config_name, processor_name, extra)
    return request.param, folder, num_prefix


def _reference(folder: Path, pixels: torch.Tensor, layer: int) -> tuple[torch.Tensor, tuple]:
    """The model's own hidden states at ``layer`` and eager attention maps."""
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    return out.hidden_states[layer], out.attentions


@pytest.mark.parametrize("layer", [-2, 1, 3])
def test_features_are_the_models_hidden_states_without_prefix(family: tuple, layer: int) -> None:
    _, folder, num_prefix = family
    encoder = TransformersEncoder(str(folder), layer=layer)
    pixels = torch.randn(2, 3, TOWER_SIZE, TOWER_SIZE)
    hidden, _ = _reference(folder, pixels, layer)
    with torch.no_grad():
        features = encoder(pixels).features  # (B, L, C)
    assert encoder.num_prefix == num_prefix
    assert encoder.grid == (TOWER_SIZE // TOWER_PATCH, TOWER_SIZE // TOWER_PATCH)
    assert encoder.feature_dim == TOWER_WIDTH
    torch.testing.assert_close(features, hidden[:, num_prefix:], atol=1e-5, rtol=1e-5)
    assert encoder.encoder_id == f"transformers:{folder.name}:layer{layer}"


def test_cls_attention_is_the_eager_cls_row_without_prefix(family: tuple) -> None:
    _, folder, num_prefix = family
    if num_prefix == 0:
        with pytest.raises(ValueError, match="no CLS token before its patches"):
            TransformersEncoder(str(folder), attention=True)
        return
    encoder = TransformersEncoder(str(folder), layer=-2, attention=True)
    pixels = torch.randn(2, 3, TOWER_SIZE, TOWER_SIZE)
    _, attentions = _reference(folder, pixels, -2)
    # hidden-states index -2 is the output of block L-1, whose attention map is attentions[-2]
    rows = attentions[-2].mean(dim=1)[:, 0, num_prefix:]  # (B, patches)
    expected = rows / rows.sum(dim=-1, keepdim=True)
    with torch.no_grad():
        attention = encoder(pixels).attention
    torch.testing.assert_close(attention, expected, atol=1e-5, rtol=1e-4)


def test_preprocessing_comes_from_the_folders_processor(family: tuple) -> None:
    _, folder, _ = family
    encoder = TransformersEncoder(str(folder))
    assert encoder.image_size == TOWER_SIZE
    assert encoder.mean == pytest.approx((0.5, 0.4, 0.3))
    assert encoder.std == pytest.approx((0.2, 0.3, 0.4))
    assert encoder.describe()["model"] == str(folder.resolve())


def test_a_dual_model_folder_gives_its_vision_tower(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        vision_config=TOWER_CONFIG,
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "vocab_size": 64},
    )
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": TOWER_SIZE}, crop_size={"height": TOWER_SIZE, "width": TOWER_SIZE}
    ).save_pretrained(tmp_path)
    encoder = TransformersEncoder(str(tmp_path), layer=-2)
    pixels = torch.randn(1, 3, TOWER_SIZE, TOWER_SIZE)
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixels, output_hidden_states=True)
        features = encoder(pixels).features
    torch.testing.assert_close(features, expected.hidden_states[-2][:, 1:], atol=1e-5, rtol=1e-5)


def test_bad_folders_and_layers_are_refused_by_name(tmp_path: Path) -> None:
    folder = save_tower(tmp_path / "dino")
    with pytest.raises(ValueError, match=r"layer=4 does not name one of the 3 blocks"):
        TransformersEncoder(str(folder), layer=4)
    with pytest.raises(ValueError, match=r"layer=0 does not name"):
        TransformersEncoder(str(folder), layer=0)
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    with pytest.raises(ValueError, match=f"{file} is a file"):
        TransformersEncoder(str(file))
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no preprocessor_config\.json"):
        TransformersEncoder(str(folder))


def test_received_attention_is_the_eager_maps_column_mean_at_both_layers(family: tuple) -> None:
    """HiPrune's maps: the head-averaged attention each patch receives from all queries, in the
    object block (the 9th of 24 scaled: block 1 of 3) and in the feature block (block 2)."""
    _, folder, num_prefix = family
    encoder = TransformersEncoder(str(folder), layer=-2, received_attention=True)
    assert encoder.received_layers == (1, 2)
    pixels = torch.randn(2, 3, TOWER_SIZE, TOWER_SIZE)
    _, attentions = _reference(folder, pixels, -2)
    expected = torch.stack([
        attentions[block - 1].mean(dim=1).mean(dim=1)[:, num_prefix:]  # (B, patches)
        for block in encoder.received_layers
    ], dim=1)  # (B, 2, patches)
    with torch.no_grad():
        encoded = encoder(pixels)
    assert encoded.attention is None  # the CLS map is its own option
    torch.testing.assert_close(encoded.received_attention, expected, atol=1e-5, rtol=0)
    assert encoder.describe()["received_layers"] == [1, 2]
    assert "received_attention" not in TransformersEncoder(str(folder)).describe()


def test_extraction_stores_received_attention_in_every_sample(tmp_path: Path) -> None:
    folder = save_tower(tmp_path / "dino")
    write_photos(tmp_path / "images", 3)
    encoder = TransformersEncoder(str(folder), layer=-2, attention=True, received_attention=True)
    out = tmp_path / "shards"
    extract(str(tmp_path / "images"), str(out), encoder=encoder, val_fraction=0.0, batch_size=2,
            num_workers=0, target_size=TOWER_SIZE)
    manifest = read_manifest(out / "manifest.json")
    assert manifest.attention and manifest.received_attention
    samples = read_split(out, "train")
    assert len(samples) == 3
    for _, sample in samples:
        crop = sample.image.resize((TOWER_SIZE, TOWER_SIZE))
        with torch.no_grad():
            encoded = encoder(encoder.normalize(crop)[None])
        assert sample.received_attention.shape == (2, 16)
        # stored as float16; the crop is re-read from the stored PNG at the same size
        np.testing.assert_allclose(
            sample.received_attention, encoded.received_attention[0].numpy(), atol=2e-3
        )
    # a manifest written before the key existed reads as without received attention
    written = json.loads((out / "manifest.json").read_text())
    del written["received_attention"]
    (out / "manifest.json").write_text(json.dumps(written))
    assert read_manifest(out / "manifest.json").received_attention is False
