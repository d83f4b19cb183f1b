"""The selection methods of an evaluation, built for the model they will prune.

Methods with a grid of their own (uniform lattice, HiPrune's neighbourhoods) are built on the
grid of tokens the LLM receives, and a trained selector on InternVL looks where it was trained:
before or after the pixel shuffle. Both are read from the model's config.
"""

from __future__ import annotations

from typing import Any

from vtsel.llm_methods import LLM_METHODS, LLMMethod, build_llm_method
from vtsel.methods import METHODS, LearnedSelection, SelectionMethod, build_method

GRID_METHODS = ("uniform", "hiprune")
VLM_METHODS = (*METHODS, *LLM_METHODS)  # chosen before the LLM, then dropped inside it


def build_methods(
    names: list[str], model_config: Any, selector: str | None, seed: int
) -> dict[str, SelectionMethod | LLMMethod]:
    """Each named method, with the arguments it takes from the command line and the model.

    Args:
        names: Registered method names (``VLM_METHODS``: ``vtsel.methods.METHODS`` and
            ``vtsel.llm_methods.LLM_METHODS``).
        model_config: The VLM's config (``model.config``).
        selector: Export folder for ``selector``.
        seed: Seed of ``random``.
    """
    methods = {}
    for name in names:
        if name == "selector":
            methods[name] = build_method(name, selector=selector)
        elif name == "random":
            methods[name] = build_method(name, seed=seed)
        elif name in GRID_METHODS:
            methods[name] = build_method(name, grid=selection_grid(model_config))
        elif name in LLM_METHODS:
            methods[name] = build_llm_method(name)
        else:
            methods[name] = build_method(name)
    return methods


def tower_grid(model_config: Any) -> tuple[int, int]:
    """(H, W) token grid of one crop as the model's vision tower produces it."""
    vision = model_config.vision_config
    sizes, patches = _pair(vision.image_size), _pair(vision.patch_size)
    return sizes[0] // patches[0], sizes[1] // patches[1]


def selection_grid(model_config: Any) -> tuple[int, int]:
    """(H, W) grid the baselines choose on: the tower's, or for InternVL the grid after its
    pixel shuffle (``downsample_ratio``), which is what its LLM receives."""
    height, width = tower_grid(model_config)
    if _is_internvl(model_config):
        ratio = model_config.downsample_ratio
        return int(height * ratio), int(width * ratio)
    return height, width


def attach_options(model_config: Any, method: SelectionMethod | LLMMethod) -> dict[str, str]:
    """Options for ``vtsel.integrations.attach``: InternVL's ``feature_stage``.

    A selector trained on the tower's own grid (``conf/internvl.yaml``: 32x32 before pixel
    shuffle) scores the tokens ``before`` the shuffle; every other method, and a selector
    trained on the merged grid, looks ``after`` it (the integration's default).
    """
    if not _is_internvl(model_config) or not isinstance(method, LearnedSelection):
        return {}
    if method.selector.selector.config.grid_size == tuple(tower_grid(model_config)):
        return {"feature_stage": "before"}
    return {}


def _is_internvl(model_config: Any) -> bool:
    return getattr(model_config, "model_type", None) == "internvl"


def _pair(size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (size[0], size[1]) if isinstance(size, (list, tuple)) else (size, size)
