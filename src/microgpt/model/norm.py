"""Normalisation layers: RMSNorm (Llama, modern GPTs) and LayerNorm (GPT-2), one small module for both."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.model.config import NormKind
from microgpt.model.fast import fast_path


@fast_path  # float32 on CPU: a native kernel; elsewhere a hand-written backward (microgpt.model.fast)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) · weight`` over the last dimension (Zhang & Sennrich 2019).

    Unlike LayerNorm it neither subtracts the mean nor adds a bias: only the scale is normalised.
    """
    return F.rms_norm(x, (x.size(-1),), weight, eps)


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
