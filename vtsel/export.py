"""``vtsel export``: a trained selector as safetensors + config.json + model card, for code
without Lightning and for the Hugging Face Hub, and optionally as ONNX and torch.export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vtsel import __version__
from vtsel.deploy import (
    ONNX_FILE,
    TORCH_EXPORT_FILE,
    check_onnx_exporter,
    keep_logits_program,
    write_onnx,
    write_torch_export,
)
from vtsel.export_format import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE
from vtsel.inference import TokenSelector
from vtsel.models import FeatureSelector
from vtsel.outputs import check_out_folder
from vtsel.provenance import evaluation, train_manifest, trained_on
from vtsel.train.checkpoints import read_checkpoint
from vtsel.train.selector_module import selector_config
from vtsel.train.task import TASK_KEY

CARD_FILE = "README.md"  # the mixin's name for the model card
SELECTOR_PREFIX = "selector."  # SelectorModule.selector; the reconstructors only train it


def export(
    checkpoint: str,
    out: str,
    encoder: str | None = None,
    overwrite: bool = False,
    eval_report: str | None = None,
    onnx: bool = False,
    torch_export: bool = False,
) -> None:
    """Write a trained selector to ``<out>``: ``model.safetensors``, ``config.json`` and its
    model card ``README.md``, the folder ``TokenSelector.save_pretrained`` writes and
    ``push_to_hub`` uploads.

    Only the selector is written: the reconstructors exist to train it and play no part in
    picking tokens. config.json holds the input contract (encoder, its layer, grid, width,
    normalisation), the architecture and what the card shows (the fit's data, the eval
    tables), so ``vtsel.TokenSelector.from_pretrained(out)`` rebuilds the selector with torch,
    safetensors and huggingface_hub alone.

    Args:
        checkpoint: A vtsel checkpoint, e.g. a fit's ``best-*.ckpt`` or ``last.ckpt``.
        out: Output folder, created if missing; an earlier export there is replaced, any other
            non-empty folder is refused unless ``overwrite``.
        encoder: Encoder name to record when the checkpoint carries none (a fit with
            ``--data.encoder`` stores it, and then a different name here is refused).
        overwrite: Write into a non-empty ``out`` that holds no vtsel export (its
            ``config.json``, ``model.safetensors`` and ``README.md`` are replaced, nothing
            else).
        eval_report: A ``vtsel eval`` ``results.csv`` of this selector, whose tables at the
            paper's budgets go into the model card.
        onnx: Also write ``selector.onnx`` (features (B, L, C) -> keep_logits (B, L), batch
            dynamic), for ONNX Runtime or TensorRT; needs the [demo] extra's onnx/onnxscript.
        torch_export: Also write ``selector.pt2``, the same function as a ``torch.export``
            program (``torch.export.load``).
    """
    source = Path(checkpoint)
    out_dir = Path(out)
    _check_out(out_dir, overwrite)
    if onnx:
        check_onnx_exporter()
    trained = read_checkpoint(source, role="checkpoint to export")
    written_by = trained.get(TASK_KEY, "selector")  # checkpoints before the key: selectors
    if written_by != "selector":
        raise ValueError(
            f"{source} is a {written_by} checkpoint, not a selector's: it has no trained "
            f"selector to export (export a fit of conf/<preset>.yaml, not conf/judge/)"
        )
    config = _export_config(trained, _encoder(trained, encoder, source))
    selector = FeatureSelector(selector_config(trained["hyper_parameters"]))
    selector.load_state_dict(_selector_weights(trained["state_dict"], source))
    if eval_report is not None:
        config["evaluation"] = evaluation(Path(eval_report), selector.config.num_tokens)
    token_selector = TokenSelector(selector, config)
    (out_dir / CARD_FILE).unlink(missing_ok=True)  # the mixin keeps a card it finds
    token_selector.save_pretrained(out_dir)
    if onnx or torch_export:
        program = keep_logits_program(token_selector)
        if torch_export:
            write_torch_export(program, out_dir / TORCH_EXPORT_FILE)
        if onnx:
            write_onnx(program, out_dir / ONNX_FILE)
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
            f"{CONFIG_FILE}, {WEIGHTS_FILE} and {CARD_FILE} into it"
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


def _export_config(trained: dict[str, Any], encoder: str | None) -> dict[str, Any]:
    """config.json: format, version, the encoder and its layer, the selector's
    ``SelectorConfig``, and what it was trained on."""
    manifest = train_manifest(trained)
    return {
        "vtsel_version": __version__,
        "format": EXPORT_FORMAT,
        **selector_config(trained["hyper_parameters"]).to_dict(),
        "encoder": encoder,
        "encoder_layer": manifest.layer if manifest is not None else None,
        "trained_on": trained_on(trained, manifest),
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
