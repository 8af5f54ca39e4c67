"""The GPT's shape and options: one validated, frozen config saved with every checkpoint.

Two families are described by the same fields:

- the modern decoder (RoPE, RMSNorm, SwiGLU or ReLU², no biases, optional grouped-query attention and QK-norm),
  the defaults here; it exports to Hugging Face as ``LlamaForCausalLM`` when its options map;
- GPT-2 (learned absolute positions, LayerNorm, GELU, biases, tied embeddings), which OpenAI's weights use.

>>> cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=65)
>>> cfg.head_dim, cfg.n_kv_head, cfg.padded_vocab_size
(16, 4, 128)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from microgpt.common.config import ConfigBase

PosEncoding = Literal["rope", "learned"]
NormKind = Literal["rmsnorm", "layernorm"]
MlpKind = Literal["gelu", "swiglu", "relu2"]

# Embedding and output matrices padded to a multiple of 64 run faster (nanoGPT: 50257 → 50304, ~25% on GPUs).
VOCAB_MULTIPLE = 64


class GPTConfig(ConfigBase):
    """The shape and options of a :class:`~microgpt.model.gpt.GPT`."""

    n_layer: int = Field(4, ge=1, description="Number of transformer blocks.")
    n_head: int = Field(4, ge=1, description="Number of query heads per attention layer.")
    n_kv_head: int = Field(
        4, ge=1, description="Number of key/value heads (grouped-query attention); defaults to n_head."
    )
    n_embd: int = Field(128, ge=1, description="Width of the residual stream.")
    block_size: int = Field(256, ge=1, description="Maximum context length in tokens.")
    vocab_size: int = Field(..., ge=1, description="Number of real token ids (the tokenizer's n_vocab).")
    pos_encoding: PosEncoding = Field("rope", description="Rotary position embedding, or GPT-2's learned table.")
    rope_base: float = Field(10000.0, gt=1.0, description="RoPE frequency base (theta).")
    norm: NormKind = Field("rmsnorm", description="Normalisation layer before attention, MLP and the head.")
    norm_eps: float = Field(1e-5, gt=0.0, description="Epsilon of every normalisation layer.")
    mlp: MlpKind = Field(
        "relu2", description="MLP: gelu (tanh approximation, as GPT-2), swiglu (as Llama) or relu2 (squared ReLU)."
    )
    mlp_hidden: int | None = Field(
        None, ge=1, description="MLP hidden width; default 4·n_embd, or ~8/3·n_embd rounded to 32 for swiglu."
    )
    tie_embeddings: bool = Field(True, description="Share the token embedding with the output head.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residuals.")
    bias: bool = Field(False, description="Biases in linear layers and LayerNorm (GPT-2 has them).")
    qk_norm: bool = Field(False, description="RMS-normalise queries and keys per head before RoPE.")
    init_std: float = Field(0.02, gt=0.0, description="Standard deviation of the normal weight init.")
    zero_init_proj: bool = Field(
        False, description="Initialise residual output projections to zero instead of the scaled normal."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_kv_heads(cls, data: Any) -> Any:
        # n_kv_head follows n_head unless given, so `model.n_head=8` alone stays plain multi-head attention.
        if isinstance(data, dict) and data.get("n_kv_head") is None:
            data = {k: v for k, v in data.items() if k != "n_kv_head"}
            data["n_kv_head"] = data.get("n_head", cls.model_fields["n_head"].default)
        return data

    @model_validator(mode="after")
    def _check_shape(self) -> GPTConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd must be divisible by n_head (n_embd={self.n_embd}, n_head={self.n_head})")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"n_head must be divisible by n_kv_head (n_head={self.n_head}, n_kv_head={self.n_kv_head})"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"head dim n_embd/n_head must be even for RoPE (got {self.head_dim})")
        return self

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and output matrices: ``vocab_size`` rounded up to a multiple of 64."""
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @property
    def hidden_dim(self) -> int:
        """MLP hidden width (per branch for SwiGLU)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            # Llama keeps SwiGLU's parameter count equal to a 4x MLP: 2/3 of 4·n_embd per branch.
            return -(-(8 * self.n_embd // 3) // 32) * 32
        return 4 * self.n_embd
