"""vtsel: learn which visual tokens a VLM can drop, and drop them."""

__version__ = "0.1.0"
