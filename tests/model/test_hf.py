"""Parity with Hugging Face transformers as the oracle (offline): import, export, greedy generation, tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.model.config import GPTConfig
from microgpt.model.generate import generate_ids
from microgpt.model.gpt import GPT
from microgpt.model.hf import GPT2_SIZES, export_hf, import_hf, load_pretrained_gpt2
from microgpt.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. 1234 don't ☃ ünïcode!\n"


def perturb(model: Any) -> None:
    """Random values everywhere, so zero biases and unit norms cannot hide a mapping error."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def hf_logits(model: Any, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=idx).logits
    return out


def ours_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = model.eval()(idx)
    out: torch.Tensor = logits
    return out


def tiny_gpt2(tmp_path: Path, **overrides: Any) -> Any:
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4, **overrides)
    model = transformers.GPT2LMHeadModel(config).eval()
    perturb(model)
    model.save_pretrained(tmp_path)
    return model


def tiny_rope_family(tmp_path: Path, family: str, **overrides: Any) -> Any:
    """A tiny random Llama, Qwen3 or Arcee saved by transformers itself."""
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "arcee": (transformers.ArceeConfig, transformers.ArceeForCausalLM),
    }[family]
    config = config_class(
        vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=32, rms_norm_eps=1e-5, **overrides,
    )  # fmt: skip
    model = model_class(config).eval()
    perturb(model)
    if family == "qwen3":  # microgpt's QK-norm shares one scale between queries and keys
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.k_norm.weight.copy_(layer.self_attn.q_norm.weight)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_import_gpt2_logits(tmp_path: Path, tie: bool) -> None:
    hf = tiny_gpt2(tmp_path, tie_word_embeddings=tie)
    ours, tokenizer = import_hf(tmp_path)
    assert tokenizer is None
    assert ours.config.pos_encoding == "learned" and ours.config.tie_embeddings == tie
    idx = torch.randint(0, 100, (2, 20))
    torch.testing.assert_close(ours_logits(ours, idx), hf_logits(hf, idx), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("family", "mlp", "qk_norm"), [("llama", "swiglu", False), ("qwen3", "swiglu", True), ("arcee", "relu2", False)]
)
@pytest.mark.parametrize("tie", [True, False])
def test_import_rope_family_logits_and_greedy(tmp_path: Path, tie: bool, family: str, mlp: str, qk_norm: bool) -> None:
    hf = tiny_rope_family(tmp_path, family, tie_word_embeddings=tie)
    ours, _ = import_hf(tmp_path)
    assert (ours.config.n_kv_head, ours.config.mlp, ours.config.qk_norm) == (2, mlp, qk_norm)
    idx = torch.randint(0, 100, (2, 20))
    torch.testing.assert_close(ours_logits(ours, idx), hf_logits(hf, idx), atol=1e-4, rtol=1e-4)
    prompt = [5, 17, 42]
    hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert generate_ids(ours, prompt, 12, temperature=0.0) == hf_out[0, 3:].tolist()


