"""The folder ``vtsel export`` writes: its file names, and reading and writing its config and
weights with every check, so a hub download and a local folder are read by the same code.

``config.json`` holds the format, the vtsel version, the input contract and the architecture
(``SelectorConfig``); ``model.safetensors`` the selector's weights, never a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from vtsel.models import FeatureSelector, SelectorConfig
from vtsel.outputs import write_atomically
from vtsel.versions import check_compatible

EXPORT_FORMAT = "vtsel-selector"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_config(config_path: Path) -> dict[str, Any]:
    """An export's ``config.json``, after checking it is one of this major vtsel version.

    Raises:
        FileNotFoundError: There is no such file.
        ValueError: It is not JSON, of another format or of another major version.
    """
    if not config_path.is_file():
        raise FileNotFoundError(
            f"no {CONFIG_FILE} in {config_path.parent}: not a `vtsel export` folder"
        )
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}): re-export it") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != EXPORT_FORMAT:
        raise ValueError(
            f"{config_path} has format {found!r}, not {EXPORT_FORMAT!r}: "
            f"it is not a selector written by `vtsel export`"
        )
    check_compatible(config, source=str(config_path))
    return config


def read_selector(
    weights_path: Path, config: dict[str, Any], config_path: Path
) -> FeatureSelector:
    """The selector ``config`` describes with the weights of ``weights_path``, all keys and
    shapes checked (``config_path`` names the config in errors).

    Raises:
        ValueError: The weights are unreadable, or do not fit the config.
    """
    selector = FeatureSelector(SelectorConfig.from_dict(config, str(config_path)))
    try:
        _check_grid(weights_path, config, config_path)
        weights = load_file(weights_path)
    except (OSError, SafetensorError) as err:
        raise ValueError(
            f"{weights_path} is not a readable safetensors file ({err}): re-export it"
        ) from None
    try:
        selector.load_state_dict(weights)  # strict: every key and shape
    except RuntimeError as err:
        raise ValueError(f"{weights_path} does not fit {config_path}: {err}") from err
    return selector.eval()


def write_selector(directory: Path, selector: FeatureSelector, config: dict[str, Any]) -> None:
    """``model.safetensors`` then ``config.json`` into ``directory``, each atomically, so a
    killed write leaves the earlier file or none."""
    weights = {key: tensor.contiguous() for key, tensor in selector.state_dict().items()}
    write_atomically(directory / WEIGHTS_FILE, save(weights, metadata=_weights_metadata(config)))
    write_atomically(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def _weights_metadata(config: dict[str, Any]) -> dict[str, str]:
    """What ``model.safetensors`` records of the contract it was trained for. The grid shapes
    no weight (positions and the coverage prior are computed), so it is written here and
    checked against ``config.json`` at load."""
    return {"format": EXPORT_FORMAT, "grid_size": json.dumps(list(config["grid_size"]))}


def _check_grid(weights_path: Path, config: dict[str, Any], config_path: Path) -> None:
    """Refuse a ``config.json`` whose grid is not the one its weights were exported for."""
    with safe_open(weights_path, framework="pt") as weights:
        recorded = (weights.metadata() or {}).get("grid_size")
    if recorded is not None and json.loads(recorded) != list(config["grid_size"]):
        raise ValueError(
            f"{config_path} says grid_size {list(config['grid_size'])}, but {weights_path} was "
            f"exported for {json.loads(recorded)}: the config was edited or mixed up"
        )
