"""The feed-forward half of a block: GELU (GPT-2), SwiGLU (Llama) or squared ReLU (Primer, nanochat)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.model.config import GPTConfig
from microgpt.model.fast import fast_path


@fast_path  # float32 on CPU: a native kernel; elsewhere a hand-written backward (microgpt.model.fast)
def swiglu(h: torch.Tensor) -> torch.Tensor:
    """SwiGLU of ``h`` = [gate, up] (..., 2·hidden), gate first: ``silu(gate) · up`` (..., hidden)."""
    gate, up = h.chunk(2, dim=-1)  # (..., hidden) each
    return F.silu(gate) * up


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
