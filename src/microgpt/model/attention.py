"""Causal self-attention: one fused QKV projection, optional QK-norm, RoPE, grouped-query attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.model.config import GPTConfig
from microgpt.model.fast import fast_path
from microgpt.model.kv_cache import KVCache
from microgpt.model.norm import Norm
from microgpt.model.rope import apply_rope


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention.

    ``c_attn`` projects to all query heads, then the key heads, then the value heads in one matmul (GPT-2's
    fused layout; for Llama the adapter concatenates ``q_proj``, ``k_proj``, ``v_proj``). Attention itself is
    ``F.scaled_dot_product_attention`` with ``is_causal=True``: fused, never materialising a (T, T) mask.
    """

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        """Create the projections of one layer.

        Args:
            config: The model config.
            layer_idx: Which block this is (the KV-cache slot).
        """
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        qkv_width = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_width, bias=config.bias)
        self.c_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm (as in OLMo 2, Qwen 3, nanochat): bounds attention logits, which steadies higher learning rates.
        # One RMSNorm (its scale shared by queries and keys) so both normalise in one call.
        self.qk_norm = Norm(config.head_dim, "rmsnorm", config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Attend over the past.

        Args:
            x: (B, T, n_embd), already normalised.
            rope: ``(cos, sin)`` each (T, 1, head_dim) for the positions of ``x``, or ``None`` (learned positions).
            kv_cache: When generating: keys/values of earlier positions; this call appends its own.

        Returns:
            (B, T, n_embd).
        """
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)
        y = self.attend(qkv, rope, kv_cache)  # (B, T, n_head · head_dim)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out

    @fast_path  # float32 on CPU, short contexts: one native kernel for all of it (microgpt.model.fast)
    def attend(
        self, qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, kv_cache: KVCache | None
    ) -> torch.Tensor:
        """QK-norm, RoPE and causal attention of the projected heads.

        Args:
            qkv: (B, T, n_head + 2·n_kv_head, head_dim): query heads, then key heads, then value heads.
            rope: ``(cos, sin)`` each (T, 1, head_dim), or ``None``.
            kv_cache: Earlier positions' keys and values (generation), or ``None``.

        Returns:
            (B, T, n_head · head_dim).
        """
        B, T, _, _ = qkv.size()
        qk, v = qkv.split([self.n_head + self.n_kv_head, self.n_kv_head], dim=2)  # (B, T, heads, head_dim)
        if self.qk_norm is not None:
            qk = self.qk_norm(qk)
        if rope is not None:
            # Queries and keys rotate together: one kernel sequence over both instead of two.
            qk = apply_rope(qk, *rope)
        q, k = qk.split([self.n_head, self.n_kv_head], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)

        mask: torch.Tensor | None = None
        is_causal = True
        if kv_cache is not None:
            past = kv_cache.pos
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, n_kv_head, past + T, head_dim)
            if past > 0:
                is_causal = False  # SDPA's is_causal aligns the mask top-left, wrong once keys outnumber queries
                if T > 1:
                    # Query i (absolute position past + i) sees keys 0..past + i.
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=qkv.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, n_head, T, head_dim)
        return y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
