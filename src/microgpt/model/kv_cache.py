"""The key/value cache that makes generation one token per forward instead of the whole context every step."""

from __future__ import annotations

import torch

from microgpt.model.config import GPTConfig


class KVCache:
    """Per-layer keys and values of the tokens seen so far, preallocated to ``max_len`` positions.

    ``pos`` is the number of positions filled; every layer writes at ``pos`` and the model advances ``pos``
    once per forward (:meth:`advance`), after all layers have written.
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Allocate the cache.

        Args:
            config: The model's config (layers, KV heads, head dim).
            batch_size: Sequences generated together.
            max_len: Positions to hold; at most ``config.block_size``.
            device: Where the model lives.
            dtype: The dtype of the keys and values the model computes.
        """
        if max_len > config.block_size:
            raise ValueError(f"KV cache of {max_len} positions exceeds block_size {config.block_size}")
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)  # (B, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values (B, n_kv_head, T, head_dim) of ``layer``; return all keys/values so far."""
        t = k.size(2)
        end = self.pos + t
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > {self.max_len}")
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        """Mark ``t`` more positions as filled (called by the model after all layers)."""
        self.pos += t

    def reset(self) -> None:
        """Forget everything (the buffers are reused)."""
        self.pos = 0
