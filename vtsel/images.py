"""Image helpers that need only PIL and numpy, so writing or reading images never pulls in torch."""

from __future__ import annotations

import numpy as np
from PIL import Image

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_DIRECT_MODES = {"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"}
_INT_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB the way a person would expect it to look.

    ``Image.convert("RGB")`` alone gets three cases wrong: transparency turns black (so logos
    vanish), and 16-bit / 32-bit images are clipped at 255 (so they turn white). Transparent
    pixels are composited onto white, and wide integer or float images are stretched from their
    min..max onto 0..255.

    Args:
        image: A loaded PIL image in any mode.

    Returns:
        The image in mode ``"RGB"``.

    Raises:
        ValueError: The mode has no sensible RGB reading (e.g. multi-band float).
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in _DIRECT_MODES:
        return image.convert("RGB")
    if image.mode in _INT_MODES:
        return Image.fromarray(_rescale_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    raise ValueError(f"image mode {image.mode!r} has no RGB conversion")


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch a single-band image of any numeric range onto 0..255 (flat images become 0)."""
    values = values.astype(np.float64)  # (H, W)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)
