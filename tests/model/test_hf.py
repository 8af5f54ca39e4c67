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


def tiny_llama(tmp_path: Path, **overrides: Any) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, **overrides,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    perturb(model)
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


@pytest.mark.parametrize("tie", [True, False])
def test_import_llama_logits_and_greedy(tmp_path: Path, tie: bool) -> None:
    hf = tiny_llama(tmp_path, tie_word_embeddings=tie)
    ours, _ = import_hf(tmp_path)
    assert ours.config.n_kv_head == 2 and ours.config.mlp == "swiglu"
    idx = torch.randint(0, 100, (2, 20))
    torch.testing.assert_close(ours_logits(ours, idx), hf_logits(hf, idx), atol=1e-4, rtol=1e-4)
    prompt = [5, 17, 42]
    hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert generate_ids(ours, prompt, 12, temperature=0.0) == hf_out[0, 3:].tolist()


EXPORTABLE = [
    {"mlp": "swiglu", "n_kv_head": 2, "tie_embeddings": False},
    {"mlp": "swiglu", "rope_base": 500.0},
    {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True},
    {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": False, "tie_embeddings": False},
]


@pytest.mark.parametrize("options", EXPORTABLE)
def test_export_logits_greedy_and_round_trip(tmp_path: Path, options: dict[str, Any]) -> None:
    config = GPTConfig.model_validate(
        {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 32, "vocab_size": 90, **options}
    )
    torch.manual_seed(0)
    ours = GPT(config).eval()
    perturb(ours)
    export_hf(ours, None, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected_class = "GPT2LMHeadModel" if config.pos_encoding == "learned" else "LlamaForCausalLM"
    assert type(hf).__name__ == expected_class
    idx = torch.randint(0, 90, (2, 24))
    torch.testing.assert_close(hf_logits(hf, idx), ours_logits(ours, idx), atol=1e-4, rtol=1e-4)
    prompt = [1, 2, 3, 4]
    hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert hf_out[0, 4:].tolist() == generate_ids(ours, prompt, 10, temperature=0.0)
    back, _ = import_hf(tmp_path)
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
        ({"qk_norm": True}, "qk_norm=true"),
        ({"mlp": "relu2"}, "mlp=relu2 with RoPE"),
        ({"norm": "layernorm", "mlp": "swiglu"}, "cannot export norm=layernorm with RoPE"),
        ({"pos_encoding": "learned", "mlp": "swiglu", "norm": "layernorm"}, "mlp=swiglu with learned positions"),
        ({"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "n_kv_head": 2}, "n_kv_head=2"),
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
