"""The one switch for microgpt's fast paths: the model's native kernels and the tokenizer's compiled BPE.

Both packages keep a plain implementation anyone can read (``tokenizer/bpe.py``; ``model/norm.py``, ``mlp.py``,
``rope.py``, ``attention.py``) and faster ones that give the same results (``tokenizer/bpe_jit.py`` with numba;
``model/fast.py`` with C kernels and hand-written backward passes). ``MICROGPT_KERNELS=0`` runs the plain code
everywhere — to check a result against it, or to rule the fast paths out when something looks wrong.

The switches this replaces, ``MICROGPT_NATIVE=0`` (the model's C kernels) and ``MICROGPT_NO_JIT=1`` (the
tokenizer's numba kernels), still work, with a warning: scripts and the figures in benchmarks/README.md use them.
Each now turns off every fast path, since there is only one switch.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from microgpt.common.errors import ConfigError

log = logging.getLogger(__name__)

KERNELS_ENV = "MICROGPT_KERNELS"
# Old name → whether its value turns the fast paths off.
_DEPRECATED: dict[str, Callable[[str], bool]] = {
    "MICROGPT_NATIVE": lambda value: value == "0",
    "MICROGPT_NO_JIT": lambda value: bool(value),
}


@functools.cache
def kernels_enabled() -> bool:
    """Whether the fast paths run: ``MICROGPT_KERNELS`` unset or ``1``; ``0`` turns them off (read once).

    Raises:
        ConfigError: When ``MICROGPT_KERNELS`` holds anything but ``0`` or ``1``.
    """
    value = os.environ.get(KERNELS_ENV) or None  # set but empty counts as unset
    if value is not None:
        if value not in ("0", "1"):
            raise ConfigError(f"{KERNELS_ENV}={value!r}: use 0 (plain code only) or 1 (fast paths, the default)")
        return value == "1"
    for name, turns_off in _DEPRECATED.items():
        if turns_off(os.environ.get(name, "")):
            log.warning("%s is deprecated: set %s=0 instead (it turns off every fast path)", name, KERNELS_ENV)
            return False
    return True
