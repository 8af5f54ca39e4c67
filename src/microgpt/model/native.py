"""microgpt's native CPU kernels (``kernels/native.c``): short-context causal attention, SwiGLU, RMSNorm.

All are float32, forward and backward, and where they apply they replace several torch kernels each (the
measurements are in benchmarks/README.md, "Model step"). The C file is compiled at first use with the system C
compiler (``$CC``, else ``cc``) into ``<cache>/kernels/native-<key>.so`` (cache: ``$MICROGPT_CACHE_DIR`` or
``~/.cache/microgpt``), the key hashing the source, the flags, the compiler and this CPU, and loaded with
:mod:`ctypes`. Nothing is needed beyond a C compiler with OpenMP (gcc; clang with libomp), which
``torch.compile`` on CPU needs too. When there is none, :func:`library` returns ``None`` and the model uses
torch's ops instead (``F.scaled_dot_product_attention``, ``F.silu``): same results, slower. The model reaches
these kernels only through :mod:`microgpt.model.fast`, which decides where each applies (and where
``MICROGPT_KERNELS=0`` keeps them out).

Each kernel pair (forward, backward) is one ``torch.autograd.Function``. In eager mode it calls the kernels
through :mod:`ctypes` directly (~2 µs a call); under ``torch.compile`` it calls them as torch operators
(``torch.ops.microgpt.*``, with fake implementations giving the output shapes), which the compiled graph keeps
as opaque nodes. Going through the operators in eager mode too would cost ~75 µs more per forward+backward.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from microgpt.common.aio import default_cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "native.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
BLOCK = 16  # the kernel pads T to a multiple of this (its NR); head_dim must be a multiple of it too
# Longest context that takes the kernel (its probabilities grow with T²; measured against SDPA, benchmarks/README).
MAX_SHORT_CONTEXT = 256


def _cpu_key() -> str:
    """What the ``-march=native`` build depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))  # first occurrence of each line, in order


def _build(compiler: str) -> Path:
    """Compile the kernel (once per source, flags, compiler and CPU) and return the shared library's path."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key_text = "\n".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_key()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    target = default_cache_dir() / "kernels" / f"native-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename: a crash or a concurrent rank never leaves a half-written library.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        command = [compiler, *FLAGS, str(SOURCE), "-o", tmp_name, "-lm"]
        subprocess.run(command, capture_output=True, text=True, check=True)
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first call; ``None`` when it cannot be built."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: the model uses torch's SDPA and SiLU (slower on CPU)")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        log.warning("could not build the native kernels, using torch's SDPA and SiLU: %s", detail.strip()[:500])
        return None
    i64, ptr, f32, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    signatures = {
        "short_attention_forward": [ptr, i64, i64, ptr, ptr, ptr, f32, ptr, ptr, i64, i64, i64, i64, i64, f32, i32],
        "short_attention_backward": [ptr, ptr, i64, i64, ptr, ptr, ptr, f32, ptr, ptr, ptr]
        + [i64, i64, i64, i64, i64, f32, i32],
        "swiglu_forward": [ptr, ptr, i64, i64, i32],
        "swiglu_backward": [ptr, ptr, ptr, i64, i64, i32],
        "rms_norm_forward": [ptr, ptr, ptr, ptr, i64, i64, f32, i32],
        "rms_norm_backward": [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i32],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    return lib


def padded(seq_len: int) -> int:
    """The attention kernel's padded context: ``seq_len`` rounded up to a multiple of 16."""
    return -(-seq_len // BLOCK) * BLOCK


def _kernels() -> ctypes.CDLL:
    lib = library()
    assert lib is not None, "the native kernels are not available (see microgpt.model.native.library)"
    return lib


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]  # untyped in torch
def native_available() -> bool:
    """Whether the kernels are built and loaded (a constant to torch.compile, which cannot trace the build)."""
    return library() is not None


# ---- Attention ----


