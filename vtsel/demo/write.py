"""Write the demo image set (photos, documents, charts) into one folder, or split by source.

The split serves an honest evaluation: a selector (and the judge that scores it) trains on
``train/`` and is evaluated on ``heldout/``, images of other sources it never saw, rather than
on a random share of the same sources.
"""

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
from vtsel.demo.pages import render_page
from vtsel.demo.photos import package_photos, photo_views
from vtsel.demo.text import Box
from vtsel.outputs import atomic_open, check_out_folder, write_atomically

TRAIN_DIR, HELDOUT_DIR = "train", "heldout"
# With heldout=True: documents and scikit-image photos train; charts, pages of real text and
# these photos are held out.
HELDOUT_PHOTO_SOURCES = ("mpl", "sklearn")


def write_demo_images(
    out: str,
    num_documents: int = 300,
    num_charts: int = 150,
    num_pages: int = 60,
    crops_per_photo: int = 16,
    seed: int = 0,
    heldout: bool = False,
) -> dict[str, int]:
    """Write the demo image set into a folder, replacing files of the same names.

    Args:
        out: Folder to write into (created if missing).
        num_documents: Number of rendered document pages.
        num_charts: Number of rendered charts.
        num_pages: Number of rendered pages of real text (the standard library's docstrings).
        crops_per_photo: Random crops written per packaged photo, besides the photo itself.
        seed: Seed of every random choice; the same seed writes byte-identical files.
        heldout: Write two subfolders instead of one: ``train/`` (documents and the
            scikit-image photos) and ``heldout/`` (charts, pages of real text and the
            matplotlib and scikit-learn photos), so an evaluation can use images of sources
            training never saw.

    Returns:
        Images written per kind: ``{"photo": ..., "doc": ..., "chart": ..., "page": ...}``.
    """
    root = Path(out)
    check_out_folder(root)
    folders = [root / TRAIN_DIR, root / HELDOUT_DIR] if heldout else [root]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    photos = package_photos()
    counts = {"photo": 0, "doc": 0, "chart": 0, "page": 0}
    total = len(photos) * (1 + crops_per_photo) + num_documents + num_charts + num_pages
    with Progress() as progress:
        task = progress.add_task("demo images", total=total)
        for name, photo in photos:
            folder = destination(root, f"photo-{name}", heldout)
            for i, view in enumerate(photo_views(photo, crops_per_photo, _rng(seed, name))):
                _save_png(view, folder / f"photo-{name}-{i}.png")
                counts["photo"] += 1
                progress.advance(task)
        for kind, number, render in (
            ("doc", num_documents, render_document),
            ("chart", num_charts, render_chart),
            ("page", num_pages, render_page),
        ):
            for i in range(number):
                image, boxes = render(_rng(seed, f"{kind}-{i}"))
                name = f"{kind}-{i}"
                _save_with_regions(image, boxes, destination(root, name, heldout) / f"{name}.png")
                counts[kind] += 1
                progress.advance(task)
    Console().print(f"wrote {counts} to {', '.join(str(folder) for folder in folders)}")
    return counts


def destination(root: Path, name: str, heldout: bool) -> Path:
    """The folder of the image ``name`` (``doc-3``, ``photo-mpl-logo2``): ``root`` itself, or
    with ``heldout`` its ``heldout/`` (charts, pages, ``HELDOUT_PHOTO_SOURCES``) or
    ``train/``."""
    if not heldout:
        return root
    kind, rest = name.split("-", 1)
    source = rest.split("-", 1)[0]
    held = kind in ("chart", "page") or (kind == "photo" and source in HELDOUT_PHOTO_SOURCES)
    return root / (HELDOUT_DIR if held else TRAIN_DIR)


def _rng(seed: int, name: str) -> np.random.Generator:
    """An independent stream per image, so changing one count leaves other images intact."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_open(path, "wb") as file:
        image.save(file, format="PNG")


def _save_with_regions(image: Image.Image, boxes: list[Box], path: Path) -> None:
    _save_png(image, path)
    regions = {"width": image.width, "height": image.height, "boxes": boxes}
    write_atomically(path.with_suffix(".regions.json"), json.dumps(regions))
