from __future__ import annotations

from pathlib import Path

from microgpt.common.config import load_config
from microgpt.model.finetune import FinetuneConfig
from microgpt.model.gpt import GPT
from microgpt.model.hf import GPT2_SIZES, config_to_hf, export_arch
from microgpt.model.pretrain import RunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_gpt2_124m_preset_is_gpt2_small() -> None:
    run = load_config(RunConfig, CONFIGS / "gpt2-124m.yaml")
    model = run.model
    assert (model.n_layer, model.n_head, model.n_embd) == GPT2_SIZES["gpt2"]
    assert model.vocab_size == 50257 and model.block_size == 1024 and model.padded_vocab_size == 50304
    assert export_arch(model) == "gpt2"
    assert config_to_hf(model, "gpt2")["n_inner"] == 4 * 768
    n = GPT(model.model_copy(update={"n_layer": 1})).num_params()
    per_layer = 12 * 768 * 768 + 13 * 768  # qkv + proj + fc + proj weights, their biases and two LayerNorms
    # transformers' GPT2LMHeadModel has 124,439,808; we add 47 padding rows of the vocabulary (47 × 768).
    assert n + 11 * per_layer == 124_439_808 + 47 * 768


def test_gpt2_finetune_preset_validates() -> None:
    config = load_config(FinetuneConfig, CONFIGS / "gpt2-finetune.yaml")
    assert config.init_from == Path("runs/gpt2")
    assert config.train.lr < 1e-4
