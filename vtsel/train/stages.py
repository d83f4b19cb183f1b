"""``vtsel stages``: a preset's training stages (the paper's 60 + 20 + 20 epochs), one fit each.

Every stage runs as its own ``vtsel fit`` process, so it gets its own warmup + cosine schedule,
step counter, TensorBoard run and checkpoints in ``<save_dir>/<name>/<stage>/``, and starts from
the previous stage's best weights through ``--model.init_from`` (weights only). A stage whose fit
returned is marked ``DONE`` and skipped when the command is run again; a stage that was killed
midway is resumed from its ``last.ckpt`` with ``--ckpt_path``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from vtsel.train.fit import Stage, resolve_fit_config

DONE_MARKER = "DONE"  # written into a stage's run folder once its fit has returned


@dataclass(frozen=True)
class StageRun:
    """A stage, the ``vtsel fit`` arguments that run it, and the folder its run writes."""

    stage: Stage
    fit_args: list[str]  # without --model.init_from / --ckpt_path, which depend on progress
    run_dir: Path

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def done(self) -> bool:
        return (self.run_dir / DONE_MARKER).is_file()


def _cli_value(value: Any) -> str:
    """A YAML value as a command-line value: strings as they are, the rest as JSON (null, true)."""
    return value if isinstance(value, str) else json.dumps(value)


def stage_fit_args(config: Path, stage: Stage, extra_args: list[str]) -> list[str]:
    """``vtsel fit`` arguments of one stage; ``extra_args`` come last, so they win."""
    overrides = [s for key, value in stage.args.items() for s in (f"--{key}", _cli_value(value))]
    return [
        "--config", str(config),
        "--trainer.max_epochs", str(stage.max_epochs),
        *overrides,
        *extra_args,
        # Last of all: the run folder must be the stage's, whatever the arguments say.
        "--trainer.logger.init_args.version", stage.name,
    ]


def _logger_dir(resolved: Namespace, config: Path) -> Path:
    """``save_dir/name`` of the fit's logger: where the stages' run folders go."""
    logger = resolved.trainer.logger
    init_args = getattr(logger, "init_args", None)
    if not {"save_dir", "name"} <= set(vars(init_args or Namespace())):
        raise ValueError(
            f"{config}: trainer.logger must be one TensorBoardLogger (its save_dir/name/version "
            f"place each stage's run), got {logger!r}"
        )
    return Path(init_args.save_dir) / init_args.name


def _read_stages(resolved: Namespace, config: Path) -> list[Stage]:
    """The config's ``stages`` list as ``Stage``s, refusing a missing list or repeated names."""
    if not resolved.stages:
        raise ValueError(
            f"{config} has no 'stages' list; add one (see conf/demo.yaml) or run `vtsel fit`"
        )
    stages = [Stage(**vars(entry)) for entry in resolved.stages]
    names = [stage.name for stage in stages]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{config}: stage names must differ (they name run folders): {repeated}")
    return stages


def plan_stages(config: Path, extra_args: list[str]) -> list[StageRun]:
    """Every stage's fit arguments and run folder, each parsed as ``vtsel fit`` will parse it.

    Parsing all of them first means a bad argument in the last stage stops the command before
    the first stage trains.
    """
    base = resolve_fit_config(["--config", str(config), *extra_args])
    _logger_dir(base, config)  # a clear error before a stage's logger version override meets it
    runs = []
    for stage in _read_stages(base, config):
        fit_args = stage_fit_args(config, stage, extra_args)
        resolved = resolve_fit_config(fit_args)
        runs.append(StageRun(stage, fit_args, _logger_dir(resolved, config) / stage.name))
    return runs


def best_checkpoint(run: StageRun) -> Path:
    """The checkpoint that ModelCheckpoint ranked best in this stage, else ``last.ckpt``.

    Taken from the ranking recorded in ``last.ckpt`` rather than from file names, so it holds
    whatever the filename pattern and whatever a killed and resumed run left behind. The record
    is joined to this stage's folder, so it holds from any working directory too.
    """
    record = torch.load(run.last_checkpoint, map_location="cpu", weights_only=True, mmap=True)
    for key, callback_state in record.get("callbacks", {}).items():
        ranked = callback_state.get("monitor") is not None  # not the latest-state saver
        if not key.startswith("ModelCheckpoint") or not ranked:
            continue
        if not callback_state.get("best_model_path"):
            continue
        best = run.last_checkpoint.with_name(Path(callback_state["best_model_path"]).name)
        if best.is_file():
            return best
    warnings.warn(
        f"stage {run.stage.name}: no best checkpoint recorded in {run.last_checkpoint} (no "
        "monitored ModelCheckpoint?); the next stage starts from last.ckpt",
        stacklevel=2,
    )
    return run.last_checkpoint


def _start_args(run: StageRun, init_from: Path | None) -> list[str]:
    """Where a stage starts: its own ``last.ckpt`` if killed midway, else the previous best."""
    if run.last_checkpoint.is_file():
        # Resuming restores weights, optimizer, step and schedule; init_from would be overwritten.
        return ["--ckpt_path", str(run.last_checkpoint)]
    return [] if init_from is None else ["--model.init_from", str(init_from)]


def run_stage(run: StageRun, init_from: Path | None) -> None:
    """One stage's ``vtsel fit`` in its own process, resumed if it was killed; then marked done."""
    start_args = _start_args(run, init_from)
    start = " ".join(start_args) or "from scratch"
    print(f"[{run.stage.name}] fit, max_epochs {run.stage.max_epochs}, {start}", flush=True)
    command = [sys.executable, "-m", "vtsel.cli", "fit", *run.fit_args, *start_args]
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(
            f"stage {run.stage.name} failed (exit {err.returncode}); run `vtsel stages` again "
            f"to resume it from {run.last_checkpoint} once the cause is fixed"
        ) from err
    (run.run_dir / DONE_MARKER).touch()


def run_stages(config: Path, extra_args: list[str]) -> list[Path]:
    """Run the stages of ``config`` in order; returns each stage's best checkpoint.

    Args:
        config: A preset with a ``stages`` list.
        extra_args: ``vtsel fit`` arguments for every stage, after the stage's own ones.
    """
    best_checkpoints: list[Path] = []
    for run in plan_stages(config, extra_args):
        init_from = best_checkpoints[-1] if best_checkpoints else None
        status = "already done, skipped" if run.done else "done"
        if not run.done:
            run_stage(run, init_from)
        best_checkpoints.append(best_checkpoint(run))
        print(f"[{run.stage.name}] {status}; best checkpoint: {best_checkpoints[-1]}", flush=True)
    return best_checkpoints


def stages_main(argv: list[str]) -> None:
    """``vtsel stages --config PRESET [fit arguments...]``."""
    parser = argparse.ArgumentParser(
        prog="vtsel stages",
        description=(
            "Run the preset's `stages` in order, each as its own `vtsel fit` starting from the "
            "previous stage's best weights; done stages are skipped and a killed one resumed. "
            "Other arguments go to every stage's fit and win over the stage's own."
        ),
        allow_abbrev=False,  # so an abbreviated fit argument is never taken for --config
    )
    parser.add_argument("--config", type=Path, required=True, help="a preset with a stages list")
    parsed, extra_args = parser.parse_known_args(argv)
    run_stages(parsed.config, extra_args)
