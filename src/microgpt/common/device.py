"""Device choice, autocast dtype and seeding — the few facts about hardware every stage needs."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
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
            Picking CUDA also enables TF32 for fp32 matmuls (:func:`enable_tf32`).

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
        enable_tf32()
        return torch.device(preference if ":" in preference else f"cuda:{local_rank}")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise MicrogptError("device 'mps' requested but MPS is not available on this machine")
        return torch.device("mps")
    if kind == "cpu":
        return torch.device("cpu")
    raise MicrogptError(f"unknown device {preference!r}: use auto, cpu, cuda, cuda:N or mps")


def auto_precision(device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """The dtype ``precision: auto`` means: bf16 on GPUs with bf16 tensor cores, fp16 on older ones, else fp32.

    ``torch.cuda.is_bf16_supported()`` is also true on pre-Ampere GPUs, where bf16 is emulated and slower than
    fp32, so the choice reads the compute capability: bf16 from 8.0 (Ampere), fp16 with a gradient scaler on 7.x
    (Volta/Turing fp16 tensor cores, as nanoGPT does), fp32 below and on CPUs and MPS.

    Args:
        device_type: ``"cuda"``, ``"cpu"`` or ``"mps"``.
        capability: The CUDA device's ``(major, minor)`` compute capability.

    >>> auto_precision("cuda", (9, 0)), auto_precision("cuda", (7, 0)), auto_precision("cpu")
    (torch.bfloat16, torch.float16, torch.float32)
    """
    if device_type != "cuda" or capability is None:
        return torch.float32
    if capability >= (8, 0):
        return torch.bfloat16
    return torch.float16 if capability >= (7, 0) else torch.float32


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Return the compute dtype for autocast on ``device``.

    ``"auto"`` is :func:`auto_precision`: bf16 on Ampere and newer GPUs, fp32 on CPUs — bf16 autocast on CPUs
    without AVX-512-BF16/AMX is ~22× slower than fp32 (measured on our Zen 3 machines), so CPU stays fp32 unless
    asked.

    Raises:
        MicrogptError: For an unknown precision, or bf16/fp16 asked on a device that cannot do it.
    """
    if precision == "auto":
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        return auto_precision(device.type, capability)
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise MicrogptError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    dtype = table[precision]
    if dtype is torch.float16 and device.type == "cpu":
        raise MicrogptError("precision fp16 needs a GPU; use fp32 (or bf16) on CPU")
    return dtype


def enable_tf32() -> None:
    """Let fp32 matmuls and convolutions on CUDA use TF32 tensor cores (eval, sampling, ``precision: fp32``).

    TF32 keeps fp32's range with a 10-bit mantissa, the trade nanoGPT and PyTorch's own guidance make for
    training; autocast bf16/fp16 matmuls are unaffected. Called whenever a CUDA device is picked.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


# Dense (not 2:4 sparse) tensor-core peaks from NVIDIA's datasheets, per GPU: (bf16/fp16, tf32) FLOP/s.
# Matched in order against torch.cuda.get_device_name(), so the specific names come before the general ones.
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("B200", 2250e12, 1100e12),
    ("H200", 989e12, 494e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100 NVL", 835e12, 418e12),
    ("H100", 989e12, 494e12),  # SXM
    ("GH200", 989e12, 494e12),
    ("H800", 989e12, 494e12),
    ("A100", 312e12, 156e12),
    ("A800", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("L40", 181e12, 90.5e12),
    ("L4", 121e12, 60e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12),
    ("V100", 125e12, 0.0),  # fp16 only; no bf16, no TF32
    ("T4", 65e12, 0.0),
)


def peak_flops(device: torch.device, dtype: torch.dtype, name: str | None = None) -> float | None:
    """One device's peak matmul FLOP/s for ``dtype`` (dense tensor cores), for MFU; None when unknown.

    CPUs and MPS have no entry: their peak depends on cores, clocks and vector units we cannot read reliably, so
    MFU is left out there (give ``train.peak_flops`` to get it). fp32 counts TF32's peak, which
    :func:`enable_tf32` turns on.

    Args:
        device: The device.
        dtype: The autocast dtype (bf16, fp16 or fp32).
        name: The GPU's name (default: ``torch.cuda.get_device_name(device)``).

    >>> peak_flops(torch.device("cuda"), torch.bfloat16, name="NVIDIA H100 80GB HBM3")
    989000000000000.0
    """
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device) if name is None else name
    for key, half, tf32 in PEAK_FLOPS:
        if key in name:
            value = tf32 if dtype is torch.float32 else half
            return value or None
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices) random generators in one call."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """With ``enabled``, run the block with ``torch.use_deterministic_algorithms`` on; restore the setting after.

    GPU kernels with atomics (e.g. ``index_add`` in a backward pass) otherwise vary from run to run; cuBLAS also needs
    a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``) to be deterministic.
    """
    was = torch.are_deterministic_algorithms_enabled()
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
