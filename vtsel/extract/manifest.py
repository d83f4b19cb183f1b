"""The extraction's side of ``manifest.json``: build it from a run's config, and decide whether
an output folder may be resumed, must be refused, or is to be overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vtsel.data.format import SIZES_FILE
from vtsel.data.manifest import MANIFEST_FILE, Manifest, read_manifest, write_manifest
from vtsel.extract.crops import CropPlan
from vtsel.extract.encoders import VisionEncoder
from vtsel.extract.ledger import LEDGER_DIR
from vtsel.extract.shards import PARTIAL_DIR
from vtsel.extract.units import SPLITS

FEATURE_DTYPE = "float16"
SUMMARY_FILE = "skipped.json"


def build_manifest(
    encoder: VisionEncoder,
    crops: CropPlan,
    inputs: dict[str, Any],
    **settings: Any,
) -> Manifest:
    """The manifest of a run; ``settings`` are the other arguments that decide the samples
    (target size, split, unit size, pixel limit, precision) and enter the config hash."""
    config = {
        "encoder": encoder.describe(),
        "crops": crops.describe(),
        "feature_dtype": FEATURE_DTYPE,
        **settings,
    }
    config = json.loads(json.dumps(config))  # as it reads back: tuples become lists
    return Manifest(
        encoder=encoder.encoder_id,
        layer=encoder.layer,
        grid=tuple(encoder.grid),
        feature_dim=encoder.feature_dim,
        image_size=encoder.image_size,
        attention=encoder_gives_attention(encoder),
        feature_dtype=FEATURE_DTYPE,
        target_size=int(settings["target_size"]),
        config=config,
        inputs=inputs,
        received_attention=encoder_gives_received_attention(encoder),
    )


def encoder_gives_attention(encoder: VisionEncoder) -> bool:
    return bool(getattr(encoder, "attention", False))


def encoder_gives_received_attention(encoder: VisionEncoder) -> bool:
    return bool(getattr(encoder, "received_attention", False))


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``name: old -> new`` for each setting that differs."""
    old_flat, new_flat = _flat(old), _flat(new)
    return [
        f"{name}: {old_flat.get(name, '(unset)')!r} -> {new_flat.get(name, '(unset)')!r}"
        for name in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(name) != new_flat.get(name)
    ]


def _has_output(out: Path) -> bool:
    tars = [tar for split in SPLITS for tar in (out / split).glob("*.tar")]
    return bool(tars) or (out / LEDGER_DIR).is_dir()


def check_output(out: Path, manifest: Manifest, overwrite: bool) -> bool:
    """Whether ``out`` holds a run of this very config and input to resume (read-only).

    Raises:
        ValueError: ``out`` holds shards of another config, of other inputs, or without a
            manifest, and ``overwrite`` is False. The message names what differs.
    """
    path = out / MANIFEST_FILE
    if overwrite:
        return False
    if not path.is_file():
        if _has_output(out):
            raise ValueError(
                f"{out} already holds shards but no {MANIFEST_FILE}, so they cannot be resumed: "
                f"choose another --out, or pass --overwrite to replace them"
            )
        return False
    existing = read_manifest(path)
    changes = _config_changes(existing.config, manifest.config)
    if changes:
        raise ValueError(
            f"{path} was written by another extraction config ({len(changes)} difference(s): "
            f"{'; '.join(changes[:5])}): choose another --out, or pass --overwrite to replace it"
        )
    if existing.inputs != manifest.inputs:
        raise ValueError(
            f"the inputs changed since {path} was written ({existing.inputs['count']} images "
            f"then, {manifest.inputs['count']} now, or other names): resuming would cut other "
            f"work units. Choose another --out, or pass --overwrite to start over"
        )
    return True


def check_out_apart_from_inputs(out: Path, input_folders: set[Path]) -> None:
    """Refuse an ``out`` that is, holds or lies inside a folder the images come from: the
    shards would land among the inputs, and ``--overwrite`` would clear them."""
    resolved = out.resolve()
    for folder in sorted(input_folders):
        source = folder.resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise ValueError(
                f"--out {out} overlaps the input folder {folder} (it is, holds or lies inside "
                f"it): write the shards to a folder apart from the images"
            )


def prepare_output(out: Path, manifest: Manifest, overwrite: bool) -> None:
    """Clear what an earlier extraction wrote into ``out`` if overwriting (its tars,
    ``sizes.json``, work-unit records, manifest and summary; nothing else), then write the
    manifest (once, before any unit)."""
    if overwrite:
        for split in SPLITS:
            for written in [*(out / split).glob("shard-*.tar"), out / split / SIZES_FILE]:
                written.unlink(missing_ok=True)
            _remove_if_empty(out / split)
        for record in (out / LEDGER_DIR).glob("unit-*.json"):
            record.unlink()
        _remove_if_empty(out / LEDGER_DIR)
        shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)  # vtsel's own scratch folder
        for name in (MANIFEST_FILE, SUMMARY_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / MANIFEST_FILE, manifest)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
