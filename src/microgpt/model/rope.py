"""Rotary position embedding (RoPE, Su et al. 2021, https://arxiv.org/abs/2104.09864) in the rotate-halves form.

Each head vector of width ``D`` is split into halves ``x1 = x[..., :D/2]`` and ``x2 = x[..., D/2:]``; pair ``i``
(``x1[i]``, ``x2[i]``) is rotated by the angle ``pos · base^(-2i/D)``:

    out = [x1·cos − x2·sin, x2·cos + x1·sin] = x · [cos, cos] + swap(x) · [−sin, sin]

where ``swap`` exchanges the halves. This is the layout Hugging Face's Llama uses (``rotate_half``), so its
``q_proj``/``k_proj`` weights load here without any permutation. The tables are computed once from the config
(non-persistent buffers, never saved in checkpoints).
"""

from __future__ import annotations

import torch

from microgpt.model.fast import fast_path


def rope_tables(
    seq_len: int, head_dim: int, base: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precompute the full-width tables ``[cos, cos]`` and ``[−sin, sin]`` for positions ``0..seq_len-1``.

    Args:
        seq_len: Number of positions.
        head_dim: Width of one head (even).
        base: The frequency base (theta), 10000 in the paper and Llama 2.
        device: Where to build the tables.

    Returns:
        ``(cos, sin)``, each (seq_len, head_dim), float32; ``sin`` carries the sign of the rotation.
    """
    assert head_dim % 2 == 0, "RoPE needs an even head dim"
    # Angles in float64 then cast, so long contexts keep their precision (HF computes in float32; the two
    # agree to ~1e-6 at the sizes we test).
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), inv_freq)  # (T, D/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1).float(), torch.cat((-sin, sin), dim=-1).float()


@fast_path  # eager: a hand-written backward that never builds the swapped copy (microgpt.model.fast)
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, T, n_heads, D) by the angles of its positions: ``x · [cos, cos] + swap(x) · [−sin, sin]``.

    Args:
        x: Queries and/or keys, (B, T, n_heads, D).
        cos: (T, 1, D), the rows of ``[cos, cos]`` for the positions of ``x``.
        sin: (T, 1, D), the rows of ``[−sin, sin]``.

    Returns:
        The rotated tensor (B, T, n_heads, D), contiguous, in ``x``'s dtype.
    """
    half = x.size(-1) // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)  # [x2, x1]
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)
