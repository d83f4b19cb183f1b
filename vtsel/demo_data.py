"""``vtsel demo-data``: a small image set that needs no download, for demos and tests.

Three kinds of image, because a token selector behaves differently on each:

- ``photo-<source>-<name>-<i>.png``: photos shipped inside scikit-image, scikit-learn and
  matplotlib (``i = 0`` is the whole photo, ``i >= 1`` random crops of it);
- ``doc-<i>.png``: rendered pages of pseudo-text with headings, paragraphs, lists and tables;
- ``chart-<i>.png``: matplotlib bar, line and pie charts.

Documents and charts are dominated by small text that a selector must not drop, so each has a
sidecar ``<name>.regions.json``: ``{"width", "height", "boxes": [[x0, y0, x1, y1], ...]}`` with
one pixel box (x1, y1 exclusive) per drawn piece of text.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import skimage
import sklearn.datasets
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.progress import Progress

from vtsel.extract.encoders import to_rgb

Box = list[int]  # [x0, y0, x1, y1] in pixels

_PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp")
_SYLLABLES = ("ka", "lo", "mi", "ten", "var", "os", "ri", "du", "pel", "an", "sor", "ex", "gram")
# Page shapes as height / width: A4 portrait, letter, square, slide, landscape, receipt.
_PAGE_ASPECTS = (1.414, 1.294, 1.0, 0.5625, 0.707, 2.2)
_INKS = ((20, 20, 20), (40, 40, 90), (90, 20, 20), (30, 70, 40))


def write_demo_images(
    out: str,
    num_documents: int = 48,
    num_charts: int = 48,
    crops_per_photo: int = 3,
    seed: int = 0,
) -> dict[str, int]:
    """Write the demo image set into a folder, replacing files of the same names.

    Args:
        out: Folder to write into (created if missing).
        num_documents: Number of rendered document pages.
        num_charts: Number of rendered charts.
        crops_per_photo: Random crops written per packaged photo, besides the photo itself.
        seed: Seed of every random choice; the same seed writes byte-identical files.

    Returns:
        Number of images written per kind: ``{"photo": ..., "doc": ..., "chart": ...}``.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    photos = _package_photos()
    counts = {"photo": 0, "doc": 0, "chart": 0}
    total = len(photos) * (1 + crops_per_photo) + num_documents + num_charts
    with Progress() as progress:
        task = progress.add_task("demo images", total=total)
        for name, photo in photos:
            for i, view in enumerate(_photo_views(photo, crops_per_photo, _rng(seed, name))):
                view.save(folder / f"photo-{name}-{i}.png")
                counts["photo"] += 1
                progress.advance(task)
        for kind, number, render in (
            ("doc", num_documents, render_document),
            ("chart", num_charts, render_chart),
        ):
            for i in range(number):
                image, boxes = render(_rng(seed, f"{kind}-{i}"))
                _save_with_regions(image, boxes, folder / f"{kind}-{i}.png")
                counts[kind] += 1
                progress.advance(task)
    Console().print(f"wrote {counts} to {folder}")
    return counts


