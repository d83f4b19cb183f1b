"""Feature extraction: run a frozen vision encoder once and store its tokens as shards."""

from vtsel.extract.run import extract

__all__ = ["extract"]
