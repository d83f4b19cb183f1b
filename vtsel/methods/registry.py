"""Selection methods by name, so an evaluation config can list them as strings.

``selector`` (the trained one) takes the exported folder: ``build_method("selector",
selector="runs/demo/selector")``.
"""

from __future__ import annotations

from typing import Any

from vtsel.llm_methods import LLM_METHODS
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


def check_method_names(names: list[str]) -> None:
    """Refuse names that are not registered, pointing LLM-side ones to where they run."""
    unknown = [name for name in names if name not in METHODS]
    if not unknown:
        return
    inside = [name for name in unknown if name in LLM_METHODS]
    hint = (f" ({', '.join(inside)} prune inside the language model: vtsel vlm-eval and "
            f"vtsel.integrations.attach run them)" if inside else "")
    raise ValueError(f"unknown selection method {', '.join(map(repr, unknown))}; valid: "
                     f"{', '.join(sorted(METHODS))}{hint}")


def build_method(name: str, **kwargs: Any) -> SelectionMethod:
    """The method registered as ``name``, built with ``kwargs`` (e.g. ``grid=(24, 24)``)."""
    check_method_names([name])
    return METHODS[name](**kwargs)
