"""Rendered charts for the demo set: titles, tick labels and legends in small text."""

from __future__ import annotations

import math
from collections.abc import Iterator

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from vtsel.demo.text import Box, pseudo_phrase, pseudo_word


def render_chart(rng: np.random.Generator) -> tuple[Image.Image, list[Box]]:
    """A bar, horizontal bar, line or pie chart with title, labels and legend.

    Args:
        rng: Source of every data, size and text choice.

    Returns:
        The chart and the box of every text matplotlib drew on it.
    """
    # Small figures with large print: once the centre crop is resized to the encoder's input
    # (224 px for ViT-S/16), 11-15 pt text on a 2.6-3.6 inch side stands 10-18 px tall, about
    # a 16-px patch, rather than the few pixels of matplotlib's defaults.
    figsize = (rng.uniform(3.2, 4.8), rng.uniform(2.6, 3.6))
    with matplotlib.rc_context({"font.size": float(rng.uniform(11, 15))}):
        figure = Figure(figsize=figsize, dpi=int(rng.integers(70, 110)))
        canvas = FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        kind = ("bar", "barh", "line", "pie")[int(rng.integers(4))]
        _plot(axes, kind, rng)
        if kind != "pie":  # a pie has no axes to label, and labels its wedges instead of a legend
            axes.set_ylabel(pseudo_phrase(rng, 2))
            axes.legend(loc="best")
        axes.set_title(pseudo_phrase(rng, int(rng.integers(2, 5))))
        figure.tight_layout()
        canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    renderer = canvas.get_renderer()
    boxes = [_image_box(text, renderer, image.size) for text in _drawn_texts(figure)]
    return image, [box for box in boxes if box is not None]


def _plot(axes: Axes, kind: str, rng: np.random.Generator) -> None:
    """Random data with pseudo-word category and series names."""
    categories = [pseudo_word(rng)[:7] for _ in range(int(rng.integers(3, 7)))]
    series = [pseudo_word(rng) for _ in range(int(rng.integers(1, 4)))]
    if kind == "pie":
        shares = rng.uniform(1, 10, size=len(categories))
        axes.pie(shares, labels=categories, autopct="%1.0f%%")
    elif kind == "line":
        for name in series:
            axes.plot(rng.normal(0, 1, 12).cumsum() * 10, marker="o", label=name)
        axes.set_xlabel(pseudo_phrase(rng, 2))
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
