"""Feature extraction: run a frozen vision encoder once and store its tokens as shards."""

from vtsel.extract.encoders import OpenClipEncoder, PreparedCrop
from vtsel.extract.run import extract

__all__ = ["OpenClipEncoder", "PreparedCrop", "extract"]