EXPORTABLE = [  # (options, the transformers class they export as)
    ({"mlp": "swiglu", "n_kv_head": 2, "tie_embeddings": False}, "LlamaForCausalLM"),
    ({"mlp": "swiglu", "rope_base": 500.0}, "LlamaForCausalLM"),
    ({"mlp": "swiglu", "qk_norm": True, "n_kv_head": 2}, "Qwen3ForCausalLM"),
    ({"mlp": "swiglu", "qk_norm": True, "tie_embeddings": False, "norm_eps": 1e-6}, "Qwen3ForCausalLM"),
    ({"mlp": "relu2", "n_kv_head": 2}, "ArceeForCausalLM"),
    ({"mlp": "relu2", "tie_embeddings": False, "mlp_hidden": 40}, "ArceeForCausalLM"),
    ({"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}, "GPT2LMHeadModel"),
    (
        {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": False, "tie_embeddings": False},
        "GPT2LMHeadModel",
    ),
]


@pytest.mark.parametrize(("options", "expected_class"), EXPORTABLE)
def test_export_logits_greedy_and_round_trip(tmp_path: Path, options: dict[str, Any], expected_class: str) -> None:
    config = GPTConfig.model_validate(
        {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 32, "vocab_size": 90, **options}
    )
    torch.manual_seed(0)
    ours = GPT(config).eval()
    perturb(ours)
    export_hf(ours, None, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == expected_class
    idx = torch.randint(0, 90, (2, 24))
    torch.testing.assert_close(hf_logits(hf, idx), ours_logits(ours, idx), atol=1e-4, rtol=1e-4)
    prompt = [1, 2, 3, 4]
    hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert hf_out[0, 4:].tolist() == generate_ids(ours, prompt, 10, temperature=0.0)
    back, _ = import_hf(tmp_path)
    assert back.config == config.model_copy(update={"mlp_hidden": config.hidden_dim, "bias": back.config.bias})
    torch.testing.assert_close(ours_logits(back, idx), ours_logits(ours, idx))


def test_tokenizer_export_ids_identical_in_transformers(tmp_path: Path, shared_data: Path) -> None:
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tokenizer = Tokenizer.train([text[:200_000]], vocab_size=400, pattern="gpt4")
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tokenizer.n_vocab, mlp="swiglu")
    export_hf(GPT(config), tokenizer, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    sample = text[500_000:520_000] + TEXT
    ids = tokenizer.encode_ordinary(sample)
    assert hf_tok(sample, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == sample
    assert hf_tok.eos_token_id == tokenizer.eot_token
    _, back = import_hf(tmp_path)
    assert back is not None and back.fingerprint == tokenizer.fingerprint


@pytest.mark.slow
def test_load_pretrained_gpt2_from_folder(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPT-2-shaped model with the real vocabulary and context, shrunk to 2 layers × 32 wide for the test.
    monkeypatch.setitem(GPT2_SIZES, "gpt2", (2, 4, 32))
    config = transformers.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(config).eval()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    shutil.copy(shared_data / "tokenizers" / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(shared_data / "tokenizers" / "vocab.bpe", tmp_path / "merges.txt")
    ours, tokenizer = load_pretrained_gpt2("gpt2", tmp_path)
    assert ours.config.padded_vocab_size == 50304
    ids = tokenizer.encode_ordinary(TEXT)
    idx = torch.tensor([ids])
    torch.testing.assert_close(ours_logits(ours, idx), hf_logits(hf, idx), atol=1e-4, rtol=1e-4)
    # GPT-2's tokenizer through our tokenizer.json gives the ids of GPT-2's own files.
    out = tmp_path / "export"
    export_hf(ours, tokenizer, out)
    assert transformers.AutoTokenizer.from_pretrained(out)(TEXT)["input_ids"] == ids
    with pytest.raises(
        MicrogptError, match=r"as gpt2-medium\): weights do not match.*wrong shape: wte.weight \(50304, 32\)"
    ):
        load_pretrained_gpt2("gpt2-medium", tmp_path)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(MicrogptError, match="unknown GPT-2 model 'gpt3'"):
        load_pretrained_gpt2("gpt3", tmp_path)
    with pytest.raises(MicrogptError, match="missing config.json"):
        import_hf(tmp_path)
    with pytest.raises(MicrogptError, match="missing .*vocab.json"):
        load_pretrained_gpt2("gpt2", tmp_path)
    tiny_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(MicrogptError, match="missing model.safetensors"):
        import_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MicrogptError, match="cannot read safetensors"):
        import_hf(tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"mlp": "relu2", "qk_norm": True},
            r"^cannot export mlp=relu2 with qk_norm=true: no transformers family has both; the nearest are "
            r"ArceeForCausalLM \(set model.qk_norm=false\) and Qwen3ForCausalLM \(set model.mlp=swiglu\)$",
        ),
        ({"mlp": "gelu"}, r"mlp=gelu with RoPE.*LlamaForCausalLM \(set model.mlp=swiglu\)"),
        ({"mlp": "gelu", "qk_norm": True}, r"mlp=gelu with RoPE.*Qwen3ForCausalLM \(set model.mlp=swiglu\)"),
        ({"norm": "layernorm", "mlp": "swiglu"}, "cannot export norm=layernorm with RoPE"),
        ({"mlp": "swiglu", "bias": True}, "cannot export bias=true with RoPE"),
        ({"pos_encoding": "learned", "mlp": "swiglu", "norm": "layernorm"}, "mlp=swiglu with learned positions"),
        ({"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "n_kv_head": 2}, "n_kv_head=2"),
        ({"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": True}, "qk_norm=true with learned"),
    ],
)
def test_export_refuses_unrepresentable(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    config = GPTConfig.model_validate({"n_layer": 1, "n_head": 4, "n_embd": 32, "vocab_size": 10, **options})
    with pytest.raises(ConfigError, match=message):
        export_hf(GPT(config), None, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_tokenizer_without_specials_exports(tmp_path: Path) -> None:
    tokenizer = Tokenizer.train([TEXT * 5], vocab_size=270, special_tokens=())
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tokenizer.n_vocab, mlp="swiglu")
    export_hf(GPT(config), tokenizer, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok.eos_token is None
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == tokenizer.encode_ordinary(TEXT)


def test_import_refuses_what_has_no_exact_equivalent(tmp_path: Path) -> None:
    hf = tiny_rope_family(tmp_path, "qwen3")
    with torch.no_grad():
        hf.model.layers[1].self_attn.k_norm.weight.add_(0.5)
    hf.save_pretrained(tmp_path)
    with pytest.raises(MicrogptError, match=r"model.layers.1.self_attn.q_norm and k_norm differ"):
        import_hf(tmp_path)
    tiny_rope_family(tmp_path / "window", "qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with pytest.raises(MicrogptError, match="Qwen3 sliding-window attention is not supported"):
        import_hf(tmp_path / "window")
    tiny_rope_family(tmp_path / "gelu", "arcee", hidden_act="gelu")
    with pytest.raises(MicrogptError, match="Arcee hidden_act 'gelu' is not supported \\(only relu2"):
        import_hf(tmp_path / "gelu")
    tiny_rope_family(tmp_path / "bias", "llama", attention_bias=True)
    with pytest.raises(MicrogptError, match="Llama attention_bias=true is not supported"):
        import_hf(tmp_path / "bias")
