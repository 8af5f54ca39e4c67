"""Normalisation layers: RMSNorm (Llama, modern GPTs) and LayerNorm (GPT-2), one small module for both."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.model.config import NormKind
from microgpt.model.native import native_rms_norm, use_native_rms_norm


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward: ~5 kernels each way instead of autograd's dozen.

    ``F.rms_norm`` on CPU is a composite of pow/mean/add/rsqrt/mul whose autograd graph saves and revisits each
    intermediate; at our sizes (a few hundred KB per tensor) those passes, not FLOPs, are the cost. Measured
    ~2x faster than ``F.rms_norm`` forward+backward on our CPUs (benchmarks/README.md, "Model step").

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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) · weight`` over the last dimension (Zhang & Sennrich 2019).

    Under ``torch.compile`` this is ``F.rms_norm``: inductor fuses its forward and backward into one loop each,
    which beats the hand-written backward (benchmarks/README.md, "Model step").
    """
    if use_native_rms_norm(x, weight) and not torch.compiler.is_compiling():
        return native_rms_norm(x, weight, eps)
    if torch.compiler.is_compiling():
        return F.rms_norm(x, (x.size(-1),), weight, eps)
    out: torch.Tensor = _RMSNormFunction.apply(x, weight, eps)  # type: ignore[no-untyped-call]  # untyped in torch
    return out


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last dimension, with a learned scale (and a bias for LayerNorm with bias).

    The weight names (``weight``, ``bias``) match ``torch.nn.LayerNorm`` and Hugging Face's norms, so weight
    adapters stay one-to-one.
    """

    def __init__(self, dim: int, kind: NormKind, eps: float, bias: bool = False) -> None:
        """Create the norm.

        Args:
            dim: Size of the normalised (last) dimension.
            kind: ``"rmsnorm"`` or ``"layernorm"``.
            eps: Added to the variance for stability.
            bias: Give LayerNorm a learned bias (ignored for RMSNorm, which has none).
        """
        super().__init__()
        self.kind = kind
        self.eps = eps
        self.shape = (dim,)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias and kind == "layernorm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (..., dim) and scale it."""
        if self.kind == "rmsnorm":
            return rms_norm(x, self.weight, self.eps)
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)

    def reset_parameters(self) -> None:
        """Scale one, bias zero."""
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
