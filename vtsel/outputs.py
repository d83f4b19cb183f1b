"""Where and how the commands write: the one check every ``--out`` folder passes first, and the
one atomic writer every file goes through."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is an existing file: a folder is written there, and the file
    would otherwise surface as a raw NotADirectoryError halfway through."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder (it is created if missing)")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """A file to write ``path`` through: written aside, flushed to disk, then renamed into
    place, so a reader (or a rerun after a kill) sees the old file or the new one, never half
    of one. Nothing replaces ``path`` if the block raises."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text or bytes) to ``path`` through ``atomic_open``."""
    with atomic_open(path, "wb" if isinstance(content, bytes) else "w") as file:
        file.write(content)
