"""Real photos for the demo set, taken from packages that are installed anyway (no download)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import skimage
import sklearn.datasets
from PIL import Image

from vtsel.images import to_rgb

_PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp")


def package_photos() -> list[tuple[str, Image.Image]]:
    """Every single-frame 2-D image shipped with scikit-image, scikit-learn and matplotlib.

    Returns:
        ``(name, RGB image)`` pairs, named ``<source>-<file stem>``.
    """
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


def photo_views(
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
