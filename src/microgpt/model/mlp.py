"""The feed-forward half of a block: GELU (GPT-2), SwiGLU (Llama) or squared ReLU (Primer, nanochat)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.model.config import GPTConfig
from microgpt.model.native import native_swiglu, use_native_swiglu


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


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """SwiGLU of ``h`` (..., 2·hidden), gate first: (..., hidden).

    Float32 on CPU goes through microgpt's native kernel (one pass each way, eager or compiled); otherwise plain
    ops under ``torch.compile`` (fused there) and the hand-written autograd function in eager mode.
    """
    if use_native_swiglu(h):
        return native_swiglu(h)
    if torch.compiler.is_compiling():
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    out: torch.Tensor = _SwiGLUFunction.apply(h)  # type: ignore[no-untyped-call]  # untyped in torch
    return out


class MLP(nn.Module):
    """Position-wise MLP ``c_proj(act(c_fc(x)))``.

    For SwiGLU (Shazeer 2020, https://arxiv.org/abs/2002.05202) ``c_fc`` holds the gate and the up projection
    stacked in one matrix (gate rows first), so the forward is one matmul for both: ``silu(gate) * up``.
    """

    def __init__(self, config: GPTConfig) -> None:
        """Create the two projections.

        Args:
            config: The model config (``mlp``, ``hidden_dim``, ``bias``, ``dropout``).
        """
        super().__init__()
        self.kind = config.mlp
        hidden = config.hidden_dim
        fc_out = 2 * hidden if config.mlp == "swiglu" else hidden
        self.c_fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_embd) → (B, T, n_embd)."""
        h = self.c_fc(x)  # (B, T, hidden) or (B, T, 2·hidden) for swiglu
        if self.kind == "swiglu":
            h = swiglu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            # GPT-2 uses the tanh approximation ("gelu_new" in Hugging Face); keep it so its weights match exactly.
            h = F.gelu(h, approximate="tanh")
        out: torch.Tensor = self.dropout(self.c_proj(h))
        return out
