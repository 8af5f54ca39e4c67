"""``microgpt import`` and ``microgpt export`` end to end, in process (the CLI's own main)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from microgpt.cli.main import main
from microgpt.model.api import load_model
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.model.hf import export_hf
from microgpt.tokenizer import Tokenizer


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_import_then_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = Tokenizer.train(["to be or not to be, that is the question " * 20], vocab_size=280)
    config = GPTConfig(
        n_layer=1, n_head=2, n_kv_head=1, n_embd=16, block_size=32, vocab_size=tokenizer.n_vocab, mlp="swiglu"
    )
    torch.manual_seed(0)
    export_hf(GPT(config), tokenizer, tmp_path / "hf")

    assert cli("import", str(tmp_path / "hf"), str(tmp_path / "run")) == 0
    loaded = load_model(tmp_path / "run", device="cpu")  # a run directory means its newest checkpoint
    assert loaded.tokenizer.fingerprint == tokenizer.fingerprint
    assert len(loaded.generate_text("to be", max_new_tokens=5, temperature=0.0)) > 0

    assert cli("export", str(tmp_path / "run"), str(tmp_path / "again"), "--format", "hf") == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    first, second = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "again" / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=0)
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (tmp_path / "hf" / "tokenizer.json").read_text()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("import", "gpt3", str(tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "error: unknown model 'gpt3'" in err and "Traceback" not in err
    assert cli("export", str(tmp_path / "nothing"), str(tmp_path / "out"), "--format", "onnx") == 2
    assert "unknown export format 'onnx'" in capsys.readouterr().err
