"""Token-selection methods behind one interface (``SelectionMethod``): the trained selector
and the training-free baselines it is compared with.

Each takes raw encoder tokens (B, L, C), a per-crop budget and optionally the CLS→patch
attention (B, L), and returns the kept positions (B, keep) in spatial order.
"""

from vtsel.methods.base import SelectionMethod
from vtsel.methods.divprune import DivPrune
from vtsel.methods.hiprune import HiPruneStyle
from vtsel.methods.learned import LearnedSelection
from vtsel.methods.norm import FeatureNormTopK
from vtsel.methods.pact import PACT
from vtsel.methods.random import RandomSelection
from vtsel.methods.registry import METHODS, build_method
from vtsel.methods.spread import SpreadOrder
from vtsel.methods.uniform import UniformGrid
from vtsel.methods.visionzip import VisionZipStyle

__all__ = [
    "METHODS",
    "PACT",
    "DivPrune",
    "FeatureNormTopK",
    "HiPruneStyle",
    "LearnedSelection",
    "RandomSelection",
    "SelectionMethod",
    "SpreadOrder",
    "UniformGrid",
    "VisionZipStyle",
    "build_method",
]
