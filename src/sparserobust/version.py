"""The package version (a leaf module: checkpoints and provenance records read it)."""

__version__ = "0.1.0"
