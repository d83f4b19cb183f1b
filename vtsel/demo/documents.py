"""Rendered document pages for the demo set: small dense text a selector must not drop."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vtsel.demo.text import Box, pseudo_phrase, pseudo_word

# Page shapes as height / width: A4 portrait, letter, square, slide, landscape, receipt.
_PAGE_ASPECTS = (1.414, 1.294, 1.0, 0.5625, 0.707, 2.2)
_INKS = ((20, 20, 20), (40, 40, 90), (90, 20, 20), (30, 70, 40))


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


class _Page:
    """A page that records the box of every text it draws and refuses text that overflows."""

    def __init__(self, width: int, height: int, margin: int) -> None:
        self.image = Image.new("RGB", (width, height), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image)
        self.margin = margin
        self.boxes: list[Box] = []

    def text(self, x: int, y: int, text: str, size: int, ink: tuple[int, int, int]) -> bool:
        """Draw ``text`` with its top-left at (x, y) if it fits inside the margins."""
        box = list(self.draw.textbbox((x, y), text, font=_font(size)))
        if box[2] > self.image.width - self.margin or box[3] > self.image.height - self.margin:
            return False
        self.draw.text((x, y), text, font=_font(size), fill=ink)
        self.boxes.append(box)
        return True


@dataclass(frozen=True)
class _Column:
    """Where and how a block of text is set."""

    x: int
    width: int
    size: int  # body font size in pixels
    ink: tuple[int, int, int]


def render_document(rng: np.random.Generator) -> tuple[Image.Image, list[Box]]:
    """A page of headings, paragraphs, bullet lists and tables in one or two columns.

    Args:
        rng: Source of every layout and text choice.

    Returns:
        The page and the box of every text drawn on it.
    """
    width = int(rng.integers(360, 900))
    page = _Page(width, int(width * rng.choice(_PAGE_ASPECTS)), margin=width // 20)
    # 12-20 body lines' height across the page: after the encoder's centre crop is resized to
    # its input (224 px for ViT-S/16) text stands 11-19 px tall, about one 16-px patch, so it
    # is what a selector must keep. Smaller print vanishes into near-blank patches.
    size = max(10, int(width / rng.uniform(12, 20)))
    ink = _INKS[int(rng.integers(len(_INKS)))]
    num_columns = 2 if width > 600 and rng.random() < 0.5 else 1
    gutter = page.margin
    column_width = (width - 2 * page.margin - (num_columns - 1) * gutter) // num_columns
    page.text(page.margin, page.margin, pseudo_phrase(rng, 3), int(size * 1.8), ink)
    blocks = (_heading, _paragraph, _paragraph, _bullets, _table)
    for index in range(num_columns):
        column = _Column(page.margin + index * (column_width + gutter), column_width, size, ink)
        y: int | None = page.margin + int(size * 3.2)
        while y is not None:
            y = blocks[int(rng.integers(len(blocks)))](page, rng, column, y)
    return page.image, page.boxes


# Each block draws itself at height y and returns the y below it, or None once the page is full.


def _heading(page: _Page, rng: np.random.Generator, column: _Column, y: int) -> int | None:
    size = int(column.size * 1.3)
    if not page.text(column.x, y, pseudo_phrase(rng, 2), size, column.ink):
        return None
    return y + int(size * 1.8)


def _paragraph(
    page: _Page, rng: np.random.Generator, column: _Column, y: int, indent: int = 0
) -> int | None:
    words = [pseudo_word(rng) for _ in range(int(rng.integers(12, 60)))]
    for line in _wrap(words, column.size, column.width - indent):
        if not page.text(column.x + indent, y, line, column.size, column.ink):
            return None
        y += int(column.size * 1.35)
    return y + column.size


def _wrap(words: list[str], size: int, room: int) -> list[str]:
    """Greedy line breaking: as many words per line as fit in ``room`` pixels."""
    lines: list[str] = []
    line: list[str] = []
    for word in words:
        if line and _font(size).getlength(" ".join([*line, word])) > room:
            lines.append(" ".join(line))
            line = []
        line.append(word)
    return [*lines, " ".join(line)] if line else lines


def _bullets(page: _Page, rng: np.random.Generator, column: _Column, y: int) -> int | None:
    for _ in range(int(rng.integers(2, 5))):
        if not page.text(column.x, y, "-", column.size, column.ink):
            return None
        below = _paragraph(page, rng, column, y, indent=column.size)
        if below is None:
            return None
        y = below
    return y


def _table(page: _Page, rng: np.random.Generator, column: _Column, y: int) -> int | None:
    """A ruled grid: a header row of words, then rows of a word and numbers."""
    num_rows, num_cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
    cell_w, cell_h, pad = column.width // num_cols, int(column.size * 1.8), column.size // 3
    if y + num_rows * cell_h > page.image.height - page.margin:
        return None
    for row in range(num_rows):
        for col in range(num_cols):
            left, top = column.x + col * cell_w, y + row * cell_h
            page.draw.rectangle((left, top, left + cell_w, top + cell_h), outline=(150, 150, 150))
            cell = f"{rng.uniform(0, 999):.1f}" if row > 0 and col > 0 else pseudo_word(rng)[:8]
            while cell and _font(column.size).getlength(cell) > cell_w - 2 * pad:
                cell = cell[:-1]
            if cell:
                page.text(left + pad, top + pad, cell, column.size, column.ink)
    return y + num_rows * cell_h + column.size
