"""``vtsel export``: a trained selector as safetensors + config.json, for code without Lightning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from vtsel import __version__
from vtsel.inference import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE, weights_metadata
from vtsel.outputs import check_out_folder, write_atomically
from vtsel.train.checkpoints import read_checkpoint
from vtsel.train.selector_module import selector_config
from vtsel.train.task import TASK_KEY

SELECTOR_PREFIX = "selector."  # SelectorModule.selector; the reconstructors only train it


def export(
    checkpoint: str, out: str, encoder: str | None = None, overwrite: bool = False
) -> None:
    """Write a trained selector to ``<out>/model.safetensors`` and ``<out>/config.json``.

    Only the selector is written: the reconstructors exist to train it and play no part in
    picking tokens. config.json holds the input contract (encoder, grid, width, normalisation)
    and the architecture, so ``vtsel.TokenSelector.from_pretrained(out)`` rebuilds the selector
    with torch and safetensors alone.

    Args:
        checkpoint: A vtsel checkpoint, e.g. a fit's ``best-*.ckpt`` or ``last.ckpt``.
        out: Output folder, created if missing; an earlier export there is replaced, any other
            non-empty folder is refused unless ``overwrite``.
        encoder: Encoder name to record when the checkpoint carries none (a fit with
            ``--data.encoder`` stores it, and then a different name here is refused).
        overwrite: Write into a non-empty ``out`` that holds no vtsel export (its
            ``config.json`` and ``model.safetensors`` are replaced, nothing else).
    """
    source = Path(checkpoint)
    out_dir = Path(out)
    _check_out(out_dir, overwrite)
    trained = read_checkpoint(source, role="checkpoint to export")
    written_by = trained.get(TASK_KEY, "selector")  # checkpoints before the key: selectors
    if written_by != "selector":
        raise ValueError(
            f"{source} is a {written_by} checkpoint, not a selector's: it has no trained "
            f"selector to export (export a fit of conf/<preset>.yaml, not conf/judge/)"
        )
    config = _export_config(trained["hyper_parameters"], _encoder(trained, encoder, source))
    weights = _selector_weights(trained["state_dict"], source)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / WEIGHTS_FILE, save(weights, metadata=weights_metadata(config)))
    write_atomically(out_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    print(f"exported the selector of {source} to {out_dir}")


def _check_out(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder that is not an earlier export (unless asked)."""
    check_out_folder(out_dir)
    if not out_dir.is_dir() or not any(out_dir.iterdir()) or overwrite:
        return
    try:
        earlier = json.loads((out_dir / CONFIG_FILE).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        earlier = None
    if earlier != EXPORT_FORMAT:
        raise ValueError(
            f"--out {out_dir} is not empty and holds no vtsel export ({CONFIG_FILE} missing or "
            f"not {EXPORT_FORMAT!r}): choose another folder, or pass --overwrite true to write "
            f"{CONFIG_FILE} and {WEIGHTS_FILE} into it"
        )


def _encoder(trained: dict[str, Any], requested: str | None, source: Path) -> str | None:
    """The encoder the features must come from: the checkpoint's, else ``requested``."""
    trained_on = trained.get("datamodule_hyper_parameters", {}).get("encoder")
    if trained_on is not None and requested is not None and requested != trained_on:
        raise ValueError(
            f"{source} was trained on features of encoder {trained_on!r}, not {requested!r}; "
            f"leave --encoder out to record {trained_on!r}"
        )
    return trained_on if trained_on is not None else requested


def _export_config(hparams: dict[str, Any], encoder: str | None) -> dict[str, Any]:
    """config.json: format, version, the encoder, and the selector's ``SelectorConfig``."""
    return {
        "vtsel_version": __version__,
        "format": EXPORT_FORMAT,
        **selector_config(hparams).to_dict(),
        "encoder": encoder,
    }


def _selector_weights(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """The selector's tensors of a module state dict, keys without the ``selector.`` prefix."""
    weights = {
        key.removeprefix(SELECTOR_PREFIX): tensor.contiguous()  # safetensors needs contiguous
        for key, tensor in state.items()
        if key.startswith(SELECTOR_PREFIX)
    }
    if not weights:
        raise ValueError(f"{source} holds no {SELECTOR_PREFIX}* weights: not a vtsel selector")
    return weights
