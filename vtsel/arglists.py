"""Comma-separated list options (``--keep 1.0,0.4,0.1``) for the command-line tools.

jsonargparse reads a ``list[float]`` option only as a YAML list (``--keep '[1.0, 0.4]'``); the
evaluation tools take budgets and method names the way people type them, and this is where
such an option is split and each item converted, with an error that names the option.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Item = TypeVar("Item")


def comma_list(text: str, item: Callable[[str], Item], option: str) -> list[Item]:
    """The items of ``"a,b,c"`` converted by ``item`` (e.g. ``int``), in order.

    Args:
        text: The option's value; blanks around items are ignored.
        item: Converter of one item; a ``ValueError`` it raises names the option here.
        option: The option's name for error messages, e.g. ``--keep``.
    """
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or "" in parts:
        raise ValueError(f"{option} takes a comma-separated list such as 'a,b', got {text!r}")
    converted = []
    for part in parts:
        try:
            converted.append(item(part))
        except ValueError as err:
            raise ValueError(f"{option}: cannot read {part!r} of {text!r}: {err}") from err
    return converted
