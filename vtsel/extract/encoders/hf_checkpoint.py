"""Reading a VLM's vision tower out of a local Hugging Face checkpoint, without its LLM.

A 7B VLM checkpoint is ~15 GB, its vision tower ~0.6 GB: only the tower's tensors are read from
the safetensors files (lazily, by name), so extraction never materialises the language model.
transformers is an optional extra, imported here only when a tower is built.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOWER_PREFIX = "vision_tower."  # "vision_tower.*" or "model.vision_tower.*", by save format
LEGACY_CLIP_PREFIX = "vision_model."  # CLIP towers saved before transformers 5 nest one deeper
# PIL's resample codes, as processors store them, for the filters crop plans support.
PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def import_transformers(user: str) -> ModuleType:
    """transformers, or an error saying which extra installs it."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            f"{user} needs transformers, an optional extra: pip install 'vtsel[hf]'"
        ) from err
    return transformers


def load_config(
    transformers: ModuleType, checkpoint: Path, model_types: tuple[str, ...], family: str
) -> Any:
    """The checkpoint's transformers config, refused unless it is one of ``model_types``."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a folder: give a local {family} checkpoint")
    if not (checkpoint / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{checkpoint} has no {CONFIG_FILE}: not a Hugging Face {family} checkpoint"
        )
    config = transformers.AutoConfig.from_pretrained(str(checkpoint))
    if config.model_type not in model_types:
        raise ValueError(
            f"{checkpoint / CONFIG_FILE} holds model_type {config.model_type!r}, not a {family} "
            f"checkpoint (model_type {' or '.join(map(repr, model_types))})"
        )
    return config


@dataclass(frozen=True)
class ProcessorSettings:
    """What the VLM's image processor does to a crop after cutting it."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str  # a crop-plan filter name
    crop_size: int | None  # side of the crops it feeds the tower, if it says


def read_processor(checkpoint: Path) -> ProcessorSettings:
    """Mean, std, filter and crop side from the checkpoint's ``preprocessor_config.json``."""
    path = checkpoint / PROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{checkpoint} has no {PROCESSOR_FILE}: the tower's normalisation is read from the "
            f"VLM's image processor; save it there (processor.save_pretrained)"
        )
    settings = json.loads(path.read_text())
    missing = [key for key in ("image_mean", "image_std") if key not in settings]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    code = int(settings.get("resample", 3))
    if code not in PIL_RESAMPLE_NAMES:
        raise ValueError(f"{path}: resample={code} is not one of {PIL_RESAMPLE_NAMES}")
    crop = settings.get("crop_size") or settings.get("size") or {}
    side = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
    return ProcessorSettings(
        mean=tuple(float(v) for v in settings["image_mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in settings["image_std"]),  # type: ignore[arg-type]
        resample=PIL_RESAMPLE_NAMES[code],
        crop_size=None if side is None else int(side),
    )


def load_tower_weights(checkpoint: Path, tower: nn.Module) -> None:
    """Fill ``tower`` with the checkpoint's ``vision_tower.*`` tensors, and nothing else.

    Raises:
        FileNotFoundError: No safetensors weights in the folder.
        ValueError: The weights hold no tower, or not exactly the tower's parameters.
    """
    files_by_name = _weight_files(checkpoint)
    names_by_file: dict[Path, list[str]] = defaultdict(list)
    for name, file in files_by_name.items():
        if TOWER_PREFIX in name:
            names_by_file[file].append(name)
    if not names_by_file:
        raise ValueError(f"the weights in {checkpoint} hold no {TOWER_PREFIX}* tensors")
    state: dict[str, torch.Tensor] = {}
    for file, names in names_by_file.items():
        with safe_open(str(file), framework="pt") as weights:
            for name in names:
                state[name.split(TOWER_PREFIX, 1)[1]] = weights.get_tensor(name)
    expected = set(tower.state_dict())
    if expected.isdisjoint(state):
        state = {name.removeprefix(LEGACY_CLIP_PREFIX): value for name, value in state.items()}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"the {TOWER_PREFIX}* tensors in {checkpoint} do not fit its config's vision tower: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    tower.load_state_dict(state)


def _weight_files(checkpoint: Path) -> dict[str, Path]:
    """Every tensor name in the checkpoint and the safetensors file holding it."""
    index = checkpoint / WEIGHTS_INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: checkpoint / file for name, file in weight_map.items()}
    single = checkpoint / WEIGHTS_FILE
    if single.is_file():
        with safe_open(str(single), framework="pt") as weights:
            return dict.fromkeys(weights.keys(), single)
    raise FileNotFoundError(
        f"{checkpoint} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}: safetensors "
        f"weights are needed"
    )