def _rng(seed: int, name: str) -> np.random.Generator:
    """An independent stream per image, so changing one count leaves other images intact."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _save_with_regions(image: Image.Image, boxes: list[Box], path: Path) -> None:
    image.save(path)
    regions = {"width": image.width, "height": image.height, "boxes": boxes}
    path.with_suffix(".regions.json").write_text(json.dumps(regions))


# --- photos -------------------------------------------------------------------------------


def _package_photos() -> list[tuple[str, Image.Image]]:
    """Every single-frame 2-D image shipped with scikit-image, scikit-learn and matplotlib."""
    folders = {
        "skimage": Path(skimage.__file__).parent / "data",
        "mpl": Path(matplotlib.get_data_path()) / "sample_data",
    }
    photos = [
        (f"{source}-{path.stem}", image)
        for source, folder in folders.items()
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in _PHOTO_SUFFIXES and (image := _read_flat_image(path))
    ]
    bunch = sklearn.datasets.load_sample_images()
    for filename, pixels in zip(bunch.filenames, bunch.images, strict=True):
        photos.append((f"sklearn-{Path(filename).stem}", Image.fromarray(pixels)))
    return photos


def _read_flat_image(path: Path) -> Image.Image | None:
    """The image as RGB, or None for unreadable files and stacks (multi-page, animated)."""
    try:
        with Image.open(path) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                return None
            opened.load()
            return to_rgb(opened)
    except (OSError, ValueError, SyntaxError):
        return None


def _photo_views(
    photo: Image.Image, num_crops: int, rng: np.random.Generator
) -> Iterator[Image.Image]:
    """The photo itself, then ``num_crops`` random crops of 35-80 % of each side."""
    yield photo
    width, height = photo.size
    for _ in range(num_crops):
        crop_w = max(min(width, 32), int(width * rng.uniform(0.35, 0.8)))
        crop_h = max(min(height, 32), int(height * rng.uniform(0.35, 0.8)))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        yield photo.crop((left, top, left + crop_w, top + crop_h))


# --- pseudo-text, shared by documents and charts --------------------------------------------


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_SYLLABLES, size=int(rng.integers(1, 4))))


def _phrase(rng: np.random.Generator, num_words: int) -> str:
    return " ".join(_word(rng) for _ in range(num_words)).capitalize()


# --- documents ------------------------------------------------------------------------------


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
    size = max(10, int(width / rng.uniform(30, 55)))
    ink = _INKS[int(rng.integers(len(_INKS)))]
    num_columns = 2 if width > 600 and rng.random() < 0.5 else 1
    gutter = page.margin
    column_width = (width - 2 * page.margin - (num_columns - 1) * gutter) // num_columns
    page.text(page.margin, page.margin, _phrase(rng, 3), int(size * 1.8), ink)
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
    return (
        y + int(size * 1.8) if page.text(column.x, y, _phrase(rng, 2), size, column.ink) else None
    )


def _paragraph(
    page: _Page, rng: np.random.Generator, column: _Column, y: int, indent: int = 0
) -> int | None:
    words = [_word(rng) for _ in range(int(rng.integers(12, 60)))]
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
            cell = f"{rng.uniform(0, 999):.1f}" if row > 0 and col > 0 else _word(rng)[:8]
            while cell and _font(column.size).getlength(cell) > cell_w - 2 * pad:
                cell = cell[:-1]
            if cell:
                page.text(left + pad, top + pad, cell, column.size, column.ink)
    return y + num_rows * cell_h + column.size


# --- charts ---------------------------------------------------------------------------------


def render_chart(rng: np.random.Generator) -> tuple[Image.Image, list[Box]]:
    """A bar, horizontal bar, line or pie chart with title, labels and legend.

    Args:
        rng: Source of every data, size and text choice.

    Returns:
        The chart and the box of every text matplotlib drew on it.
    """
    figure = Figure(figsize=(rng.uniform(4, 8), rng.uniform(3, 6)), dpi=int(rng.integers(70, 110)))
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    kind = ("bar", "barh", "line", "pie")[int(rng.integers(4))]
    _plot(axes, kind, rng)
    if kind != "pie":  # a pie has no axes to label, and labels its wedges instead of a legend
        axes.set_ylabel(_phrase(rng, 2))
        axes.legend(loc="best")
    axes.set_title(_phrase(rng, int(rng.integers(2, 5))))
    figure.tight_layout()
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    renderer = canvas.get_renderer()
    boxes = [_image_box(text, renderer, image.size) for text in _drawn_texts(figure)]
    return image, [box for box in boxes if box is not None]


def _plot(axes: Axes, kind: str, rng: np.random.Generator) -> None:
    """Random data with pseudo-word category and series names."""
    categories = [_word(rng)[:7] for _ in range(int(rng.integers(3, 7)))]
    series = [_word(rng) for _ in range(int(rng.integers(1, 4)))]
    if kind == "pie":
        shares = rng.uniform(1, 10, size=len(categories))
        axes.pie(shares, labels=categories, autopct="%1.0f%%")
    elif kind == "line":
        for name in series:
            axes.plot(rng.normal(0, 1, 12).cumsum() * 10, marker="o", label=name)
        axes.set_xlabel(_phrase(rng, 2))
    else:  # grouped bars, vertical or horizontal
        positions, bar_size = np.arange(len(categories)), 0.8 / len(series)
        draw_bars = axes.bar if kind == "bar" else axes.barh
        for index, name in enumerate(series):
            heights = rng.uniform(1, 100, size=len(categories))
            draw_bars(positions + index * bar_size, heights, bar_size, label=name)
        set_ticks = axes.set_xticks if kind == "bar" else axes.set_yticks
        set_ticks(positions + bar_size * (len(series) - 1) / 2, categories)


def _drawn_texts(figure: Figure) -> Iterator[Text]:
    """Text artists that were actually drawn: ticks outside the view limits exist but are not."""
    for axes in figure.axes:
        candidates = [axes.title, *axes.texts]
        if axes.axison:
            for axis in (axes.xaxis, axes.yaxis):
                low, high = sorted(axis.get_view_interval())
                slack = 1e-9 * (high - low)
                in_view = [
                    t for t in axis.get_major_ticks() if low - slack <= t.get_loc() <= high + slack
                ]
                candidates += [axis.label, axis.get_offset_text(), *(t.label1 for t in in_view)]
        legend = axes.get_legend()
        if legend is not None:
            candidates += [legend.get_title(), *legend.get_texts()]
        yield from (t for t in candidates if t.get_visible() and t.get_text().strip())


def _image_box(text: Text, renderer: RendererAgg, size: tuple[int, int]) -> Box | None:
    """The text's window extent in image pixels (y flipped, clipped); None if off-image."""
    extent = text.get_window_extent(renderer)
    width, height = size
    x0, x1 = max(0, math.floor(extent.x0)), min(width, math.ceil(extent.x1))
    y0, y1 = max(0, math.floor(height - extent.y1)), min(height, math.ceil(height - extent.y0))
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None
