"""``SelectorConfig``: the one description of a Feature Selector.

It builds ``FeatureSelector``, ``vtsel export`` writes it into ``config.json``,
``TokenSelector.from_pretrained`` reads it back and ``vtsel flops`` counts its cost, so the
architecture is spelled once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

MaskEstimator = Literal["gumbel", "straight_through"]
# What ``blocks.normalize_tokens`` does to raw features before the selector sees them.
NORMALISATION = "per-token layernorm (no affine)"
_INTEGERS = ("feature_dim", "dim", "depth", "num_heads")
# The fields that shape the weights: a stored config must name them (the rest have defaults).
_SHAPING = ("feature_dim", "grid_size", "dim", "depth", "num_heads")


@dataclass(frozen=True)
class SelectorConfig:
    """A Feature Selector's input contract and architecture."""

    feature_dim: int
    """Width C of the encoder's tokens."""
    grid_size: tuple[int, int]
    """(H, W) token grid of one crop; L = H*W."""
    dim: int = 512
    """Width of the transformer."""
    depth: int = 4
    """Transformer layers (paper: 4)."""
    num_heads: int = 8
    """Attention heads."""
    tau: float = 2.0
    """Gumbel-Softmax temperature: changes how the gradient spreads, not which mask is drawn."""
    estimator: MaskEstimator = "gumbel"
    """``gumbel`` (paper) or ``straight_through`` (appendix B.1 ablation)."""
    init_keep_ratio: float = 0.5
    """Share of tokens eq. 8's mask keeps at initialisation (prior included)."""
    coverage: float = 3.0
    """Weight of the coverage prior in the keep logit (0: none)."""
    normalisation: str = NORMALISATION
    """How raw features are normalised inside; recorded so a reader of an export knows."""

    def __post_init__(self) -> None:
        wrong = [f"{key}={getattr(self, key)!r}" for key in _INTEGERS
                 if not _positive_int(getattr(self, key))]
        grid = self.grid_size
        if not (isinstance(grid, (tuple, list)) and len(grid) == 2
                and all(_positive_int(side) for side in grid)):
            wrong.append(f"grid_size={grid!r}")
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} must be positive integers (grid_size two of them)"
            )
        object.__setattr__(self, "grid_size", (int(grid[0]), int(grid[1])))
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be a multiple of num_heads={self.num_heads}")
        if self.estimator not in get_args(MaskEstimator):
            raise ValueError(
                f"estimator={self.estimator!r} must be one of {get_args(MaskEstimator)}"
            )
        if not 0.0 < self.init_keep_ratio < 1.0:
            raise ValueError(f"init_keep_ratio must lie in (0, 1), got {self.init_keep_ratio}")
        if self.coverage < 0:
            raise ValueError(f"coverage must be >= 0, got {self.coverage}")
        if self.normalisation != NORMALISATION:
            raise ValueError(
                f"normalisation={self.normalisation!r}: this vtsel normalises features as "
                f"{NORMALISATION!r} only"
            )

    @property
    def num_tokens(self) -> int:
        """Tokens of one crop, H*W."""
        return self.grid_size[0] * self.grid_size[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the grid as a list), as ``config.json`` holds them."""
        return {**asdict(self), "grid_size": list(self.grid_size)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> SelectorConfig:
        """The config of a mapping that may hold other keys too (``config.json``'s format,
        version and encoder); ``source`` names the file in errors. The fields that shape the
        weights must be given; the others default (exports before ``init_keep_ratio``).

        Raises:
            ValueError: A field is missing or holds the wrong kind of value.
        """
        names = [field.name for field in fields(cls)]
        missing = [name for name in _SHAPING if name not in data]
        if missing:
            raise ValueError(f"{source} lacks {', '.join(missing)}: not a selector config")
        try:
            return cls(**{name: data[name] for name in names if name in data})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}: re-export, or fix the file") from None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
