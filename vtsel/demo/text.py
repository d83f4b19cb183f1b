"""Pseudo-text and text boxes, shared by rendered documents and charts.

Made-up words of random syllables look like text to an encoder without tying the demo set to
any language or corpus.
"""

from __future__ import annotations

import numpy as np

Box = list[int]  # [x0, y0, x1, y1] in pixels, x1 and y1 exclusive

_SYLLABLES = ("ka", "lo", "mi", "ten", "var", "os", "ri", "du", "pel", "an", "sor", "ex", "gram")


def pseudo_word(rng: np.random.Generator) -> str:
    """One pseudo-word of 1-3 syllables."""
    return "".join(rng.choice(_SYLLABLES, size=int(rng.integers(1, 4))))


def pseudo_phrase(rng: np.random.Generator, num_words: int) -> str:
    """``num_words`` pseudo-words, capitalised like a title or sentence start."""
    return " ".join(pseudo_word(rng) for _ in range(num_words)).capitalize()
