"""The ``vtsel`` command: Lightning's fit/validate/test/predict plus the data tools."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from jsonargparse import CLI
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vtsel.data import FeatureShardDataModule
from vtsel.module import SelectorModule


def _tools() -> dict[str, Callable[..., Any]]:
    """Subcommands that are not a Trainer method; imported lazily so ``fit`` starts fast."""
    from vtsel.demo import write_demo_images
    from vtsel.export import export
    from vtsel.extract.run import extract

    return {"extract": extract, "demo-data": write_demo_images, "export": export}


TOOL_NAMES = ("extract", "demo-data", "export")
DESCRIPTION = (
    "Train adaptive visual-token selectors. Besides fit/validate/test/predict: "
    "`vtsel demo-data` writes the demo image set, `vtsel extract` turns images into "
    "feature shards, `vtsel export` writes a trained selector for inference without "
    "Lightning (each has --help)."
)


class VtselCLI(LightningCLI):
    """LightningCLI whose data section owns the feature contract the model is built for."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One source of truth: the shards' shape decides the model's input and output sizes.
        for key in ("feature_dim", "grid_size", "image_size"):
            parser.link_arguments(f"data.{key}", f"model.{key}")


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Entry point of the ``vtsel`` console script; ``args`` and the returned CLI (holding the
    trainer and its metrics) are for tests and notebooks."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in TOOL_NAMES:
        CLI(_tools()[argv[0]], args=argv[1:], as_positional=False)
        return None
    return VtselCLI(
        SelectorModule,
        FeatureShardDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
        args=args,  # None: LightningCLI reads sys.argv itself
    )


if __name__ == "__main__":
    main()
