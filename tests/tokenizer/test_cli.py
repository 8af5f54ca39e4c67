from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from microgpt.cli.tokenizer import register
from microgpt.common.errors import MicrogptError
from microgpt.tokenizer import Tokenizer

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 40


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """Root."""

    register(root)
    return root


def test_train_info_encode_decode(app: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("\ufeff" + TEXT, encoding="utf-8")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "the second document"}) + "\n\n")
    runner = CliRunner()
    out = tmp_path / "tok"
    args = ["tokenizer", "train", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl.gz"), "-o", str(out), "-v", "300"]
    result = runner.invoke(app, [*args, "--special", "<|endoftext|>", "--special", "<|pad|>"])
    assert result.exit_code == 0, result.output
    tok = Tokenizer.from_directory(out)
    assert tok.n_vocab == 300 and tok.special_tokens == {"<|endoftext|>": 298, "<|pad|>": 299}

    result = runner.invoke(app, ["tokenizer", "info", str(out), "--file", str(tmp_path / "a.txt")])
    assert result.exit_code == 0
    assert "n_vocab:     300" in result.output and "bytes/token" in result.output

    result = runner.invoke(app, ["tokenizer", "encode", str(out), "a truth<|pad|>", "--allow-special"])
    ids = [int(x) for x in result.output.split()]
    assert ids == tok.encode("a truth<|pad|>", allowed_special="all") and ids[-1] == 299
    result = runner.invoke(app, ["tokenizer", "decode", str(out)], input=" ".join(map(str, ids)))
    assert result.output == "a truth<|pad|>"


def test_encode_stdin_and_pretrained(app: typer.Typer, pretrained_dir: Path) -> None:
    result = CliRunner().invoke(
        app, ["tokenizer", "encode", "r50k_base", "--cache-dir", str(pretrained_dir)], input="hello world"
    )
    assert result.output.split() == ["31373", "995"]


def test_non_utf8_input_is_a_clear_error(app: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "latin.txt").write_bytes("café crème ".encode("latin-1") * 50)
    args = ["tokenizer", "train", str(tmp_path / "latin.txt"), "-o", str(tmp_path / "tok"), "-v", "260"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, MicrogptError)
    assert "not valid utf-8 at byte 3" in str(result.exception).lower()
    assert "--encoding latin-1" in str(result.exception)  # and it names the fix
    result = CliRunner().invoke(app, [*args, "--encoding", "latin-1"])
    assert result.exit_code == 0
    assert (
        Tokenizer.from_directory(tmp_path / "tok").decode(Tokenizer.from_directory(tmp_path / "tok").encode("café"))
        == "café"
    )


def test_user_errors_have_no_traceback(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "microgpt", "tokenizer", *args], capture_output=True, text=True, timeout=60
        )

    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    result = run("train", str(tmp_path / "a.txt"), "-o", str(tmp_path / "t"), "-v", "100")
    assert result.returncode == 2 and "vocab_size must be at least" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("info", "gpt5")
    assert result.returncode == 2 and "known: gpt2" in result.stderr and "Traceback" not in result.stderr
    result = run("train", str(tmp_path / "a.txt"), "-o", str(tmp_path / "t"), "--pattern", "(oops")
    assert result.returncode == 2 and "does not compile" in result.stderr and "Traceback" not in result.stderr
