"""Write the demo image set (photos, documents, charts) into one folder."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from vtsel.demo.charts import render_chart
from vtsel.demo.documents import render_document
from vtsel.demo.photos import package_photos, photo_views
from vtsel.demo.text import Box


def write_demo_images(
    out: str,
    num_documents: int = 150,
    num_charts: int = 150,
    crops_per_photo: int = 8,
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
    photos = package_photos()
    counts = {"photo": 0, "doc": 0, "chart": 0}
    total = len(photos) * (1 + crops_per_photo) + num_documents + num_charts
    with Progress() as progress:
        task = progress.add_task("demo images", total=total)
        for name, photo in photos:
            for i, view in enumerate(photo_views(photo, crops_per_photo, _rng(seed, name))):
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
