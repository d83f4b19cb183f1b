"""Training-free token-selection baselines behind one interface (``SelectionMethod``).

Each takes raw encoder tokens (B, L, C), a per-crop budget and optionally the CLS→patch
attention (B, L), and returns the kept positions (B, keep) in spatial order.
"""

from vtsel.baselines.base import SelectionMethod, sorted_topk
from vtsel.baselines.divprune import DivPrune
from vtsel.baselines.hiprune import HiPruneStyle
from vtsel.baselines.norm import FeatureNormTopK
from vtsel.baselines.random import RandomSelection
from vtsel.baselines.registry import METHODS, build_method
from vtsel.baselines.uniform import UniformGrid
from vtsel.baselines.visionzip import VisionZipStyle

__all__ = [
    "METHODS",
    "DivPrune",
    "FeatureNormTopK",
    "HiPruneStyle",
    "RandomSelection",
    "SelectionMethod",
    "UniformGrid",
    "VisionZipStyle",
    "build_method",
    "sorted_topk",
]
