"""How microgpt starts worker processes: one decision for every pool.

The pools: data preparation, tokenizer training and batch encoding.

Fork where the platform has it: a forked worker shares the parent's loaded tokenizer, its caches and compiled
kernels, where a spawned one re-imports microgpt and torch (~1-3 s) and loads everything again. Spawn elsewhere
(macOS, Windows); each pool then hands its workers what they need through an initializer.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext
from typing import Literal


def start_method() -> Literal["fork", "spawn"]:
    """``fork`` where the platform offers it, else ``spawn``."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def process_context() -> BaseContext:
    """The multiprocessing context every pool uses (:func:`start_method`)."""
    return multiprocessing.get_context(start_method())
