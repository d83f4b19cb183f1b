"""The one atomic writer every file of vtsel goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtsel.outputs import atomic_open, write_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_atomically(path, "old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_open(path) as file:
        file.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_text_and_bytes_replace_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_atomically(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_atomically(path, "text")
    assert path.read_text() == "text"
