"""microgpt: a micro GPT — our own byte-level BPE, a modern GPT with RoPE, two-stage training and model soups."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("microgpt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]
