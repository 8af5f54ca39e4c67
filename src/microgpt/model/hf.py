"""The one adapter between microgpt's GPT and Hugging Face ``transformers`` folders (names, layouts, configs).

Two architectures map:

- ``GPT2LMHeadModel`` ↔ learned positions, LayerNorm, GELU (tanh), multi-head attention. GPT-2 stores its
  linear layers as ``Conv1D`` with the weight transposed (in, out); they are transposed here. A model without
  biases exports with zero biases (the same function).
- ``LlamaForCausalLM`` ↔ RoPE (rotate-halves, no permutation needed), RMSNorm, SwiGLU, no biases, GQA.

Anything else (QK-norm, ReLU², RoPE with LayerNorm, ...) has no ``transformers`` class without custom code and is
refused with the option named. The model itself knows nothing of these names (STYLE.md, "one naming lineage").

>>> model, tokenizer = import_hf("exported/")  # doctest: +SKIP
>>> export_hf(model, tokenizer, "exported-again/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from microgpt.common.atomic import atomic_write_text
from microgpt.common.config import validate_config
from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.model.hf_tokenizer import tokenizer_from_hf_folder, write_hf_tokenizer
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.tokenizer import ENDOFTEXT

Arch = Literal["gpt2", "llama"]

# OpenAI's four GPT-2 sizes (n_layer, n_head, n_embd), all with 1024 positions and 50257 tokens.
GPT2_SIZES: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
GPT2_HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_GPT2_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all the tanh approximation our "gelu" computes


# ---- configs ------------------------------------------------------------------------------------------------


def _get(hf: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in hf and hf[key] is not None:
            return hf[key]
    return default


def config_from_hf(hf: Mapping[str, Any]) -> tuple[GPTConfig, Arch]:
    """Translate a ``transformers`` ``config.json`` (GPT-2 or Llama) into a :class:`GPTConfig`.

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
    if model_type == "llama":
        for option in ("attention_bias", "mlp_bias"):
            if hf.get(option):
                raise MicrogptError(f"Llama {option}=true is not supported by microgpt's Llama mapping")
        if hf.get("hidden_act", "silu") != "silu":
            raise MicrogptError(f"Llama hidden_act {hf['hidden_act']!r} is not supported (only silu, i.e. SwiGLU)")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise MicrogptError(f"Llama rope scaling {rope.get('rope_type')!r} is not supported (only default RoPE)")
        n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
        if _get(hf, "head_dim", default=n_embd // n_head) != n_embd // n_head:
            raise MicrogptError(f"Llama head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
        data = {
            "n_layer": hf["num_hidden_layers"], "n_head": n_head, "n_embd": n_embd,
            "n_kv_head": _get(hf, "num_key_value_heads", default=n_head),
            "block_size": hf.get("max_position_embeddings", 2048), "vocab_size": hf["vocab_size"],
            "pos_encoding": "rope", "rope_base": _get(rope, "rope_theta", default=hf.get("rope_theta", 10000.0)),
            "norm": "rmsnorm", "norm_eps": hf.get("rms_norm_eps", 1e-6), "mlp": "swiglu",
            "mlp_hidden": hf["intermediate_size"], "bias": False,
            "tie_embeddings": hf.get("tie_word_embeddings", False),
        }  # fmt: skip
        return validate_config(GPTConfig, data), "llama"
    raise MicrogptError(f"model_type {model_type!r} is not supported: microgpt imports gpt2 and llama folders")


def export_arch(config: GPTConfig) -> Arch:
    """Which ``transformers`` class represents ``config``, or a :class:`ConfigError` naming what cannot map."""
    if config.qk_norm:
        raise ConfigError("cannot export qk_norm=true: neither GPT2LMHeadModel nor LlamaForCausalLM has QK-norm")
    if config.pos_encoding == "learned":
        problems = [
            f"{name}={value}"
            for name, value, wanted in (
                ("norm", config.norm, "layernorm"),
                ("mlp", config.mlp, "gelu"),
                ("n_kv_head", config.n_kv_head, config.n_head),
            )
            if value != wanted
        ]
        if problems:
            raise ConfigError(
                f"cannot export {', '.join(problems)} with learned positions: GPT2LMHeadModel needs "
                "norm=layernorm, mlp=gelu, n_kv_head=n_head"
            )
        return "gpt2"
    wanted_llama = (("norm", config.norm, "rmsnorm"), ("mlp", config.mlp, "swiglu"), ("bias", config.bias, False))
    problems = [f"{name}={value}" for name, value, wanted in wanted_llama if value != wanted]
    if problems:
        raise ConfigError(
            f"cannot export {', '.join(problems)} with RoPE: "
            "LlamaForCausalLM needs norm=rmsnorm, mlp=swiglu, bias=false"
        )
    return "llama"


def config_to_hf(config: GPTConfig, arch: Arch, eos_token_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of the ``transformers`` model equal to ``config``."""
    common = {"vocab_size": config.vocab_size, "tie_word_embeddings": config.tie_embeddings, "dtype": "float32"}
    if eos_token_id is not None:
        common |= {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id}
    if arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": config.n_layer,
            "n_head": config.n_head, "n_embd": config.n_embd, "n_positions": config.block_size,
            "n_inner": config.hidden_dim, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        } | common  # fmt: skip
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head,
        "hidden_size": config.n_embd, "head_dim": config.head_dim, "intermediate_size": config.hidden_dim,
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps, "hidden_act": "silu",
        "rope_theta": config.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
    } | common  # fmt: skip


# ---- weights ------------------------------------------------------------------------------------------------


def _pad_vocab(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows up to the padded vocabulary (never used as input, never sampled as output)."""
    if weight.size(0) == rows:
        return weight
    return torch.cat([weight, weight.new_zeros(rows - weight.size(0), weight.size(1))])


def state_dict_from_hf(config: GPTConfig, arch: Arch, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and transpose, for GPT-2's Conv1D) ``transformers`` tensors into microgpt's names.

    Missing or extra tensors and wrong shapes are left for ``load_state_dict(strict=True)`` to report.
    """
    out: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        for name, tensor in tensors.items():
            name = name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # the causal-mask buffers that old GPT-2 files carry
            if name.endswith(_CONV1D):
                tensor = tensor.t()
            out[name] = tensor
    else:
        renames = {
            "input_layernorm.weight": "ln_1.weight", "post_attention_layernorm.weight": "ln_2.weight",
            "self_attn.o_proj.weight": "attn.c_proj.weight", "mlp.down_proj.weight": "mlp.c_proj.weight",
        }  # fmt: skip
        for i in range(config.n_layer):
            src, dst = f"model.layers.{i}.", f"h.{i}."
            for hf_name, ours in renames.items():
                if src + hf_name in tensors:
                    out[dst + ours] = tensors[src + hf_name]
            qkv = [tensors.get(f"{src}self_attn.{p}_proj.weight") for p in "qkv"]
            gate_up = [tensors.get(f"{src}mlp.{p}_proj.weight") for p in ("gate", "up")]
            if all(t is not None for t in qkv):
                out[dst + "attn.c_attn.weight"] = torch.cat(qkv)  # type: ignore[arg-type]  # checked not None
            if all(t is not None for t in gate_up):
                out[dst + "mlp.c_fc.weight"] = torch.cat(gate_up)  # type: ignore[arg-type]  # checked not None
        for hf_name, ours in (("model.embed_tokens.weight", "wte.weight"), ("model.norm.weight", "ln_f.weight")):
            if hf_name in tensors:
                out[ours] = tensors[hf_name]
        if "lm_head.weight" in tensors:
            out["lm_head.weight"] = tensors["lm_head.weight"]
    rows = config.padded_vocab_size
    for name in ("wte.weight", "lm_head.weight"):
        if name in out:
            out[name] = _pad_vocab(out[name], rows)
    if config.tie_embeddings and "wte.weight" in out:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def state_dict_to_hf(model: GPT, arch: Arch) -> dict[str, torch.Tensor]:
    """Microgpt's weights under ``transformers`` names (vocabulary padding cut, tied head left out)."""
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
        q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        for i in range(config.n_layer):
            src, dst = f"h.{i}.", f"model.layers.{i}."
            wq, wk, wv = ours[src + "attn.c_attn.weight"].split([q, kv, kv])
            gate, up = ours[src + "mlp.c_fc.weight"].chunk(2)
            out |= {
                dst + "self_attn.q_proj.weight": wq, dst + "self_attn.k_proj.weight": wk,
                dst + "self_attn.v_proj.weight": wv, dst + "self_attn.o_proj.weight": ours[src + "attn.c_proj.weight"],
                dst + "mlp.gate_proj.weight": gate, dst + "mlp.up_proj.weight": up,
                dst + "mlp.down_proj.weight": ours[src + "mlp.c_proj.weight"],
                dst + "input_layernorm.weight": ours[src + "ln_1.weight"],
                dst + "post_attention_layernorm.weight": ours[src + "ln_2.weight"],
            }  # fmt: skip
        out["model.embed_tokens.weight"] = ours["wte.weight"]
        out["model.norm.weight"] = ours["ln_f.weight"]
        if "lm_head.weight" in ours:
            out["lm_head.weight"] = ours["lm_head.weight"]
    return {name: t.contiguous() for name, t in out.items()}


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's ``model.safetensors`` (or its shards, listed in ``model.safetensors.index.json``).

    Raises:
        MicrogptError: When no safetensors file is there (``pytorch_model.bin`` pickles are refused) or one is
            corrupt.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise MicrogptError(f"{index}: not a valid safetensors index: {error}") from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        hint = (
            " (pickled .bin weights are never loaded: convert them to safetensors)" if any(folder.glob("*.bin")) else ""
        )
        raise MicrogptError(f"{folder}: missing model.safetensors{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            tensors |= load_file(folder / name)
        except (SafetensorError, OSError) as error:
            raise MicrogptError(f"{folder / name}: cannot read safetensors: {error}") from None
    return tensors


def model_from_hf(config: GPTConfig, arch: Arch, tensors: Mapping[str, torch.Tensor], source: str) -> GPT:
    """Build a GPT and load ``transformers`` tensors into it.

    Raises:
        MicrogptError: When tensors are missing, unexpected or of the wrong shape (the first few are named).
    """
    model = GPT(config)
    ours = state_dict_from_hf(config, arch, tensors)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    wrong = [
        f"{name} {tuple(ours[name].shape)} (expected {tuple(t.shape)})"
        for name, t in expected.items()
        if name in ours and ours[name].shape != t.shape
    ]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:3])}" for label, items in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]  # fmt: skip
        raise MicrogptError(f"{source}: weights do not match the config ({'; '.join(parts)})")
    model.load_state_dict(ours, strict=True)
    return model


# ---- folders ------------------------------------------------------------------------------------------------


def import_hf(folder: str | Path) -> tuple[GPT, Tokenizer | None]:
    """Load a ``transformers`` folder (``config.json`` + safetensors; GPT-2 or Llama) into microgpt.

    Args:
        folder: A folder written by ``save_pretrained`` or :func:`export_hf`.

    Returns:
        The model (eval mode, CPU, float32) and the folder's tokenizer, or ``None`` when it has none.

    Raises:
        MicrogptError: For a missing folder or file, an unsupported architecture or option, or weights that do
            not match the config.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MicrogptError(f"{folder}: missing config.json (not a transformers model folder)")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MicrogptError(f"{config_path}: not valid JSON: {error}") from None
    config, arch = config_from_hf(hf_config)
    model = model_from_hf(config, arch, {k: v.float() for k, v in read_safetensors(folder).items()}, str(folder))
    return model.eval(), tokenizer_from_hf_folder(folder)


def export_hf(model: GPT, tokenizer: Tokenizer | None, out_dir: str | Path) -> Path:
    """Write ``model`` (and ``tokenizer``) as a folder ``transformers.AutoModelForCausalLM`` loads without custom code.

    Args:
        model: The GPT; RoPE models become ``LlamaForCausalLM``, learned-position ones ``GPT2LMHeadModel``.
        tokenizer: Written as ``tokenizer.json`` (+ ``tokenizer_config.json``); ``None`` writes weights only.
        out_dir: Created if needed; files in it are overwritten.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: When the configuration has no ``transformers`` equivalent (the option is named).
    """
    arch = export_arch(model.config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eos = tokenizer.special_tokens.get(ENDOFTEXT) if tokenizer is not None else None
    if tokenizer is not None and tokenizer.n_vocab != model.config.vocab_size:
        raise MicrogptError(f"tokenizer has {tokenizer.n_vocab} tokens, the model {model.config.vocab_size}")
    save_file(state_dict_to_hf(model, arch), str(out / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_text(out / "config.json", json.dumps(config_to_hf(model.config, arch, eos), indent=2) + "\n")
    if tokenizer is not None:
        write_hf_tokenizer(tokenizer, out)
    return out


def load_pretrained_gpt2(name: str, folder: str | Path | None = None) -> tuple[GPT, Tokenizer]:
    """OpenAI's GPT-2 (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) as a microgpt model.

    Args:
        name: The size.
        folder: A local folder holding the Hugging Face files (``config.json``, ``model.safetensors``,
            ``vocab.json``, ``merges.txt``); without it they are fetched with ``huggingface_hub`` (cached).

    Returns:
        The model (eval mode, CPU) and GPT-2's tokenizer.

    Raises:
        MicrogptError: For an unknown name, a folder missing files, weights whose shapes are not the named size's,
            or a download that fails (e.g. offline without a cached copy).
    """
    if name not in GPT2_SIZES:
        raise MicrogptError(f"unknown GPT-2 model {name!r}; choose one of {', '.join(GPT2_SIZES)}")
    if folder is None:
        folder = _download_gpt2(name)
    folder = Path(folder)
    missing = [f for f in GPT2_HUB_FILES if not (folder / f).is_file()]
    if missing:
        raise MicrogptError(f"{folder}: missing {', '.join(missing)} (needed for {name})")
    n_layer, n_head, n_embd = GPT2_SIZES[name]
    config = GPTConfig(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=1024, vocab_size=50257, pos_encoding="learned",
        norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True,
    )  # fmt: skip
    model = model_from_hf(config, "gpt2", read_safetensors(folder), f"{folder} (as {name})")
    tokenizer = Tokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt", name="gpt2")
    return model.eval(), tokenizer


def _download_gpt2(name: str) -> Path:
    """Fetch GPT-2's files from the Hugging Face Hub (``openai-community/<name>``) into its cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(f"openai-community/{name}", allow_patterns=GPT2_HUB_FILES))
    except Exception as error:  # the hub raises many types (offline, HTTP, missing repo); all mean "not here"
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MicrogptError(f"cannot download {name} from the Hugging Face Hub: {first}") from None


def import_to_checkpoint(source: str | Path, out_dir: str | Path) -> Path:
    """Write a ``transformers`` model (a GPT-2 name or a folder) as a microgpt checkpoint, e.g. to fine-tune it.

    Args:
        source: ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` (downloaded or cached), or a folder.
        out_dir: A run directory; the checkpoint goes to ``out_dir/checkpoints/step-0000000``, so ``out_dir``
            works wherever a command takes ``CHECKPOINT`` (``sample``, ``eval``, fine-tuning's ``init_from``).

    Returns:
        The step directory.

    Raises:
        MicrogptError: As :func:`import_hf` / :func:`load_pretrained_gpt2`, or when the folder has no tokenizer.
    """
    from microgpt.common.checkpoint import CheckpointWriter, capture_rng_state

    folder = Path(source)
    if not folder.is_dir():
        if str(source) not in GPT2_SIZES:
            raise MicrogptError(f"unknown model {str(source)!r}: not a folder, nor one of {', '.join(GPT2_SIZES)}")
        model, tokenizer = load_pretrained_gpt2(str(source))
    else:
        model, maybe_tokenizer = import_hf(folder)
        if maybe_tokenizer is None:
            raise MicrogptError(f"{folder}: no tokenizer.json (or vocab.json + merges.txt); a checkpoint needs one")
        tokenizer = maybe_tokenizer
    if tokenizer.n_vocab != model.config.vocab_size:
        raise MicrogptError(f"{source}: tokenizer has {tokenizer.n_vocab} tokens, the model {model.config.vocab_size}")

    def write_tokenizer(tmp: Path) -> None:
        tokenizer.save(tmp / "tokenizer")

    writer = CheckpointWriter(Path(out_dir) / "checkpoints", keep_last=0)
    return writer.save(
        0,
        model=model,
        optimizers=[],
        model_config=model.config.to_dict(),
        run_config_yaml=f"# imported from {source} by microgpt import\n",
        trainer_state={},
        rng_states=[capture_rng_state()],
        meta={"tokens": 0, "tokenizer_fingerprint": tokenizer.fingerprint, "source": str(source)},
        write_extra=write_tokenizer,
    )
