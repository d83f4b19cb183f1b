"""Plain ``nn.Module``s of the method (no Lightning inside): usable and exportable on their own."""

from vtsel.models.config import SelectorConfig
from vtsel.models.reconstructors import FeatureReconstructor, ImageReconstructor
from vtsel.models.selector import FeatureSelector, SelectorOutput, topk_mask

__all__ = [
    "FeatureReconstructor",
    "FeatureSelector",
    "ImageReconstructor",
    "SelectorConfig",
    "SelectorOutput",
    "topk_mask",
]
