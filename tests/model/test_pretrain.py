"""Pretraining end to end through the CLI: train, sample, eval, load_model, refusals, SIGKILL resume, DDP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from microgpt import load_model
from microgpt.cli.main import main
from microgpt.common.checkpoint import list_checkpoints
from microgpt.common.config import load_config
from microgpt.common.errors import ConfigError
from microgpt.common.metrics import read_metrics
from microgpt.data import Manifest
from microgpt.model.pretrain import RunConfig

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT / "data" / "tinyshakespeare"


def _write_config(tmp_path: Path, **train: Any) -> Path:
    config = {
        "out_dir": str(tmp_path / "run"),
        "tokenizer": {"vocab_size": 300},
        "data": {
            "sources": [{"type": "file", "paths": [str(SHAKESPEARE / "val.txt")], "separator": "\n\n"}],
            "val_fraction": 0.1,
            "workers": 1,
        },
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        "train": {
            "max_steps": 12,
            "batch_size": 8,
            "lr": 1e-2,
            "warmup_steps": 2,
            "eval_interval": 6,
            "eval_batches": 2,
            "checkpoint_interval": 6,
            "log_interval": 1,
            "progress": False,
            "plot": False,
            "sample_tokens": 8,
            "device": "cpu",
            **train,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in read_metrics(run / "metrics.jsonl") if "train_loss" in r]


def test_shakespeare_split_is_nanogpts() -> None:
    joined = (SHAKESPEARE / "train.txt").read_bytes() + (SHAKESPEARE / "val.txt").read_bytes()
    # char-rnn's input.txt, byte for byte (its sha256 in data/README.md)
    assert hashlib.sha256(joined).hexdigest() == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert len((SHAKESPEARE / "train.txt").read_bytes()) == int(0.9 * len(joined))


@pytest.mark.slow
def test_train_sample_eval_and_load_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path)
    assert _cli(["train", str(config)]) == 0
    run = tmp_path / "run"
    out = capsys.readouterr().out
    assert "step 12: val loss" in out and "bits/byte" in out
    records = read_metrics(run / "metrics.jsonl")
    assert records[-1]["step"] == 12 and records[-1]["val_bpb"] > 0
    manifest = Manifest.load(run / "data")
    # bits per byte = nats/token × tokens/bytes / ln 2 on the validation split
    expected = records[-1]["val_loss"] * manifest.split_tokens("val") / manifest.split_bytes("val") / 0.6931471805599453
    assert records[-1]["val_bpb"] == pytest.approx(expected)
    meta = json.loads((run / "checkpoints" / "step-0000012" / "meta.json").read_text())
    model = load_model(run)  # a run directory means its newest complete checkpoint
    assert model.checkpoint.name == "step-0000012"
    assert meta["tokenizer_fingerprint"] == model.tokenizer.fingerprint
    first = model.generate_text("ROMEO:", max_new_tokens=10, seed=1, stop_at_eot=False)
    assert first == model.generate_text("ROMEO:", max_new_tokens=10, seed=1, stop_at_eot=False)
    assert "".join(model.stream_text("ROMEO:", 10, seed=1, stop_at_eot=False)) == first
    assert _cli(["sample", str(run), "--prompt", "ROMEO:", "-n", "10", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert _cli(["eval", str(run / "checkpoints" / "step-0000012")]) == 0
    assert f"loss {records[-1]['val_loss']:.4f} nats/token" in capsys.readouterr().out


def test_refuses_another_run_in_out_dir_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path, max_steps=2, eval_interval=0, checkpoint_interval=0)
    assert _cli(["train", str(config)]) == 0
    assert _cli(["train", str(config), "model.n_layer=2"]) == 1
    assert "holds a different run (it differs in model.n_layer)" in capsys.readouterr().err
    assert _cli(["train", str(config), "model.n_layer=2", "--overwrite"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "checkpoints" / "step-0000002" / "run_config.yaml").read_text())
    assert saved["model"]["n_layer"] == 2


def test_bad_configs_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path)
    assert _cli(["train", str(config), "model.n_embd=33"]) == 2
    assert "n_embd must be divisible by n_head" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="model.vocab_size=500 does not match the tokenizer's vocabulary"):
        from microgpt.pipeline.pretraining import run_pretraining

        run_pretraining(load_config(RunConfig, config, ["model.vocab_size=500"]))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training started


@pytest.mark.slow
def test_corrupt_checkpoint_is_detected_with_older_offered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path, max_steps=4, eval_interval=0, checkpoint_interval=2, keep_last=0)
    assert _cli(["train", str(config)]) == 0
    newest = tmp_path / "run" / "checkpoints" / "step-0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated
    assert _cli(["sample", str(tmp_path / "run"), "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert "step-0000004: model.safetensors is corrupt or truncated" in err
    assert "next-older good checkpoint is" in err and "step-0000002" in err


def _fingerprint(records: list[tuple[int, float]]) -> str:
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()


@pytest.mark.slow
def test_sigkill_then_rerun_reproduces_the_uninterrupted_losses(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    straight.mkdir()
    overrides = ["train.max_steps=80", "train.checkpoint_interval=10", "train.eval_interval=0", "train.threads=1"]
    config = _write_config(straight)
    command = [sys.executable, "-m", "microgpt", "train", str(config), *overrides]
    subprocess.run(command, check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    killed.mkdir()
    config = _write_config(killed)
    command = [sys.executable, "-m", "microgpt", "train", str(config), *overrides]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (killed / "run" / "checkpoints" / "step-0000020").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(killed / "run" / "checkpoints")]
    assert steps and max(steps) < 80, "the kill must land mid-run"
    subprocess.run(command, check=True, env=env, capture_output=True)
    assert _losses(killed / "run") == _losses(straight / "run")  # bitwise, step for step
    assert len(_losses(straight / "run")) == 80


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    # Byte-level tokens (vocab 257: no merges) make the token count, hence the window count, known: an odd count
    # of windows is the case an order that depended on the world size got wrong (issue 18).
    text = (SHAKESPEARE / "val.txt").read_text()[:20_040]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    heldout = tmp_path / "heldout.txt"
    heldout.write_text((SHAKESPEARE / "val.txt").read_text()[50_000:50_400])
    overrides = [
        "tokenizer.vocab_size=257",
        f"data.sources=[{{type: file, paths: [{heldout}]}}, {{type: file, paths: [{corpus}]}}]",
        "data.val_fraction=0",
        "data.val_docs=1",
        "train.max_steps=6",
        "train.eval_interval=0",
        "train.checkpoint_interval=0",
        "train.sample_tokens=0",
        "train.threads=1",
        "model.block_size=40",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for folder, extra in ((one, []), (two, ["--nproc", "2"])):
        config = _write_config(folder)
        command = [sys.executable, "-m", "microgpt", "train", str(config), *overrides, *extra]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    tokens = Manifest.load(one / "run" / "data").split_tokens("train")
    assert ((tokens - 1) // 40) % 2 == 1, "precondition: an odd number of windows"
    a, b = _losses(one / "run"), _losses(two / "run")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    assert a[0][1] == pytest.approx(b[0][1], rel=1e-6)  # the same batch at step 1, before any update
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=1e-4)
    assert read_metrics(two / "run" / "metrics.jsonl")[-1]["tokens"] == 6 * 8 * 40


@pytest.mark.parametrize("preset", ["shakespeare.yaml", "shakespeare-5min.yaml"])
def test_presets_are_valid_run_configs(preset: str) -> None:
    config = load_config(RunConfig, ROOT / "configs" / preset)
    assert config.model.vocab_size == config.tokenizer.vocab_size  # filled from the tokenizer
    assert [Path(p).name for s in config.data.sources for p in getattr(s, "paths", [])] == ["val.txt", "train.txt"]
