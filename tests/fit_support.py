"""What the tests that fit share: the tiny preset twins, a real `vtsel fit` on test shards (in
this process or as a fresh one) and the one-step wiring settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from vtsel.cli import main

REPO = Path(__file__).parents[1]
TWINS = sorted(Path(__file__).parent.joinpath("conf").glob("*.yaml"))  # demo first
JUDGE_TWIN = Path(__file__).parent / "conf" / "judge" / "demo.yaml"
WIRING = (
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "1",
    "--trainer.limit_val_batches", "1",
)
"""One training step and one validation batch: every file a fit writes (best and last
checkpoints, TensorBoard events, config.yaml) for tests of plumbing, in a fraction of the twins'
two epochs. Tests that measure training run the twins' own settings."""
SCORED = ["random", "uniform", "spread", "norm", "divprune", "pact", "selector"]
"""The methods `vtsel eval` scores on test shards (they store no attention for VisionZip and
HiPrune)."""
LOSS_TAGS = {
    "train/loss",
    "train/feature_loss",
    "train/image_loss",
    "train/keep_ratio",
    "train/regularizer",
}


def fit_args(config: Path, shards: Path, runs: Path, *extra: str) -> list[str]:
    """``vtsel fit`` arguments for a preset twin on test shards, logging under ``runs``."""
    return [
        "fit",
        "--config", str(config),
        "--data.train_shards", str(shards / "train"),
        "--data.val_shards", str(shards / "val"),
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def fit(config: Path, shards: Path, runs: Path, *extra: str) -> Path:
    """Run ``vtsel fit`` and return the run's log folder."""
    main(fit_args(config, shards, runs, *extra))
    (run,) = [p for p in runs.glob("*/version_*") if p.is_dir()]
    return run


def fit_command(shards: Path, runs: Path, *extra: str) -> list[str]:
    """``vtsel fit`` of the demo twin as a fresh process, as a user (or DDP's launcher) runs it:
    DDP's launcher re-executes the command line for rank 1, and a killed fit must be a real
    process."""
    return [sys.executable, "-m", "vtsel.cli", *fit_args(TWINS[0], shards, runs, *extra)]


def add_callback(class_path: str, **init_args: Any) -> str:
    """A ``--trainer.callbacks+=`` argument that appends one callback to the preset's list."""
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})