def _attention_forward(  # noqa: PLR0913  # the kernel's inputs
    qkv: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    n_head: int,
    n_kv_head: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, _, D = qkv.shape
    y = qkv.new_empty(B, T, n_head * D)
    probs = qkv.new_empty(B, n_head, padded(T), padded(T))
    _kernels().short_attention_forward(
        qkv.data_ptr(), qkv.stride(0), qkv.stride(1), _pointer(cos), _pointer(sin), _pointer(norm_weight), eps,
        y.data_ptr(), probs.data_ptr(), B, T, n_head, n_kv_head, D, D**-0.5, torch.get_num_threads(),
    )  # fmt: skip
    return y, probs


def _attention_backward(  # noqa: PLR0913  # the forward's inputs, its probabilities and the gradient
    grad_y: torch.Tensor,
    qkv: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    probs: torch.Tensor,
    n_head: int,
    n_kv_head: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, _, D = qkv.shape
    grad_y = grad_y.contiguous()
    grad_qkv = qkv.new_empty(qkv.shape)
    grad_norm = qkv.new_zeros(D)  # stays zero without QK-norm (an operator cannot return None)
    _kernels().short_attention_backward(
        grad_y.data_ptr(), qkv.data_ptr(), qkv.stride(0), qkv.stride(1), _pointer(cos), _pointer(sin),
        _pointer(norm_weight), eps, probs.data_ptr(), grad_qkv.data_ptr(), grad_norm.data_ptr(),
        B, T, n_head, n_kv_head, D, D**-0.5, torch.get_num_threads(),
    )  # fmt: skip
    return grad_qkv, grad_norm


short_attention_op = torch.library.custom_op("microgpt::short_attention", mutates_args=())(_attention_forward)
short_attention_backward_op = torch.library.custom_op("microgpt::short_attention_backward", mutates_args=())(
    _attention_backward
)


@short_attention_op.register_fake
def _(qkv: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, _, D = qkv.shape
    n_head = args[-2]
    return qkv.new_empty(B, T, n_head * D), qkv.new_empty(B, n_head, padded(T), padded(T))


@short_attention_backward_op.register_fake
def _(grad_y: torch.Tensor, qkv: torch.Tensor, *_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return qkv.new_empty(qkv.shape), qkv.new_empty(qkv.size(-1))


class _ShortAttention(torch.autograd.Function):
    """``qkv`` (B, T, n_head + 2·n_kv_head, D) → causal attention (B, T, n_head·D); keeps the probabilities."""

    @staticmethod
    def forward(  # noqa: PLR0913  # the operator's arguments
        ctx: Any,
        qkv: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        norm_weight: torch.Tensor | None,
        eps: float,
        n_head: int,
        n_kv_head: int,
    ) -> torch.Tensor:
        forward = short_attention_op if torch.compiler.is_compiling() else _attention_forward
        y, probs = forward(qkv, cos, sin, norm_weight, eps, n_head, n_kv_head)
        ctx.save_for_backward(qkv, cos, sin, norm_weight, probs)
        ctx.shape = (eps, n_head, n_kv_head)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        qkv, cos, sin, norm_weight, probs = ctx.saved_tensors
        eps, n_head, n_kv_head = ctx.shape
        backward = short_attention_backward_op if torch.compiler.is_compiling() else _attention_backward
        grad_qkv, grad_norm = backward(grad_y, qkv, cos, sin, norm_weight, eps, probs, n_head, n_kv_head)
        return grad_qkv, None, None, None if norm_weight is None else grad_norm, None, None, None


def use_short_attention(qkv: torch.Tensor, head_dim: int, dropout: float) -> bool:
    """Whether :func:`short_causal_attention` applies (and measured faster than SDPA) for this call."""
    return (
        qkv.device.type == "cpu"
        and qkv.dtype == torch.float32
        and qkv.size(1) <= MAX_SHORT_CONTEXT
        and head_dim % BLOCK == 0
        and dropout == 0.0
        and native_available()
    )


def short_causal_attention(
    qkv: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    n_head: int,
    n_kv_head: int,
    qk_norm: tuple[torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """Causal attention through the native kernel: ``qkv`` (B, T, n_head + 2·n_kv_head, D) → (B, T, n_head·D).

    Args:
        qkv: Queries, keys and values as projected: the kernel normalises and rotates them; any batch and time
            strides.
        rope: ``(cos, sin)`` each (T, 1, D), or ``None`` for no rotation.
        n_head: Query heads.
        n_kv_head: Key/value heads (divides ``n_head``).
        qk_norm: ``(weight, eps)`` of the RMSNorm shared by queries and keys (QK-norm), applied before RoPE.
    """
    B, T, _, D = qkv.shape
    if qkv.stride(3) != 1 or qkv.stride(2) != D:
        qkv = qkv.contiguous()
    cos, sin = (None, None) if rope is None else (rope[0].reshape(T, D), rope[1].reshape(T, D))
    norm_weight, eps = (None, 0.0) if qk_norm is None else (qk_norm[0].contiguous(), qk_norm[1])
    y: torch.Tensor = _ShortAttention.apply(qkv, cos, sin, norm_weight, eps, n_head, n_kv_head)  # type: ignore[no-untyped-call]
    return y


# ---- SwiGLU ----


def _swiglu_forward(h: torch.Tensor) -> torch.Tensor:
    rows, hidden = h.size(0), h.size(1) // 2
    out = h.new_empty(rows, hidden)
    _kernels().swiglu_forward(h.data_ptr(), out.data_ptr(), rows, hidden, torch.get_num_threads())
    return out


def _swiglu_backward(grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    grad = grad.contiguous()
    grad_h = torch.empty_like(h)
    rows, hidden = h.size(0), h.size(1) // 2
    _kernels().swiglu_backward(grad.data_ptr(), h.data_ptr(), grad_h.data_ptr(), rows, hidden, torch.get_num_threads())
    return grad_h


swiglu_op = torch.library.custom_op("microgpt::swiglu", mutates_args=())(_swiglu_forward)
swiglu_backward_op = torch.library.custom_op("microgpt::swiglu_backward", mutates_args=())(_swiglu_backward)


@swiglu_op.register_fake
def _(h: torch.Tensor) -> torch.Tensor:
    return h.new_empty(h.size(0), h.size(1) // 2)


@swiglu_backward_op.register_fake
def _(grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(h)


class _SwiGLU(torch.autograd.Function):
    """``silu(gate) · up`` of ``h`` = [gate, up] (N, 2·H), contiguous → (N, H); the backward recomputes σ(gate)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h)
        return (swiglu_op if torch.compiler.is_compiling() else _swiglu_forward)(h)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors
        backward = swiglu_backward_op if torch.compiler.is_compiling() else _swiglu_backward
        return backward(grad, h)


def use_native_swiglu(h: torch.Tensor) -> bool:
    """Whether :func:`native_swiglu` applies: float32 on CPU, kernels built."""
    return h.device.type == "cpu" and h.dtype == torch.float32 and native_available()


def native_swiglu(h: torch.Tensor) -> torch.Tensor:
    """SwiGLU of ``h`` (..., 2·hidden), gate first → (..., hidden), through the native kernel."""
    out: torch.Tensor = _SwiGLU.apply(h.reshape(-1, h.size(-1)).contiguous())  # type: ignore[no-untyped-call]
    return out.view(*h.shape[:-1], h.size(-1) // 2)


# ---- RMSNorm ----


def _rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows, width = x.shape
    y, rstd = torch.empty_like(x), x.new_empty(rows)
    _kernels().rms_norm_forward(
        x.data_ptr(), weight.data_ptr(), y.data_ptr(), rstd.data_ptr(), rows, width, eps, torch.get_num_threads()
    )
    return y, rstd


def _rms_norm_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    grad = grad.contiguous()
    grad_x, grad_w = torch.empty_like(x), torch.empty_like(weight)
    _kernels().rms_norm_backward(
        grad.data_ptr(), x.data_ptr(), weight.data_ptr(), rstd.data_ptr(), grad_x.data_ptr(), grad_w.data_ptr(),
        x.size(0), x.size(1), torch.get_num_threads(),
    )  # fmt: skip
    return grad_x, grad_w


rms_norm_op = torch.library.custom_op("microgpt::rms_norm", mutates_args=())(_rms_norm_forward)
rms_norm_backward_op = torch.library.custom_op("microgpt::rms_norm_backward", mutates_args=())(_rms_norm_backward)


@rms_norm_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), x.new_empty(x.size(0))


@rms_norm_backward_op.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.empty_like(x), torch.empty_like(weight)


class _RMSNorm(torch.autograd.Function):
    """RMSNorm of the rows of ``x`` (N, C), contiguous, scaled by ``weight`` (C,); keeps each row's ``1/rms``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = (rms_norm_op if torch.compiler.is_compiling() else _rms_norm_forward)(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        backward = rms_norm_backward_op if torch.compiler.is_compiling() else _rms_norm_backward
        grad_x, grad_w = backward(grad, x, weight, rstd)
        return grad_x, grad_w, None


def use_native_rms_norm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`native_rms_norm` applies: float32 input and weight on CPU, kernels built."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32 and native_available()


def native_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` (..., C) over its last dimension, scaled by ``weight`` (C,), through the native kernel."""
    flat = x.reshape(-1, x.size(-1)).contiguous()
    y: torch.Tensor = _RMSNorm.apply(flat, weight.contiguous(), eps)  # type: ignore[no-untyped-call]
    return y.view(x.shape)
