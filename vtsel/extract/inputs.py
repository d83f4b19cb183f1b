"""The images an extraction run reads: resolving the ``images`` argument and decoding each file."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vtsel.data.format import sample_key
from vtsel.images import to_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Upsampled to the encoder's input, a smaller image holds no detail worth a training sample.
MIN_IMAGE_SIDE = 16
# Every sample of a run uses the same crop; multi-crop extraction will number them.
CROP_INDEX = 0


@dataclass(frozen=True)
class Source:
    """An input image file and the key its samples are stored under."""

    path: Path
    key: str  # path relative to the input root, without extension


class _UnusableImageError(ValueError):
    """An input that is skipped (and reported), not a reason to stop the run."""


def list_sources(spec: str) -> list[Source]:
    """Resolve the ``images`` argument into keyed image files; fail if there are none."""
    spec_path = Path(spec)
    if spec_path.is_dir():
        paths = [p for p in spec_path.rglob("*") if p.is_file() and _is_image_name(p)]
    elif spec_path.is_file() and not _is_image_name(spec_path):
        lines = spec_path.read_text().splitlines()
        paths = [(spec_path.parent / line.strip()).absolute() for line in lines if line.strip()]
    else:
        paths = [Path(p).absolute() for p in glob.glob(spec, recursive=True)]
        paths = [p for p in paths if p.is_file() and _is_image_name(p)]
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) match {spec!r}")
    # Keys are relative to the folder given, or else to the deepest folder holding all inputs.
    root = spec_path if spec_path.is_dir() else Path(os.path.commonpath([p.parent for p in paths]))
    sources = [Source(p, p.relative_to(root).with_suffix("").as_posix()) for p in sorted(paths)]
    _check_unique_keys(sources)
    return sources


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _check_unique_keys(sources: list[Source]) -> None:
    """Two files whose sample keys coincide (``a.png``/``a.jpg``, ``a.b``/``a_b``) would
    overwrite each other in a shard reader's view."""
    seen: dict[str, Path] = {}
    for source in sources:
        key = sample_key(source.key, CROP_INDEX)
        if key in seen:
            raise ValueError(f"{seen[key]} and {source.path} both map to sample key {key!r}")
        seen[key] = source.path


def _load_image(path: Path) -> Image.Image:
    """Decode an image fully and convert it to RGB, or say why it cannot be used."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: truncated files fail here, not mid-batch
            image = to_rgb(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL signals broken files with any of these (SyntaxError for malformed PNG chunks).
        raise _UnusableImageError(f"cannot decode: {err}") from err
    if min(image.size) < MIN_IMAGE_SIDE:
        raise _UnusableImageError(
            f"{image.width}x{image.height} is smaller than {MIN_IMAGE_SIDE} px on a side"
        )
    return image


def usable_images(
    sources: list[Source], skipped: dict[Path, str], on_skip: Callable[[], None]
) -> Iterator[tuple[Source, Image.Image]]:
    """Load each source in turn as RGB; unusable ones are logged into ``skipped``, not raised."""
    for source in sources:
        try:
            image = _load_image(source.path)
        except _UnusableImageError as err:
            log.warning("skipping %s: %s", source.path, err)
            skipped[source.path] = str(err)
            on_skip()
            continue
        yield source, image
