"""The model's fast paths, all in one place: what runs instead of the plain functions the model marks ``@fast_path``.

The model's files are plain PyTorch, the math as written. Four functions in them carry :func:`fast_path`; each
call to one of those asks this module first, and where a faster implementation applies to the arguments, it runs
instead and gives the same values and gradients (tests/model/test_fast.py holds each to the plain function):

==================== ==================================== ====================== ================================
plain function       eager, float32 on CPU                eager, anywhere else   under ``torch.compile``
==================== ==================================== ====================== ================================
``rms_norm``         native kernel                        hand-written backward  plain ops
``swiglu``           native kernel                        hand-written backward  native kernel (CPU f32), else plain
``apply_rope``       hand-written backward                hand-written backward  plain ops
``attend``           native kernel: QK-norm, RoPE and     plain ops (SDPA)       as in eager
(attention)          attention in one pass, T ≤ 256
==================== ==================================== ====================== ================================

Why each exists (measurements in benchmarks/README.md, "Model step"): at our sizes the cost of a CPU step is
passes over memory, not FLOPs. The native kernels (:mod:`microgpt.model.native`, C) do each layer's forward and
backward in one pass; where they do not apply, a hand-written backward saves and revisits fewer intermediates
than autograd through the plain ops. Under ``torch.compile`` inductor fuses the plain ops' forward and backward
into one loop each, which beats a hand-written backward, so those stand aside; the C kernels stay, as opaque
operators in the compiled graph.

``MICROGPT_KERNELS=0`` (:func:`microgpt.common.kernels.kernels_enabled`) turns every fast path off: the model
then runs exactly the code in its files.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec

import torch
import torch.nn.functional as F

from microgpt.common.kernels import kernels_enabled
from microgpt.model import native

if TYPE_CHECKING:
    from microgpt.model.attention import CausalSelfAttention
    from microgpt.model.kv_cache import KVCache

P = ParamSpec("P")


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]  # untyped in torch
def enabled() -> bool:
    """Whether the fast paths run (``MICROGPT_KERNELS``; a constant to torch.compile)."""
    return kernels_enabled()


def fast_path(plain: Callable[P, torch.Tensor]) -> Callable[P, torch.Tensor]:
    """Mark a plain model function whose fast implementation (in this module's :data:`FAST_PATHS`) may run instead.

    The fast implementation takes the same arguments and returns ``None`` where it does not apply; then, and
    when the fast paths are off, the plain function runs. ``wrapped.__wrapped__`` is always the plain function.
    """
    fast = FAST_PATHS[plain.__qualname__]

    @functools.wraps(plain)
    def dispatch(*args: P.args, **kwargs: P.kwargs) -> torch.Tensor:
        if enabled():
            out = fast(*args, **kwargs)
            if out is not None:
                return out
        return plain(*args, **kwargs)

    return dispatch


# ---- RMSNorm ----


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward: ~5 kernels each way instead of autograd's dozen.

    ``F.rms_norm`` on CPU is a composite of pow/mean/add/rsqrt/mul whose autograd graph saves and revisits each
    intermediate; at our sizes (a few hundred KB per tensor) those passes, not FLOPs, are the cost. Measured
    ~2x faster than ``F.rms_norm`` forward+backward on our CPUs.

    With ``xh = x · r``, ``r = 1/sqrt(mean(x²) + eps)`` and ``y = xh · w``:
    ``dL/dw = Σ_rows g · xh`` and ``dL/dx = r · (g·w − xh · mean(g·w · xh))``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        dim = x.size(-1)
        r = torch.rsqrt(torch.linalg.vecdot(x, x).unsqueeze(-1) / dim + eps)  # (..., 1)
        xh = x * r
        ctx.save_for_backward(xh, r, weight)
        return (xh * weight).to(x.dtype)  # under autocast a bf16 input stays bf16, as in HF's Llama

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        xh, r, weight = ctx.saved_tensors
        dim = xh.size(-1)
        grad_w = torch.linalg.vecdot(grad.reshape(-1, dim), xh.reshape(-1, dim), dim=0)  # (dim,)
        gw = grad * weight
        dot = torch.linalg.vecdot(gw, xh).unsqueeze(-1) / dim  # (..., 1)
        grad_x = torch.addcmul(gw, xh, dot, value=-1.0).mul_(r)
        return grad_x, grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """Fast :func:`microgpt.model.norm.rms_norm`: native kernel, else hand-written backward; plain when compiling."""
    if torch.compiler.is_compiling():
        return None
    if native.use_native_rms_norm(x, weight):
        return native.native_rms_norm(x, weight, eps)
    out: torch.Tensor = _RMSNormFunction.apply(x, weight, eps)  # type: ignore[no-untyped-call]  # untyped in torch
    return out


# ---- SwiGLU ----


class _SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) · up`` over ``h = [gate, up]`` with a hand-written backward.

    The backward writes both halves of the gradient straight into one (..., 2·hidden) buffer, where autograd
    through ``chunk`` would compute them separately and then concatenate (a full extra copy); it saves ``h`` and
    ``silu(gate)``. ``d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g)))`` is aten's ``silu_backward``.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h)
        grad_gate, grad_up = grad_h.chunk(2, dim=-1)
        torch.mul(grad, act, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_h


def swiglu(h: torch.Tensor) -> torch.Tensor | None:
    """Fast :func:`microgpt.model.mlp.swiglu`: the native kernel (eager or compiled), else the hand-written backward."""
    if native.use_native_swiglu(h):
        return native.native_swiglu(h)
    if torch.compiler.is_compiling():
        return None
    out: torch.Tensor = _SwiGLUFunction.apply(h)  # type: ignore[no-untyped-call]  # untyped in torch
    return out


# ---- RoPE ----


class _RopeFunction(torch.autograd.Function):
    """``x · cos + swap(x) · sin`` with a hand-written backward, where ``swap`` exchanges the halves.

    The swap is never materialised: each half gets the other half's product added in place
    (``out[..., :D/2] += x[..., D/2:] · sin[..., :D/2]`` and the mirror), three kernels and no concatenation.
    The rotation is orthogonal and ``swap`` is its own transpose, so the gradient is ``g · cos + swap(g · sin)``:
    the same three kernels, with the halves of ``sin`` crossed, and nothing saved but the tables. Autograd
    through slices and ``cat`` instead allocates zero-filled gradients per slice (measured ~1.8x slower per
    layer on our CPUs; ``cat`` itself cost another ~1.5x over the in-place halves).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        half = x.size(-1) // 2
        out = x * cos
        out[..., :half].addcmul_(x[..., half:], sin[..., :half])
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        half = grad.size(-1) // 2
        out = grad * cos
        out[..., :half].addcmul_(grad[..., half:], sin[..., half:])
        out[..., half:].addcmul_(grad[..., :half], sin[..., :half])
        return out, None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """Fast :func:`microgpt.model.rope.apply_rope`: the hand-written backward; plain when compiling."""
    if torch.compiler.is_compiling():
        return None
    out: torch.Tensor = _RopeFunction.apply(x, cos.to(x.dtype), sin.to(x.dtype))  # type: ignore[no-untyped-call]
    return out


# ---- Attention ----


def attend(
    module: CausalSelfAttention,
    qkv: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    kv_cache: KVCache | None,
) -> torch.Tensor | None:
    """Fast :meth:`microgpt.model.attention.CausalSelfAttention.attend`: QK-norm, RoPE and attention in one kernel.

    It applies to float32 on CPU at contexts up to 256 with a head dim that is a multiple of 16, without a KV cache
    or attention dropout (:func:`microgpt.model.native.use_short_attention`); elsewhere SDPA is as fast or faster.
    """
    dropout = module.dropout if module.training else 0.0
    if kv_cache is not None or not native.use_short_attention(qkv, module.head_dim, dropout):
        return None
    norm = module.qk_norm
    qk_norm = None if norm is None else (norm.weight, norm.eps)
    return native.short_causal_attention(qkv, rope, module.n_head, module.n_kv_head, qk_norm)


# The one dispatch table: plain function (its qualified name) → the fast implementation tried first.
FAST_PATHS: dict[str, Callable[..., torch.Tensor | None]] = {
    "rms_norm": rms_norm,
    "swiglu": swiglu,
    "apply_rope": apply_rope,
    "CausalSelfAttention.attend": attend,
}
