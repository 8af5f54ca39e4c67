"""Rotary position embedding (RoPE, Su et al. 2021, https://arxiv.org/abs/2104.09864) in the rotate-halves form.

Each head vector of width ``D`` is split into halves ``x1 = x[..., :D/2]`` and ``x2 = x[..., D/2:]``; pair ``i``
(``x1[i]``, ``x2[i]``) is rotated by the angle ``pos · base^(-2i/D)``. This is the layout Hugging Face's Llama
uses (``rotate_half``), so its ``q_proj``/``k_proj`` weights load here without any permutation.
The cos/sin tables are computed once (non-persistent buffers, never saved in checkpoints).
"""

from __future__ import annotations

import torch


def rope_tables(
    seq_len: int, head_dim: int, base: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precompute the cos and sin tables for positions ``0..seq_len-1``.

    Args:
        seq_len: Number of positions.
        head_dim: Width of one head (even).
        base: The frequency base (theta), 10000 in the paper and Llama 2.
        device: Where to build the tables.

    Returns:
        ``(cos, sin)``, each (seq_len, head_dim/2), float32.
    """
    assert head_dim % 2 == 0, "RoPE needs an even head dim"
    # Computed in float64 then cast, so long contexts do not lose angle precision (HF computes in float32;
    # the difference is < 1e-6 at the sizes we test).
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), inv_freq)  # (T, D/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, T, n_heads, D) by the angles of its positions.

    Args:
        x: Queries or keys, (B, T, n_heads, D).
        cos: (T, 1, D/2), the rows of the positions of ``x``.
        sin: (T, 1, D/2).

    Returns:
        The rotated tensor, same shape and dtype.
    """
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    # [x1, x2] · cos + [-x2, x1] · sin, i.e. HF's q * cos + rotate_half(q) * sin with the halves written out.
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
