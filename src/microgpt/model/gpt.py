"""The GPT: token embedding → blocks of (norm → attention, norm → MLP) with residuals → norm → output head.

One class covers the modern decoder (RoPE, RMSNorm, SwiGLU/ReLU², no biases, GQA, QK-norm) and GPT-2
(learned positions, LayerNorm, GELU, biases); :class:`~microgpt.model.config.GPTConfig` picks. Weight names follow
GPT-2/nanoGPT (``wte``, ``wpe``, ``h.N.attn.c_attn``, ``ln_f``, ``lm_head``); mapping to other libraries' names
lives in :mod:`microgpt.model.hf`, never here.

>>> import torch
>>> model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))
>>> logits, loss = model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
>>> tuple(logits.shape), loss is not None
((2, 8, 50), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.common.parallel import InitKind, init_tensor
from microgpt.model.attention import CausalSelfAttention
from microgpt.model.config import GPTConfig
from microgpt.model.flops import flops_per_token
from microgpt.model.kv_cache import KVCache
from microgpt.model.mlp import MLP
from microgpt.model.norm import Norm
from microgpt.model.rope import rope_tables


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        """Create the block's norms, attention and MLP."""
        super().__init__()
        self.ln_1 = Norm(config.n_embd, config.norm, config.norm_eps, config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = Norm(config.n_embd, config.norm, config.norm_eps, config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, kv_cache: KVCache | None
    ) -> torch.Tensor:
        """(B, T, n_embd) → (B, T, n_embd)."""
        x = x + self.attn(self.ln_1(x), rope, kv_cache)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    """A decoder-only transformer language model."""

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, config: GPTConfig) -> None:
        """Build the model and initialise its weights (:meth:`init_weights`).

        Args:
            config: Shape and options.
        """
        super().__init__()
        self.config = config
        # The layers' own default inits draw from the RNG; init_weights then starts from the state GPT() was called
        # with, as a model built on the meta device (which draws nothing) does: both get the same weights.
        rng = torch.get_rng_state()
        vocab = config.padded_vocab_size
        self.wte = nn.Embedding(vocab, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_encoding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = Norm(config.n_embd, config.norm, config.norm_eps, config.bias)
        self.lm_head = nn.Linear(config.n_embd, vocab, bias=False)
        if config.tie_embeddings:
            # One matrix for input and output (Press & Wolf 2017); GPT-2 does this.
            self.lm_head.weight = self.wte.weight
        if config.pos_encoding == "rope":
            cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_base)
            # (T, 1, head_dim): broadcasts over the heads of (B, T, heads, head_dim). Not persistent: they are
            # a pure function of the config, so checkpoints stay small and a changed formula needs no migration.
            self.register_buffer("rope_cos", cos[:, None, :], persistent=False)
            self.register_buffer("rope_sin", sin[:, None, :], persistent=False)
        torch.set_rng_state(rng)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise every weight (call again to re-initialise).

        - Linear and embedding weights: normal(0, ``init_std``) (0.02, GPT-2); biases zero.
        - Residual output projections (``attn.c_proj``, ``mlp.c_proj``): normal(0, ``init_std / sqrt(2·n_layer)``),
          because each block adds two of them to the residual stream and the sum's variance grows with depth
          (GPT-2 paper §2.3, Radford et al. 2019; nanoGPT ``_init_weights``). With ``zero_init_proj`` they start
          at zero instead, so every block begins as the identity (modded-nanogpt, nanochat).
        - Norms: scale one, bias zero. The output head shares the embedding's init (or is that matrix, if tied).
        - RoPE tables are recomputed (they are derived from the config).
        """
        with torch.no_grad():
            for name, kind, std in self.init_plan():
                init_tensor(self.get_parameter(name), kind, std)
        self.init_buffers()

    def init_plan(self) -> list[tuple[str, InitKind, float]]:
        """Every parameter's initialiser as ``(name, kind, std)``, in the order :meth:`init_weights` draws them.

        A sharded (FSDP) model built on the meta device replays this plan tensor by tensor with the same seed,
        so its weights equal the unsharded model's at any world size (see :mod:`microgpt.common.parallel`).
        """
        std = self.config.init_std
        proj_std = std / math.sqrt(2 * self.config.n_layer)
        plan: list[tuple[str, InitKind, float]] = []
        for name, module in self.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, nn.Linear):
                if name.endswith("c_proj"):
                    plan.append((f"{prefix}weight", "zeros" if self.config.zero_init_proj else "normal", proj_std))
                else:
                    plan.append((f"{prefix}weight", "normal", std))
                if module.bias is not None:
                    plan.append((f"{prefix}bias", "zeros", 0.0))
            elif isinstance(module, nn.Embedding):
                plan.append((f"{prefix}weight", "normal", std))
            elif isinstance(module, Norm):
                plan.append((f"{prefix}weight", "ones", 0.0))
                if module.bias is not None:
                    plan.append((f"{prefix}bias", "zeros", 0.0))
        if self.config.tie_embeddings:
            plan.append(("wte.weight", "normal", std))
        return plan

    def init_buffers(self) -> None:
        """Recompute the buffers derived from the config (the RoPE tables), e.g. after ``to_empty``."""
        if self.config.pos_encoding == "rope":
            cos, sin = rope_tables(self.config.block_size, self.config.head_dim, self.config.rope_base)
            with torch.no_grad():
                self.rope_cos.copy_(cos[:, None, :])
                self.rope_sin.copy_(sin[:, None, :])

    def num_params(self, non_embedding: bool = False) -> int:
        """Count parameters (a tied matrix once).

        Args:
            non_embedding: Leave out the lookup tables that do no matmul: the position table and, when untied, the
                token embedding (a tied embedding is also the output head's matmul, so it stays counted).
        """
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.wpe is not None:
                total -= self.wpe.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.wte.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward); see :func:`microgpt.model.flops.flops_per_token`."""
        return flops_per_token(self.config, self.num_params(non_embedding=True), seq_len)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Compute next-token logits, and the loss when targets are given.

        Args:
            idx: Token ids (B, T), int64, ``T <= block_size`` (with a cache: ``cache.pos + T <= block_size``).
            targets: Next-token ids (B, T); positions holding -1 are ignored by the loss.
            kv_cache: For generation: earlier positions' keys/values; advanced by ``T`` on return.

        Returns:
            ``(logits, loss)``: logits (B, T, vocab_size) over the real vocabulary only (padding columns are cut,
            so they can never be sampled); loss is the mean cross-entropy over non-ignored positions, or ``None``.
        """
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, n_embd)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        rope = None
        if self.config.pos_encoding == "rope":
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])  # (T, 1, head_dim) each
        for block in self.h:
            x = block(x, rope, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.ln_f(x)
        vocab = self.config.vocab_size
        if vocab == self.config.padded_vocab_size:
            logits = self.lm_head(x)  # (B, T, vocab_size)
        elif x.is_cuda:
            # GPUs run the padded (multiple-of-64) matmul faster; the padding columns are then cut.
            logits = self.lm_head(x)[..., :vocab]  # (B, T, vocab_size)
        else:
            # On CPU the padding only costs FLOPs: multiply by the real rows alone (a contiguous view).
            logits = F.linear(x, self.lm_head.weight[:vocab])  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, vocab), targets.reshape(B * T), ignore_index=-1)
        return logits, loss
