"""The one table of tensor names between microgpt's GPT and each ``transformers`` family, used both ways.

microgpt's names are GPT-2's (``wte``, ``h.N.attn.c_attn``, ``ln_f``, ``lm_head``). GPT-2 files use the same
names under ``transformer.`` and store linear layers as ``Conv1D`` (weight transposed: in, out). The RoPE families
(Llama, Qwen3, Arcee) share one layout, ``model.layers.N.self_attn.q_proj`` and so on, and differ only in the MLP
(Arcee has no gate) and in Qwen3's per-head ``q_norm``/``k_norm``. microgpt fuses what they keep apart: ``c_attn``
is ``q_proj``, ``k_proj``, ``v_proj`` stacked (rows), and SwiGLU's ``c_fc`` is ``gate_proj`` then ``up_proj``.
microgpt's QK-norm has one scale shared by queries and keys, so it exports as equal ``q_norm`` and ``k_norm``
and imports only when they are equal.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from microgpt.common.errors import MicrogptError
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.model.hf.families import Arch

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Tensors outside the blocks, for the RoPE families: ours ↔ theirs.
_ROPE_GLOBAL = {"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight"}
# QK-norm (Qwen3): one tensor of ours ↔ several equal ones of theirs.
_QK_NORM = ("attn.qk_norm.weight", ("self_attn.q_norm.weight", "self_attn.k_norm.weight"))


def rope_layer_names(arch: Arch) -> list[tuple[str, tuple[str, ...]]]:
    """Per block of a RoPE family: microgpt's name (under ``h.N.``) ← theirs (under ``model.layers.N.``).

    Several names of theirs are stacked along the first dimension, in order, to make ours.
    """
    gate_up = ("mlp.up_proj.weight",) if arch == "arcee" else ("mlp.gate_proj.weight", "mlp.up_proj.weight")
    return [
        ("ln_1.weight", ("input_layernorm.weight",)),
        ("attn.c_attn.weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")),
        ("attn.c_proj.weight", ("self_attn.o_proj.weight",)),
        ("ln_2.weight", ("post_attention_layernorm.weight",)),
        ("mlp.c_fc.weight", gate_up),
        ("mlp.c_proj.weight", ("mlp.down_proj.weight",)),
    ]


def _pad_vocab(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows up to the padded vocabulary (never used as input, never sampled as output)."""
    if weight.size(0) == rows:
        return weight
    return torch.cat([weight, weight.new_zeros(rows - weight.size(0), weight.size(1))])


def state_dict_from_hf(config: GPTConfig, arch: Arch, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (stack, and transpose for GPT-2's Conv1D) ``transformers`` tensors into microgpt's names.

    Missing or extra tensors and wrong shapes are left for the caller's strict load to report.

    Raises:
        MicrogptError: When a Qwen3 layer's ``q_norm`` and ``k_norm`` differ (microgpt shares one scale).
    """
    out: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        for name, tensor in tensors.items():
            name = name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # the causal-mask buffers that old GPT-2 files carry
            out[name] = tensor.t() if name.endswith(_CONV1D) else tensor
    else:
        for i in range(config.n_layer):
            src, dst = f"model.layers.{i}.", f"h.{i}."
            for ours, theirs in rope_layer_names(arch):
                parts = [tensors.get(src + name) for name in theirs]
                if all(part is not None for part in parts):
                    out[dst + ours] = torch.cat(parts)  # type: ignore[arg-type]  # checked not None
            if arch == "qwen3":
                q_norm, k_norm = (tensors.get(src + name) for name in _QK_NORM[1])
                if q_norm is not None and k_norm is not None:
                    if not torch.equal(q_norm, k_norm):
                        raise MicrogptError(
                            f"{src}self_attn.q_norm and k_norm differ: microgpt's QK-norm shares one scale between "
                            "queries and keys, so this Qwen3 model has no exact microgpt equivalent"
                        )
                    out[dst + _QK_NORM[0]] = q_norm
        for ours, theirs_name in _ROPE_GLOBAL.items():
            if theirs_name in tensors:
                out[ours] = tensors[theirs_name]
        if "lm_head.weight" in tensors:
            out["lm_head.weight"] = tensors["lm_head.weight"]
    rows = config.padded_vocab_size
    for name in ("wte.weight", "lm_head.weight"):
        if name in out:
            out[name] = _pad_vocab(out[name], rows)
    if config.tie_embeddings and "wte.weight" in out:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def _unstack(config: GPTConfig, ours: str, tensor: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    """Our tensor ``ours`` cut into the ``parts`` tensors of theirs that stack into it."""
    if parts == 1:
        return (tensor,)
    if ours == "attn.c_attn.weight":
        q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        qkv: tuple[torch.Tensor, ...] = tensor.split([q, kv, kv])
        return qkv
    halves: tuple[torch.Tensor, ...] = tensor.chunk(parts)  # SwiGLU's gate and up, equal halves
    return halves


def state_dict_to_hf(model: GPT, arch: Arch) -> dict[str, torch.Tensor]:
    """Microgpt's weights under the names of family ``arch`` (vocabulary padding cut, tied head left out)."""
    config = model.config
    ours = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    ours["wte.weight"] = ours["wte.weight"][: config.vocab_size]
    ours["lm_head.weight"] = ours["lm_head.weight"][: config.vocab_size]
    if config.tie_embeddings:
        del ours["lm_head.weight"]  # transformers re-ties it on load
    out: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        for name, tensor in ours.items():
            if name.endswith(_CONV1D):
                tensor = tensor.t()
            out[name if name == "lm_head.weight" else "transformer." + name] = tensor
        for i in range(config.n_layer):
            # GPT-2 always has biases; a bias-free model is the same function with zero biases.
            p = f"transformer.h.{i}."
            widths = {
                "ln_1.bias": config.n_embd, "ln_2.bias": config.n_embd, "attn.c_attn.bias": 3 * config.n_embd,
                "attn.c_proj.bias": config.n_embd, "mlp.c_fc.bias": config.hidden_dim, "mlp.c_proj.bias": config.n_embd,
            }  # fmt: skip
            for name, width in widths.items():
                out.setdefault(p + name, torch.zeros(width))
        out.setdefault("transformer.ln_f.bias", torch.zeros(config.n_embd))
    else:
        for i in range(config.n_layer):
            src, dst = f"h.{i}.", f"model.layers.{i}."
            for name, theirs in rope_layer_names(arch):
                pieces = _unstack(config, name, ours[src + name], len(theirs))
                out |= {dst + their_name: piece for their_name, piece in zip(theirs, pieces, strict=True)}
            if arch == "qwen3":
                out |= {dst + their_name: ours[src + _QK_NORM[0]].clone() for their_name in _QK_NORM[1]}
        out |= {theirs: ours[name] for name, theirs in _ROPE_GLOBAL.items()}
        if "lm_head.weight" in ours:
            out["lm_head.weight"] = ours["lm_head.weight"]
    return {name: t.contiguous() for name, t in out.items()}
