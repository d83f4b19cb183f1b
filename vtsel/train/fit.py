"""``vtsel fit`` and its kin: the LightningCLI of a fit, the stages a preset lists, and the
config a fit would train with (parsed and checked, not run)."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vtsel.data import FeatureShardDataModule
from vtsel.train.checkpoints import newest_last_checkpoint, read_checkpoint
from vtsel.train.task import ReconstructionTask


@dataclass
class Stage:
    """One fit of a preset's training schedule, run by ``vtsel stages`` (``vtsel fit`` ignores it).

    Each stage is its own fit: its own warmup + cosine schedule, step counter, TensorBoard run
    and checkpoints, starting from the previous stage's best weights.
    """

    name: str
    """The stage's run folder under the logger's ``save_dir/name``, e.g. ``runs/demo/stage2``."""
    max_epochs: int
    """Epochs of this stage's fit."""
    args: dict[str, Any] = field(default_factory=dict)
    """This stage's fit overrides: ``{model.lr: 5.0e-06}`` means ``--model.lr 5.0e-06``."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[\w.-]+", self.name):
            raise ValueError(
                f"stage name {self.name!r} names a run folder: use letters, digits, '_', '.', '-'"
            )
        if self.max_epochs < 1:
            raise ValueError(f"stage {self.name!r}: max_epochs must be >= 1, got {self.max_epochs}")


class VtselCLI(LightningCLI):
    """LightningCLI whose data section owns the feature contract the model is built for."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One source of truth: the shards' shape decides the model's input and output sizes.
        for key in ("feature_dim", "grid_size", "image_size"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}")
        # Parsed (so a typo in a stage fails here) but only read by `vtsel stages`.
        parser.add_argument(
            "--stages",
            type=list[Stage] | None,
            default=None,
            help="The preset's training stages, run in order by `vtsel stages`; fit ignores them.",
        )


    def _parse_ckpt_path(self) -> None:
        """Before LightningCLI replaces the config's model settings with the checkpoint's:
        ``fit --ckpt_path last`` becomes the newest run's ``last.ckpt`` (logging on into its
        folder), a file that is no checkpoint is named, and a fit must resume under the model
        settings it was trained with."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is not None and config.get("ckpt_path") is not None:
            if subcommand == "fit" and config.ckpt_path == "last":
                self._resolve_last()
            checkpoint = Path(config.ckpt_path)
            if subcommand == "fit":
                check_resumed_settings(checkpoint, config.model)
            elif checkpoint.is_file():
                read_checkpoint(checkpoint, role=f"checkpoint given to {subcommand} --ckpt_path")
        super()._parse_ckpt_path()

    def _resolve_last(self) -> None:
        logger_args = getattr(self.config.fit.trainer.logger, "init_args", None)
        if logger_args is None or "save_dir" not in logger_args:
            raise ValueError("--ckpt_path last needs a TensorBoardLogger to find the run; "
                             "give the checkpoint's path instead")
        log_dir = Path(logger_args.save_dir) / logger_args.name
        callbacks = self.config.fit.trainer.callbacks or []
        fixed_dirs = [
            Path(cb.init_args.dirpath) for cb in callbacks
            if getattr(cb, "init_args", None) is not None and cb.init_args.get("dirpath")
        ]
        last = newest_last_checkpoint(log_dir, fixed_dirs)
        self.config.fit.ckpt_path = str(last)
        if last.parent.parent.parent == log_dir:  # a run folder: keep logging into it
            logger_args.version = last.parent.parent.name


def check_resumed_settings(checkpoint: Path, model: Any) -> None:
    """Refuse to resume ``checkpoint`` under other model settings than it was trained with.

    LightningCLI rebuilds the model from the checkpoint's hyperparameters, so a differing
    ``--model.*`` would be ignored without a word (a fit of another width would go on training
    the old one).
    """
    trained = read_checkpoint(checkpoint, role="checkpoint given to --ckpt_path")
    recorded = trained.get("hyper_parameters", {})
    wanted = model.init_args if getattr(model, "init_args", None) is not None else model
    differing = [
        f"{key}: {_plain(recorded[key])} in the checkpoint, {_plain(value)} here"
        for key, value in sorted(dict(wanted).items())
        if key in recorded and key != "init_from" and _plain(recorded[key]) != _plain(value)
    ]
    if differing:
        raise ValueError(
            f"{checkpoint} was trained with other model settings than this fit's, and resuming "
            f"would silently keep the checkpoint's: {'; '.join(differing)}. Resume with the "
            f"settings it was trained with, or start a new fit (--model.init_from takes its "
            f"weights only)"
        )


def _plain(value: Any) -> str:
    """A setting as comparable text: tuples and lists, namespaces and dicts alike."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.dumps(value, sort_keys=True, default=str)  # tuples become lists


class _ParseOnlyCLI(VtselCLI):
    """Parses and checks a fit's arguments exactly as ``vtsel fit`` does, and builds nothing."""

    def _set_seed(self) -> None:
        """Nothing trains here, so nothing is seeded (nor is "Seed set" logged)."""

    def instantiate_classes(self) -> None:
        """No model, data or trainer: the caller only reads the config."""


def make_cli(
    cli_class: type[VtselCLI], args: list[str] | None, run: bool, description: str = ""
) -> VtselCLI:
    """The one way vtsel builds its fit CLI, so ``vtsel fit`` and the stage planner parse
    alike."""
    return cli_class(
        ReconstructionTask,  # model.class_path: vtsel.train.SelectorModule or JudgeModule
        FeatureShardDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": description},
        args=args,  # None: LightningCLI reads sys.argv itself
        run=run,
    )


def resolve_fit_config(args: list[str]) -> Namespace:
    """The config that ``vtsel fit <args>`` would train with, parsed and checked, not run.

    ``vtsel stages`` checks every stage this way before the first one trains, so a typo in the
    last stage's arguments cannot waste the earlier stages' hours.
    """
    with warnings.catch_warnings():
        # args are given on purpose while sys.argv holds the `vtsel stages` command line.
        warnings.filterwarnings("ignore", "LightningCLI's args parameter", UserWarning)
        return make_cli(_ParseOnlyCLI, args, run=False).config
