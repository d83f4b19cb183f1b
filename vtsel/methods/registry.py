"""Selection methods by name, so an evaluation config can list them as strings.

``selector`` (the trained one) takes the exported folder: ``build_method("selector",
selector="runs/demo/selector")``.
"""

from __future__ import annotations

from typing import Any

from vtsel.methods.base import SelectionMethod
from vtsel.methods.divprune import DivPrune
from vtsel.methods.hiprune import HiPruneStyle
from vtsel.methods.learned import LearnedSelection
from vtsel.methods.norm import FeatureNormTopK
from vtsel.methods.pact import PACT
from vtsel.methods.random import RandomSelection
from vtsel.methods.spread import SpreadOrder
from vtsel.methods.uniform import UniformGrid
from vtsel.methods.visionzip import VisionZipStyle

METHODS: dict[str, type[SelectionMethod]] = {
    method.name: method
    for method in (
        RandomSelection,
        UniformGrid,
        SpreadOrder,
        FeatureNormTopK,
        DivPrune,
        VisionZipStyle,
        HiPruneStyle,
        PACT,
        LearnedSelection,
    )
}


def build_method(name: str, **kwargs: Any) -> SelectionMethod:
    """The method registered as ``name``, built with ``kwargs`` (e.g. ``grid=(24, 24)``)."""
    if name not in METHODS:
        raise ValueError(f"unknown selection method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](**kwargs)
