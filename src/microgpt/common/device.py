"""Device choice, autocast dtype and seeding — the few facts about hardware every stage needs."""

from __future__ import annotations

import os
import random
from typing import Literal

import numpy as np
import torch

from microgpt.common.errors import MicrogptError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """Return the device to run on: cuda → mps → cpu for ``"auto"``, else the one asked for.

    Args:
        preference: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``. The environment variable
            ``MICROGPT_DEVICE`` overrides ``"auto"``.
        local_rank: Under torchrun, the process's GPU index on its node (``cuda`` becomes ``cuda:local_rank``).

    Raises:
        MicrogptError: When the requested device is not available.
    """
    if preference == "auto":
        preference = os.environ.get("MICROGPT_DEVICE", "auto")
    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif torch.backends.mps.is_available():
            preference = "mps"
        else:
            preference = "cpu"
    kind = preference.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise MicrogptError(f"device {preference!r} requested but CUDA is not available on this machine")
        return torch.device(preference if ":" in preference else f"cuda:{local_rank}")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise MicrogptError("device 'mps' requested but MPS is not available on this machine")
        return torch.device("mps")
    if kind == "cpu":
        return torch.device("cpu")
    raise MicrogptError(f"unknown device {preference!r}: use auto, cpu, cuda, cuda:N or mps")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Return the compute dtype for autocast on ``device``.

    ``"auto"`` means bf16 on CUDA GPUs that support it, fp32 everywhere else: bf16 autocast on CPUs without
    AVX-512-BF16/AMX is ~22× slower than fp32 (measured on our Zen 3 machines), so CPU stays fp32 unless asked.

    Raises:
        MicrogptError: For an unknown precision, or bf16/fp16 asked on a device that cannot do it.
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise MicrogptError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    dtype = table[precision]
    if dtype is torch.float16 and device.type == "cpu":
        raise MicrogptError("precision fp16 needs a GPU; use fp32 (or bf16) on CPU")
    return dtype


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices) random generators in one call."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
