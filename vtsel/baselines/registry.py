"""Baseline methods by name, so an evaluation config can list them as strings."""

from __future__ import annotations

from typing import Any

from vtsel.baselines.base import SelectionMethod
from vtsel.baselines.divprune import DivPrune
from vtsel.baselines.hiprune import HiPruneStyle
from vtsel.baselines.norm import FeatureNormTopK
from vtsel.baselines.random import RandomSelection
from vtsel.baselines.uniform import UniformGrid
from vtsel.baselines.visionzip import VisionZipStyle

METHODS: dict[str, type[SelectionMethod]] = {
    method.name: method
    for method in (
        RandomSelection,
        UniformGrid,
        FeatureNormTopK,
        DivPrune,
        VisionZipStyle,
        HiPruneStyle,
    )
}


def build_method(name: str, **kwargs: Any) -> SelectionMethod:
    """The method registered as ``name``, built with ``kwargs`` (e.g. ``grid=(24, 24)``)."""
    if name not in METHODS:
        raise ValueError(f"unknown selection method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](**kwargs)
