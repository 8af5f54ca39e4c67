"""FLOPs per token and model FLOPs utilisation (MFU), from one stated formula.

Per token of training (forward + backward), following Kaplan et al. 2020 and the PaLM paper's appendix B
(Chowdhery et al. 2022), as nanoGPT's ``estimate_mfu`` does::

    flops_per_token = 6·N + 12·L·H·Q·T

- ``N``: parameters that take part in matmuls (all, minus the position table and an untied token embedding:
  lookups do no arithmetic); each costs 2 FLOPs forward and 4 backward per token.
- ``12·L·H·Q·T``: attention scores and the weighted sum (L layers, H heads, Q head dim, T context), forward and
  backward, counting the full T×T matrix as PaLM does (a causal kernel does about half).

MFU = achieved FLOPs per second / the hardware's peak (e.g. 989e12 for an H100's dense bf16).
"""

from __future__ import annotations

from microgpt.model.config import GPTConfig


def flops_per_token(config: GPTConfig, n_params: int, seq_len: int | None = None) -> float:
    """Training FLOPs per token: ``6·N + 12·L·H·Q·T``.

    Args:
        config: The model config (L, H, Q).
        n_params: ``N``, the matmul parameters (``GPT.num_params(non_embedding=True)``).
        seq_len: ``T``; defaults to ``block_size``.
    """
    t = config.block_size if seq_len is None else seq_len
    return 6.0 * n_params + 12.0 * config.n_layer * config.n_head * config.head_dim * t
