"""FastV and PyramidDrop: visual tokens pruned inside the language model, as schedules.

Tower methods (``vtsel.methods``) choose before the LLM; these two let the LLM read every visual
token in its first layers and drop the least attended ones at depth, ranked by the attention the
last prompt token pays them:

- **FastV** (Chen et al. 2024, arXiv 2403.06764 §4): after layer K (K=2), ranked by the
  attention computed inside layer K (0-based layer K-1), keep a share R of the visual tokens.
- **PyramidDrop** (Xing et al. 2025, arXiv 2410.17247 §3.2): the layers are split into 4 equal
  stages; at the start of stages 1, 2, 3 (layers L/4, L/2, 3L/4) the tokens left are ranked by
  that layer's own attention and a share λ of them kept, so stage s holds λ^s of them.

Budgets. ``Budget(keep=ρ)`` means what a tower method's keep ρ costs the LLM: the visual tokens
each layer reads, averaged over the layers, are ρ·n (the FLOP convention of FastV and
PyramidDrop up to its small quadratic term; ``vtsel flops`` counts it exactly). FastV's R and
PyramidDrop's λ follow from ρ; ρ below what the unpruned first layers already cost (K/L, ¼) is
refused. Layers are 0-based: FastV's "after layer 2" prunes before the layer indexed 2.

This module is the schedule alone: the Hugging Face integration
(``vtsel.integrations.llm_pruning``) runs it and ``vtsel flops`` counts it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from vtsel.models.selector import tokens_for_ratio

FASTV_K = 2  # FastV's default filtering layer
PDROP_STAGES = 4  # PyramidDrop's stage count for 32-layer LLaVA models
_BISECTION_STEPS = 60


@dataclass(frozen=True)
class Stage:
    """One pruning step: rank at ``rank_layer``'s input, keep ``share`` of the image's visual
    tokens (of all it had before any pruning), from ``prune_layer`` on."""

    rank_layer: int
    prune_layer: int
    share: float


def kept_count(tokens: int, share: float) -> int:
    """Visual tokens a stage keeps of a prompt's ``tokens``, rounded as tower budgets are."""
    return tokens_for_ratio(tokens, share) if tokens else 0


def tokens_by_layer(stages: list[Stage], layers: int, tokens: int) -> list[int]:
    """The visual tokens each of ``layers`` decoder layers reads under ``stages``."""
    counts = []
    for layer in range(layers):
        applied = [stage for stage in stages if stage.prune_layer <= layer]
        counts.append(kept_count(tokens, applied[-1].share) if applied else tokens)
    return counts


@dataclass(frozen=True)
class FastV:
    """FastV: one prune after layer ``k``, ranked by layer ``k``'s attention (module doc)."""

    k: int = FASTV_K
    name: str = "fastv"

    def schedule(self, layers: int, keep: float) -> list[Stage]:
        """The one stage that makes the average visual share over ``layers`` equal ``keep``."""
        _check_keep(keep)
        if not 0 < self.k < layers:
            raise ValueError(f"FastV's k={self.k} must lie in [1, {layers - 1}] for {layers} "
                             f"layers")
        share = (keep * layers - self.k) / (layers - self.k)
        if share <= 0:
            raise ValueError(
                f"fastv at keep {keep:g}: its first {self.k} of {layers} layers read every visual "
                f"token, so the average share is at least {self.k / layers:.3f}; give keep above it"
            )
        return [Stage(self.k - 1, self.k, share)]


@dataclass(frozen=True)
class PyramidDrop:
    """PyramidDrop: ``stages`` equal stages, each keeping a share λ of the tokens left (module
    doc); λ is solved from the budget."""

    stages: int = PDROP_STAGES
    name: str = "pdrop"

    def boundaries(self, layers: int) -> list[int]:
        """The first layer of stages 1 .. stages-1."""
        if not 1 < self.stages <= layers:
            raise ValueError(f"PyramidDrop's {self.stages} stages need 2..{layers} layers")
        return [round(stage * layers / self.stages) for stage in range(1, self.stages)]

    def average_share(self, layers: int, ratio: float) -> float:
        """The visual share averaged over the layers when each stage keeps ``ratio`` of the last."""
        edges = [0, *self.boundaries(layers), layers]
        spans = [end - start for start, end in itertools.pairwise(edges)]
        return sum(span * ratio**stage for stage, span in enumerate(spans)) / layers

    def ratio_for(self, layers: int, keep: float) -> float:
        """λ whose schedule averages ``keep`` (bisection: the average rises with λ)."""
        _check_keep(keep)
        if keep == 1.0:
            return 1.0
        floor = self.average_share(layers, 0.0)
        if keep <= floor:
            raise ValueError(
                f"pdrop at keep {keep:g}: its first stage ({self.boundaries(layers)[0]} of "
                f"{layers} layers) reads every visual token, so the average share is at least "
                f"{floor:.3f}; give keep above it"
            )
        low, high = 0.0, 1.0
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            if self.average_share(layers, middle) < keep:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    def schedule(self, layers: int, keep: float) -> list[Stage]:
        """Stage s (1..stages-1) ranks and prunes at its first layer, keeping λ^s."""
        ratio = self.ratio_for(layers, keep)
        return [Stage(layer, layer, ratio**stage)
                for stage, layer in enumerate(self.boundaries(layers), start=1)]


LLMMethod = FastV | PyramidDrop
LLM_METHODS: dict[str, type[FastV] | type[PyramidDrop]] = {"fastv": FastV, "pdrop": PyramidDrop}


def build_llm_method(name: str) -> LLMMethod:
    """A registered LLM-side method by name, with its paper's defaults."""
    if name not in LLM_METHODS:
        raise ValueError(f"unknown LLM pruning method {name!r}; valid: {', '.join(LLM_METHODS)}")
    return LLM_METHODS[name]()


def _check_keep(keep: float) -> None:
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
