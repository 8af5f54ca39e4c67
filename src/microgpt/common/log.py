"""Logging that only rank 0 prints: library code logs through ``get_logger``, never ``print``."""

from __future__ import annotations

import logging
import sys

from microgpt.common.dist import DistInfo

_ROOT = "microgpt"


def get_logger(name: str) -> logging.Logger:
    """Return the logger for a microgpt module (pass ``__name__``)."""
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def setup_logging(info: DistInfo | None = None, level: int = logging.INFO) -> None:
    """Send microgpt's log records to stderr on rank 0; other ranks log warnings and errors only.

    Calling it again replaces the handler (safe in tests and notebooks).
    """
    info = info or DistInfo.from_env()
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    prefix = "" if not info.is_distributed else f"[rank {info.rank}] "
    handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    root.addHandler(handler)
    root.setLevel(level if info.is_main else logging.WARNING)
    root.propagate = False
