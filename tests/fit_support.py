"""What the tests that fit share: the tiny preset twins and a real `vtsel fit` on test shards."""

from __future__ import annotations

from pathlib import Path

from vtsel.cli import main

TWINS = sorted(Path(__file__).parent.joinpath("conf").glob("*.yaml"))
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
