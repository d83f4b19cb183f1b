"""Decoding one input image to RGB, or saying in a word why it cannot be used.

Runs in the DataLoader workers. A bad file (truncated, not an image, absurdly large) must cost
one skipped input, never the run, so every failure becomes an ``UnusableImageError`` with a
``kind`` the run's summary counts by.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from vtsel.images import to_rgb

# Upsampled to the encoder's input, a smaller image holds no detail worth a training sample.
MIN_IMAGE_SIDE = 16
# A 10000 x 10000 photo decodes to 300 MB of RGB; far beyond any VLM's input, and the size at
# which a few crafted bytes (a "decompression bomb") could exhaust a worker's memory.
MAX_IMAGE_PIXELS = 100_000_000


class UnusableImageError(ValueError):
    """An input to skip and report, not a reason to stop the run."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@contextmanager
def _pil_size_guard_off() -> Iterator[None]:
    """PIL's own decompression-bomb check, off while ours (with the run's limit) applies."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def decode_rgb(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The image in ``data`` as 8-bit RGB (grey, CMYK, palette, alpha and 16-bit converted).

    The size is checked from the header, before any pixel is decoded.

    Raises:
        UnusableImageError: ``unreadable`` (not an image, truncated, unsupported mode),
            ``too large`` (more than ``max_pixels``) or ``too small`` (a side under
            ``MIN_IMAGE_SIDE``).
    """
    try:
        with _pil_size_guard_off(), Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise UnusableImageError(
                    "too large", f"{width}x{height} is {width * height} pixels, over "
                    f"max_image_pixels={max_pixels}"
                )
            if min(width, height) < MIN_IMAGE_SIDE:
                raise UnusableImageError(
                    "too small", f"{width}x{height} is under {MIN_IMAGE_SIDE} px on a side"
                )
            opened.load()  # decode now: truncated files fail here, not mid-batch
            return to_rgb(opened)
    except UnusableImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # PIL signals broken files with any of these (SyntaxError for malformed PNG chunks).
        raise UnusableImageError("unreadable", f"{type(err).__name__}: {err}") from err
