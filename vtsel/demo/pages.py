"""Rendered pages of real English text: the demo's held-out documents.

The training documents (``documents.py``) are pseudo-text in headings, lists and tables; these
pages are another source: running prose and code taken from the Python standard library's own
documentation strings (installed with every Python, so no download), set as justified-looking
single-column pages with a title, in other sizes and margins. A selector that learned only the
training documents' look has to generalise to them.
"""

from __future__ import annotations

import importlib
import inspect
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vtsel.demo.text import Box

# Modules whose documentation is long, plain prose; the order fixes the corpus.
_MODULES = (
    "argparse", "collections", "csv", "dataclasses", "difflib", "doctest", "functools",
    "inspect", "itertools", "json", "logging", "pathlib", "pickle", "re", "shutil",
    "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "zipfile",
)
_INKS = ((15, 15, 15), (30, 30, 70), (60, 20, 20))
_PAPERS = ((255, 255, 255), (250, 246, 235), (240, 240, 240))


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    """Every word of the chosen modules' docstrings and their public members', in order."""
    words: list[str] = []
    for name in _MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        for member_name in sorted(vars(module)):
            member = getattr(module, member_name)
            if not member_name.startswith("_") and (inspect.isclass(member) or callable(member)):
                docs.append(inspect.getdoc(member) or "")
        for doc in docs:
            words.extend(doc.split())
    return tuple(words)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render_page(rng: np.random.Generator) -> tuple[Image.Image, list[Box]]:
    """A page of a real passage: a title line, then paragraphs wrapped to the column.

    Returns:
        The page and the box of every line of text drawn on it.
    """
    words = _corpus()
    width = int(rng.integers(420, 820))
    height = int(width * rng.uniform(0.9, 1.5))
    margin = int(width * rng.uniform(0.05, 0.12))
    # 14-24 lines across the page: after the centre crop is resized to the encoder's input,
    # a line is about one patch tall, as in the training documents.
    size = max(10, int(width / rng.uniform(14, 24)))
    image = Image.new("RGB", (width, height), _PAPERS[int(rng.integers(len(_PAPERS)))])
    draw = ImageDraw.Draw(image)
    ink = _INKS[int(rng.integers(len(_INKS)))]
    boxes: list[Box] = []
    position = int(rng.integers(0, len(words) - 400))
    y = margin
    title = " ".join(words[position : position + 3]).strip(".,:;").capitalize()
    position += 3
    title_size = int(size * 1.5)
    while title_size > size and _font(title_size).getlength(title) > width - 2 * margin:
        title_size -= 2
    y = _line(draw, boxes, title, margin, y, title_size, ink, width - margin) + size // 2
    while y + size < height - margin:
        paragraph_end = position + int(rng.integers(25, 80))
        line: list[str] = []
        while position < paragraph_end and y + size < height - margin:
            candidate = " ".join([*line, words[position]])
            if line and _font(size).getlength(candidate) > width - 2 * margin:
                y = _line(draw, boxes, " ".join(line), margin, y, size, ink, width - margin)
                line = []
            else:
                line.append(words[position])
                position += 1
        if line and y + size < height - margin:
            y = _line(draw, boxes, " ".join(line), margin, y, size, ink, width - margin)
        y += size  # paragraph gap
    return image, boxes


def _line(
    draw: ImageDraw.ImageDraw,
    boxes: list[Box],
    text: str,
    x: int,
    y: int,
    size: int,
    ink: tuple[int, int, int],
    right: int,
) -> int:
    """Draw one line at (x, y) if it fits left of ``right``; its box joins ``boxes``. Returns
    the y of the next line."""
    box = list(draw.textbbox((x, y), text, font=_font(size)))
    if box[2] <= right and text:
        draw.text((x, y), text, font=_font(size), fill=ink)
        boxes.append(box)
    return y + int(size * 1.35)
