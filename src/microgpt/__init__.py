"""microgpt: a micro GPT — our own byte-level BPE, a modern GPT with RoPE, two-stage training and model soups."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("microgpt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__", "load_model", "load_model_async"]


def __getattr__(name: str) -> Any:
    """``from microgpt import load_model`` without importing torch for every ``import microgpt``."""
    if name in {"load_model", "load_model_async"}:
        from microgpt.model import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
