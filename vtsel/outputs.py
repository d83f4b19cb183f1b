"""Where the commands write: the one check every ``--out`` folder passes first."""

from __future__ import annotations

from pathlib import Path


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is an existing file: a folder is written there, and the file
    would otherwise surface as a raw NotADirectoryError halfway through."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder (it is created if missing)")
