from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from microgpt.cli.data import register
from microgpt.common.errors import MicrogptError
from microgpt.common.sources import TextSource
from microgpt.data import DataConfig, Manifest, PrepareConfig, prepare_dataset
from microgpt.tokenizer import Tokenizer, TokenizerConfig
from tests.data.conftest import corpus


def test_tokenizer_trains_on_the_train_split_only(tmp_path: Path) -> None:
    secret = "zqxj " * 30  # only in validation documents: a tokenizer that saw them would merge it
    texts = [secret + str(i) for i in range(5)] + corpus(200)
    config = PrepareConfig(
        tokenizer=TokenizerConfig(vocab_size=300),
        data=DataConfig(sources=[TextSource(texts=texts)], val_docs=5, shard_tokens=4000, workers=1),
        out_dir=tmp_path / "run",
    )
    manifest = prepare_dataset(config)
    tokenizer = Tokenizer.from_directory(tmp_path / "run" / "tokenizer")
    assert len(tokenizer.encode_ordinary("zqxj")) == 4  # never merged
    assert manifest.tokenizer.fingerprint == tokenizer.fingerprint
    assert manifest.split("val").documents == 5 and Manifest.load(tmp_path / "run") == manifest
    assert prepare_dataset(config) == manifest  # complete: reused as is
    app = typer.Typer()
    register(app)
    info = CliRunner().invoke(app, ["data", "info", str(tmp_path / "run")])
    assert info.exit_code == 0 and re.search(r"val +5 docs +755 bytes", info.output), info.output
    changed = config.model_copy(update={"tokenizer": TokenizerConfig(vocab_size=310)})
    with pytest.raises(MicrogptError, match="different tokenizer config"):
        prepare_dataset(changed)


@pytest.mark.slow
def test_cli_prepare_and_bad_input(tmp_path: Path) -> None:
    (tmp_path / "docs.txt").write_text("\n\n".join(corpus(150)))
    config = {
        "tokenizer": {"vocab_size": 300},
        "data": {"sources": [{"type": "file", "paths": [str(tmp_path / "docs.txt")], "separator": "\n\n"}]},
        "out_dir": str(tmp_path / "out"),
    }
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump(config))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "microgpt", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    done = cli("data", "prepare", "prep.yaml", "data.val_docs=10", "data.workers=2", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert re.search(r"val +10 docs", done.stdout), done.stdout
    assert (tmp_path / "out" / "manifest.json").exists() and (tmp_path / "out" / "tokenizer").is_dir()

    config["data"]["sources"][0]["paths"] = ["missing-*.txt"]  # type: ignore[index]  # a dict[str, object] literal
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    bad = cli("data", "prepare", "bad.yaml", "out_dir=bad")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == "error: file source #0: no file matches 'missing-*.txt'"
    assert "Traceback" not in bad.stderr
    assert not list((tmp_path / "bad").glob("*.bin"))
