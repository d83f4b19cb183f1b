"""Reading vtsel checkpoints safely: weights only, version checked, and found for a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtsel.versions import check_compatible


def read_checkpoint(path: Path, role: str) -> dict[str, Any]:
    """Load a vtsel checkpoint as plain tensors and containers, and check its version.

    ``weights_only`` unpickles no code, so a checkpoint from elsewhere cannot run anything.

    Args:
        path: The ``.ckpt`` file.
        role: What the checkpoint is for (``init_from checkpoint``), named in errors.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no {role} at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # junk bytes raise KeyError, EOFError, UnpicklingError, ...
        # torch's own message advises weights_only=False, which would run the file's code
        raise ValueError(
            f"{role} {path} is not a checkpoint vtsel can read (truncated, or not a "
            f"Lightning .ckpt: {type(err).__name__}); give a best-*.ckpt or last.ckpt of a "
            f"vtsel fit"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{role} {path} holds no state_dict: it is not a Lightning checkpoint")
    check_compatible(checkpoint, source=f"{role} {path}")
    return checkpoint


def load_weights(module: nn.Module, path: Path) -> None:
    """Copy the weights of a vtsel checkpoint into ``module``, and nothing else.

    No optimizer, step, schedule or hyperparameters are taken: this starts a new fit (the next
    training stage) from trained weights. Every tensor must match by name and shape, so a
    checkpoint of another width or encoder is refused instead of half-loaded.
    """
    state = read_checkpoint(path, role="init_from checkpoint")["state_dict"]
    own = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        raise ValueError(
            f"init_from checkpoint {path} does not fit this model "
            f"(was it trained for another encoder or width?); "
            f"shape mismatches: {mismatched[:5]}, missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]}"
        )
    module.load_state_dict(state)


def newest_last_checkpoint(log_dir: Path, checkpoint_dirs: list[Path]) -> Path:
    """The most recently written ``last.ckpt`` of a logger's runs or of fixed checkpoint folders.

    Lightning's own ``ckpt_path="last"`` looks only in the new run's folder, which a restarted
    fit has just created empty; the run to resume is the one whose last checkpoint is newest.
    """
    candidates = [*log_dir.glob("*/checkpoints/last.ckpt")]
    candidates += [d / "last.ckpt" for d in checkpoint_dirs if (d / "last.ckpt").is_file()]
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt under {log_dir}/<run>/checkpoints (nor in "
            f"{[str(d) for d in checkpoint_dirs]}); give the checkpoint's path instead"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime)
