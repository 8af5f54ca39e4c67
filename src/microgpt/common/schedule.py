"""Learning-rate schedules as pure functions of the step: linear warmup, then cosine, linear or WSD decay.

A schedule returns a *multiplier* of each parameter group's base learning rate, so AdamW and Muon groups with
different base rates share one shape. Pure functions of ``step`` keep resume exact: nothing to save.
"""

from __future__ import annotations

import math
from typing import Literal

ScheduleName = Literal["cosine", "linear", "wsd", "constant"]


def lr_multiplier(
    step: int,
    *,
    max_steps: int,
    warmup_steps: int,
    schedule: ScheduleName = "cosine",
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Return the learning-rate multiplier in ``[min_lr_ratio, 1]`` for optimizer step ``step`` (0-based).

    Warmup is linear from ``1/warmup_steps`` to 1 over the first ``warmup_steps`` steps. After it:

    - ``cosine``: half a cosine from 1 down to ``min_lr_ratio`` at ``max_steps`` (Loshchilov & Hutter, SGDR).
    - ``linear``: a straight line from 1 down to ``min_lr_ratio`` at ``max_steps``.
    - ``wsd``: warmup-stable-decay — flat at 1, then linear down to ``min_lr_ratio`` over the last
      ``decay_fraction`` of the run (Hu et al. 2024, MiniCPM), which lets a run be extended from its stable phase.
    - ``constant``: 1 after warmup.

    Args:
        step: The optimizer step about to be taken, 0-based.
        max_steps: Total optimizer steps in the run.
        warmup_steps: Steps of linear warmup (0 for none).
        schedule: The decay shape after warmup.
        min_lr_ratio: The final multiplier, as a fraction of the base rate.
        decay_fraction: For ``wsd`` only: the fraction of ``max_steps`` spent decaying.

    Returns:
        The multiplier to apply to each group's base learning rate.

    >>> lr_multiplier(0, max_steps=100, warmup_steps=10)
    0.1
    >>> round(lr_multiplier(100, max_steps=100, warmup_steps=10), 6)
    0.1
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or max_steps <= warmup_steps:
        return 1.0
    if schedule == "wsd":
        decay_start = max(warmup_steps, int(round(max_steps * (1.0 - decay_fraction))))
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return 1.0 - (1.0 - min_lr_ratio) * progress
    progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    # cosine: 0.5 * (1 + cos(pi * progress)) goes 1 → 0; rescale into [min_lr_ratio, 1].
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
