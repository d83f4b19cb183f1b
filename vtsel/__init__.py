"""vtsel: learn which visual tokens a VLM can drop, and drop them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtsel.budget import Budget
    from vtsel.inference import TokenSelector

__version__ = "0.1.0"
__all__ = ["Budget", "TokenSelector", "__version__"]


def __getattr__(name: str) -> Any:
    """``vtsel.TokenSelector`` and ``vtsel.Budget`` on first use, so ``import vtsel`` stays
    free of torch."""
    if name == "TokenSelector":
        from vtsel.inference import TokenSelector

        return TokenSelector
    if name == "Budget":
        from vtsel.budget import Budget

        return Budget
    raise AttributeError(f"module 'vtsel' has no attribute {name!r}")
