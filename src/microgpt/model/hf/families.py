"""Which ``transformers`` family computes the same function as a :class:`GPTConfig`, and ``config.json`` both ways.

Every architecture microgpt ships maps to a family that ``transformers`` loads without custom code:

=========================  =======================================================  ======================
family                     microgpt options                                         ``transformers`` class
=========================  =======================================================  ======================
``gpt2``                   learned positions, LayerNorm, GELU (tanh), MHA            ``GPT2LMHeadModel``
``llama``                  RoPE, RMSNorm, SwiGLU, no biases, GQA                     ``LlamaForCausalLM``
``qwen3``                  as ``llama`` plus QK-norm (per head, before RoPE)         ``Qwen3ForCausalLM``
``arcee``                  RoPE, RMSNorm, ReLU² (ungated), no biases, GQA            ``ArceeForCausalLM``
=========================  =======================================================  ======================

Facts checked in ``transformers`` 5.x's source: Qwen3's attention applies ``q_norm``/``k_norm`` (RMSNorm over
``head_dim``, eps ``rms_norm_eps``) to each head *before* ``apply_rotary_pos_emb``, as microgpt does; its
``head_dim`` defaults to 128, so it is always written. Arcee's MLP is ``down_proj(act(up_proj(x)))`` with
``hidden_act="relu2"`` = ``ReLUSquaredActivation`` = ``relu(x)²``, exactly microgpt's ``relu2``. All three RoPE
families rotate halves (``rotate_half``), microgpt's layout, so no weight permutation is needed.

A combination with no family (ReLU² with QK-norm, GELU or LayerNorm with RoPE, ...) is refused with the nearest
families and the option to change. The tensor names live in :mod:`microgpt.model.hf.weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from microgpt.common.config import validate_config
from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.model.config import GPTConfig

Arch = Literal["gpt2", "llama", "qwen3", "arcee"]

HF_CLASSES: dict[Arch, str] = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "arcee": "ArceeForCausalLM",
}
# RoPE models: (mlp, qk_norm) → family. The one gap is ReLU² with QK-norm (no transformers class has both).
ROPE_FAMILIES: dict[tuple[str, bool], Arch] = {
    ("swiglu", False): "llama",
    ("swiglu", True): "qwen3",
    ("relu2", False): "arcee",
}
# What each RoPE family's MLP is, in microgpt's terms and in transformers' hidden_act.
_ROPE_MLP: dict[Arch, tuple[str, str]] = {
    "llama": ("swiglu", "silu"),
    "qwen3": ("swiglu", "silu"),
    "arcee": ("relu2", "relu2"),
}
_DEFAULT_EPS: dict[Arch, float] = {"llama": 1e-6, "qwen3": 1e-6, "arcee": 1e-5}  # transformers' config defaults
_DEFAULT_POSITIONS: dict[Arch, int] = {"llama": 2048, "qwen3": 32768, "arcee": 4096}
_GPT2_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all the tanh approximation our "gelu" computes


def export_arch(config: GPTConfig) -> Arch:
    """The ``transformers`` family that computes the same function as ``config``.

    Raises:
        ConfigError: When no family does; the message names the options that cannot map, the nearest families
            and the option to change.
    """
    if config.pos_encoding == "learned":
        wanted = (
            ("norm", config.norm, "layernorm"),
            ("mlp", config.mlp, "gelu"),
            ("n_kv_head", config.n_kv_head, config.n_head),
            ("qk_norm", config.qk_norm, False),
        )
        problems = [f"{name}={_show(value)}" for name, value, want in wanted if value != want]
        if problems:
            raise ConfigError(
                f"cannot export {', '.join(problems)} with learned positions: GPT2LMHeadModel needs "
                "norm=layernorm, mlp=gelu, n_kv_head=n_head, qk_norm=false (or use pos_encoding=rope for "
                "LlamaForCausalLM, Qwen3ForCausalLM or ArceeForCausalLM)"
            )
        return "gpt2"
    problems = [
        f"{name}={_show(value)}"
        for name, value, want in (("norm", config.norm, "rmsnorm"), ("bias", config.bias, False))
        if value != want
    ]
    if problems:
        raise ConfigError(
            f"cannot export {', '.join(problems)} with RoPE: LlamaForCausalLM, Qwen3ForCausalLM and "
            "ArceeForCausalLM need norm=rmsnorm, bias=false"
        )
    arch = ROPE_FAMILIES.get((config.mlp, config.qk_norm))
    if arch is not None:
        return arch
    if config.mlp == "relu2":  # with QK-norm
        raise ConfigError(
            "cannot export mlp=relu2 with qk_norm=true: no transformers family has both; the nearest are "
            "ArceeForCausalLM (set model.qk_norm=false) and Qwen3ForCausalLM (set model.mlp=swiglu)"
        )
    nearest = "Qwen3ForCausalLM (set model.mlp=swiglu)" if config.qk_norm else (
        "LlamaForCausalLM (set model.mlp=swiglu) and ArceeForCausalLM (set model.mlp=relu2)"
    )  # fmt: skip
    raise ConfigError(
        f"cannot export mlp={config.mlp} with RoPE: no transformers family has it; the nearest: {nearest}, or "
        "GPT2LMHeadModel with pos_encoding=learned, norm=layernorm"
    )


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_to_hf(config: GPTConfig, arch: Arch, eos_token_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of the ``transformers`` model of family ``arch`` equal to ``config``."""
    common = {
        "architectures": [HF_CLASSES[arch]], "model_type": arch, "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings, "dtype": "float32",
    }  # fmt: skip
    if eos_token_id is not None:
        common |= {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id}
    if arch == "gpt2":
        return common | {
            "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "n_positions": config.block_size, "n_inner": config.hidden_dim, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        }  # fmt: skip
    out = common | {
        "hidden_size": config.n_embd, "intermediate_size": config.hidden_dim, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head, "head_dim": config.head_dim,
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
        "hidden_act": _ROPE_MLP[arch][1], "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False, "attention_dropout": 0.0,
    }  # fmt: skip
    if arch == "qwen3":
        # Every layer full attention: no sliding window (Qwen3's layer_types would otherwise switch some).
        return out | {"use_sliding_window": False, "layer_types": ["full_attention"] * config.n_layer}
    return out | {"mlp_bias": False}


def _get(hf: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in hf and hf[key] is not None:
            return hf[key]
    return default


def config_from_hf(hf: Mapping[str, Any]) -> tuple[GPTConfig, Arch]:
    """Translate a ``transformers`` ``config.json`` (GPT-2, Llama, Qwen3 or Arcee) into a :class:`GPTConfig`.

    Raises:
        MicrogptError: For another model type or an option microgpt does not implement (named).
    """
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in _GPT2_GELUS:
            raise MicrogptError(f"GPT-2 activation_function {act!r} is not supported (microgpt's gelu is gelu_new)")
        data: dict[str, Any] = {
            "n_layer": hf["n_layer"], "n_head": hf["n_head"], "n_embd": hf["n_embd"],
            "block_size": _get(hf, "n_positions", "n_ctx", default=1024), "vocab_size": hf["vocab_size"],
            "pos_encoding": "learned", "norm": "layernorm", "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "mlp": "gelu", "mlp_hidden": hf.get("n_inner"), "bias": True,
            "tie_embeddings": hf.get("tie_word_embeddings", True),
        }  # fmt: skip
        return validate_config(GPTConfig, data), "gpt2"
    if model_type in _ROPE_MLP:
        arch: Arch = model_type
        return validate_config(GPTConfig, _rope_config(hf, arch)), arch
    raise MicrogptError(f"model_type {model_type!r} is not supported: microgpt imports {', '.join(HF_CLASSES)} folders")


def _rope_config(hf: Mapping[str, Any], arch: Arch) -> dict[str, Any]:
    """The :class:`GPTConfig` fields of a Llama, Qwen3 or Arcee ``config.json``, refusing what does not map."""
    name = HF_CLASSES[arch].removesuffix("ForCausalLM")
    for option in ("attention_bias", "mlp_bias"):
        if hf.get(option):
            raise MicrogptError(f"{name} {option}=true is not supported by microgpt (its RoPE models have no biases)")
    mlp, act = _ROPE_MLP[arch]
    if hf.get("hidden_act", act) != act:
        raise MicrogptError(f"{name} hidden_act {hf['hidden_act']!r} is not supported (only {act}, i.e. {mlp})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise MicrogptError(f"{name} rope scaling {rope.get('rope_type')!r} is not supported (only default RoPE)")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if _get(hf, "head_dim", default=n_embd // n_head) != n_embd // n_head:
        raise MicrogptError(f"{name} head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    if arch == "qwen3":
        windowed = hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or [])
        if windowed:
            raise MicrogptError("Qwen3 sliding-window attention is not supported (only full attention)")
    return {
        "n_layer": hf["num_hidden_layers"], "n_head": n_head, "n_embd": n_embd,
        "n_kv_head": _get(hf, "num_key_value_heads", default=n_head),
        "block_size": hf.get("max_position_embeddings", _DEFAULT_POSITIONS[arch]), "vocab_size": hf["vocab_size"],
        "pos_encoding": "rope", "rope_base": _get(rope, "rope_theta", default=hf.get("rope_theta", 10000.0)),
        "norm": "rmsnorm", "norm_eps": hf.get("rms_norm_eps", _DEFAULT_EPS[arch]), "mlp": mlp,
        "mlp_hidden": hf["intermediate_size"], "bias": False, "qk_norm": arch == "qwen3",
        "tie_embeddings": hf.get("tie_word_embeddings", False),
    }  # fmt: skip
