"""Which vtsel wrote a checkpoint or an export, and whether this one can read it.

Torch-free: the inference loader, the exporter and the training code share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vtsel import __version__


def _major(version: str) -> str:
    return version.split(".")[0]


def check_compatible(written: Mapping[str, Any], source: str) -> None:
    """Refuse a checkpoint or exported config written by another major version of vtsel.

    Args:
        written: The checkpoint dict or the exported ``config.json``; both carry
            ``vtsel_version``.
        source: What ``written`` is and where it came from, named in the error.
    """
    written_by = written.get("vtsel_version")
    if written_by is None:
        raise ValueError(f"{source} carries no vtsel_version: it was not written by vtsel")
    if _major(str(written_by)) != _major(__version__):
        raise ValueError(
            f"{source} was written by vtsel {written_by}, this is vtsel {__version__}: "
            f"the weight layout differs between major versions; retrain or use vtsel "
            f"{_major(str(written_by))}.x"
        )
