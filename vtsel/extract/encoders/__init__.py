"""Vision encoders whose per-token features the selectors learn to prune.

Every encoder is a ``VisionEncoder``: ``normalize`` a crop's view, ``forward`` a batch into
patch tokens (and optionally CLS→patch attention), ``describe`` itself for the manifest. The
transformers encoders (any HF vision backbone, the LLaVA-NeXT and InternVL towers) need the
optional ``hf`` extra.
"""

from vtsel.extract.encoders.base import EncodedBatch, VisionEncoder
from vtsel.extract.encoders.internvl import InternVisionTower
from vtsel.extract.encoders.llava_next import LlavaNextVisionTower
from vtsel.extract.encoders.openclip import OpenClipEncoder, PreparedCrop
from vtsel.extract.encoders.transformers_model import TransformersEncoder

__all__ = [
    "EncodedBatch",
    "InternVisionTower",
    "LlavaNextVisionTower",
    "OpenClipEncoder",
    "PreparedCrop",
    "TransformersEncoder",
    "VisionEncoder",
]
