"""What every benchmark script shares: the machine line and its own sections of BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_FILE = REPO / "BENCHMARKS.md"


def update_section(title: str, body: str, path: Path = BENCHMARKS_FILE) -> None:
    """Replace (or append) the ``## title`` section, leaving other benchmarks' sections alone."""
    heading = f"## {title}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    before, found, after = text.partition(heading)
    rest = after[after.find("\n## ") + 1 :] if found and "\n## " in after else ""
    path.write_text(f"{before.rstrip()}\n\n{heading}\n{body.strip()}\n\n{rest}".rstrip() + "\n")


def machine(threads: int) -> str:
    """One line naming the date, CPU count, library versions and thread count of a run."""
    import lightning

    return (
        f"{datetime.date.today()}, {platform.machine()} with {os.cpu_count()} CPUs (shared), "
        f"torch {torch.__version__}, lightning {lightning.__version__}, "
        f"torch.set_num_threads({threads}), Python {platform.python_version()}"
    )
