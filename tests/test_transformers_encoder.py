"""``TransformersEncoder`` against the real transformers models it loads: tiny random DINOv2
(with and without registers), ViT, CLIP (a dual-model folder) and SigLIP, saved offline.

The reference for features is the model's own ``output_hidden_states``; for attention, the
eager attention weights transformers returns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from tests.extract_support import TOWER_CONFIG, TOWER_PATCH, TOWER_SIZE, TOWER_WIDTH, save_tower
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
