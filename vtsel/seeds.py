"""The one way vtsel derives a seed per stream (a validation batch, a rank's shuffle) from a
run's seed, so streams differ from one another and repeat from run to run."""

from __future__ import annotations

# A prime larger than any batch index or rank: (seed, stream) pairs never collide.
_STRIDE = 1_000_003


def stream_seed(seed: int, stream: int) -> int:
    """The seed of stream ``stream`` (a batch index, a rank) of a run seeded ``seed``."""
    return seed * _STRIDE + stream
