"""FSDP2 vs DDP vs one process (same global batch), SIGKILL and resume under FSDP, elastic resume 2 → 1 and 1 → 2,
sharded checkpoints consolidated: real ``torchrun`` with 2 gloo processes on a tiny model (issue 18)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from microgpt import load_model
from microgpt.common.checkpoint import CheckpointError, list_checkpoints
from microgpt.common.checkpoint_load import TensorReader, load_model_state
from microgpt.common.config import load_config
from microgpt.common.errors import ConfigError
from microgpt.common.metrics import read_metrics
from microgpt.common.train_config import TrainConfig
from microgpt.model.gpt import GPT
from microgpt.model.pretrain import RunConfig

ROOT = Path(__file__).resolve().parents[2]
VAL = ROOT / "data" / "tinyshakespeare" / "val.txt"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 6


def _config(folder: Path) -> Path:
    # The text lives in one place for every run, so that prepared data copied between run folders is the same
    # data config (its paths are part of it).
    shared = Path(tempfile.gettempdir()) / "microgpt-test-parallel-text"
    shared.mkdir(exist_ok=True)
    corpus = shared / "corpus.txt"
    corpus.write_text(VAL.read_text()[:20_040])  # byte-level tokens: an odd number of 40-token windows
    heldout = shared / "heldout.txt"
    heldout.write_text(VAL.read_text()[50_000:50_400])
    config = {
        "out_dir": str(folder / "run"),
        "tokenizer": {"vocab_size": 257},
        "data": {
            "sources": [{"type": "file", "paths": [str(heldout)]}, {"type": "file", "paths": [str(corpus)]}],
            "val_fraction": 0,
            "val_docs": 1,
            "workers": 1,
        },
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 40},
        "train": {
            "max_steps": STEPS,
            "batch_size": 8,
            "micro_batch_size": 2,  # accumulation: 4 micro-steps on one process, 2 × 2 ranks on two
            "optimizer": "muon",  # Muon on sharded matrices, AdamW on the rest
            "lr": 1e-2,
            "warmup_steps": 2,
            "eval_interval": 0,  # one evaluation, at the end (every rank runs it under FSDP)
            "eval_batches": 2,
            "checkpoint_interval": 3,
            "keep_last": 0,
            "log_interval": 1,
            "sample_tokens": 4,  # one sample at the end (every rank generates under FSDP)
            "progress": False,
            "plot": False,
            "threads": 1,
            "device": "cpu",
        },
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(folder: Path, nproc: int, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "microgpt", "train", str(folder / "run.yaml"), *overrides]
    command += ["--nproc", str(nproc)] if nproc > 1 else []
    result = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(folder: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in read_metrics(folder / "run" / "metrics.jsonl") if "train_loss" in r]


def _copy_run(source: Path, target: Path, *, drop_after: int) -> None:
    """A copy of a finished run with the checkpoints after ``drop_after`` removed (as if it stopped there)."""
    shutil.copytree(source, target)
    for name in ("run.yaml", "run/run_config.yaml"):  # the out_dir and data paths name the new folder
        (target / name).write_text((source / name).read_text().replace(str(source), str(target)))
    for step_dir in list_checkpoints(target / "run" / "checkpoints"):
        if int(step_dir.name.split("-")[1]) > drop_after:
            shutil.rmtree(step_dir)


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]], rel: float = 1e-4) -> None:
    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=rel), f"step {step}: {x} vs {y}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process, 2 × DDP and 2 × FSDP: the same run, each in its own folder (the data prepared once)."""
    base = tmp_path_factory.mktemp("parallel")
    folders = {name: base / name for name in ("one", "ddp", "fsdp")}
    for folder in folders.values():
        folder.mkdir()
        _config(folder)
    _train(folders["one"], 1)
    for name in ("ddp", "fsdp"):
        shutil.copytree(folders["one"] / "run" / "data", folders[name] / "run" / "data")
        _train(folders[name], 2, f"train.parallel={name}")
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(runs: dict[str, Path], mode: str) -> None:
    one, two = _losses(runs["one"]), _losses(runs[mode])
    assert [s for s, _ in one] == list(range(1, STEPS + 1))
    assert two[0][1] == pytest.approx(one[0][1], rel=1e-6)  # step 1: the same batch and the same initial weights
    _close(two, one)
    assert read_metrics(runs[mode] / "run" / "metrics.jsonl")[-1]["val_loss"] == pytest.approx(
        read_metrics(runs["one"] / "run" / "metrics.jsonl")[-1]["val_loss"], rel=1e-4
    )


@pytest.mark.slow
def test_fsdp_checkpoints_are_safetensors_and_json_and_consolidate(runs: dict[str, Path], tmp_path: Path) -> None:
    step_dir = runs["fsdp"] / "run" / "checkpoints" / f"step-{STEPS:07d}"
    names = sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file())
    assert "model-00000-of-00002.safetensors" in names and "optimizer-00001-of-00002.safetensors" in names
    assert "model.safetensors" not in names
    assert all(n.endswith((".safetensors", ".json", ".yaml", ".txt")) or n.startswith("tokenizer/") for n in names)
    out = tmp_path / "step-consolidated"
    result = subprocess.run(
        [sys.executable, "-m", "microgpt", "consolidate", str(step_dir), str(out)], env=ENV, capture_output=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reader = TensorReader(step_dir)
    joined = load_model(out, device="cpu").model.state_dict()
    for name, tensor in joined.items():
        assert torch.equal(tensor, reader.read("model", name)), name
    direct = load_model(runs["fsdp"] / "run", device="cpu").model.state_dict()  # the sharded one, read directly
    assert all(torch.equal(direct[n], t) for n, t in joined.items())
    # the consolidated checkpoint is an ordinary one: it exports and samples
    hf = tmp_path / "hf"
    assert subprocess.run([sys.executable, "-m", "microgpt", "export", str(out), str(hf)], env=ENV).returncode == 0
    assert (hf / "config.json").is_file()
    # a sharded checkpoint refuses a model of another shape in one line
    config = load_config(RunConfig, runs["fsdp"] / "run.yaml", ["model.n_embd=64"])
    with pytest.raises(CheckpointError, match=r"weights do not match the model config: .* has shape \(320, 32\)"):
        load_model_state(GPT(config.model), step_dir)


@pytest.mark.slow
def test_fsdp_sigkill_then_rerun_reproduces_the_uninterrupted_losses(runs: dict[str, Path], tmp_path: Path) -> None:
    _config(tmp_path)
    shutil.copytree(runs["one"] / "run" / "data", tmp_path / "run" / "data")
    overrides = ["train.parallel=fsdp", "train.checkpoint_interval=1"]
    command = [sys.executable, "-m", "microgpt", "train", str(tmp_path / "run.yaml"), *overrides, "--nproc", "2"]
    process = subprocess.Popen(
        command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "checkpoints" / "step-0000002").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers, mid-run
    process.wait()
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert steps and max(steps) < STEPS, "the kill must land mid-run"
    _train(tmp_path, 2, *overrides)
    assert _losses(tmp_path) == _losses(runs["fsdp"])  # bitwise: same world size, same shards


@pytest.mark.slow
@pytest.mark.parametrize(("saved_by", "resumed_on"), [("fsdp", 1), ("one", 2)])
def test_elastic_resume_continues_the_same_run(
    runs: dict[str, Path], tmp_path: Path, saved_by: str, resumed_on: int
) -> None:
    # FSDP on 2 → one process (train.parallel=fsdp there: nothing to shard, it trains the plain model), and
    # one process → DDP on 2: the same global batch, so the same data and, within float tolerance, the same losses.
    folder = tmp_path / "resumed"
    _copy_run(runs[saved_by], folder, drop_after=3)
    result = _train(folder, resumed_on, f"train.parallel={'fsdp' if saved_by == 'fsdp' else 'ddp'}")
    assert f"a run saved on {3 - resumed_on}" in result.stderr
    reference = _losses(runs["one"])
    assert _losses(folder)[:3] == _losses(runs[saved_by])[:3]
    _close(_losses(folder), reference)


def test_bad_parallel_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size=8 does not split into 3 rank\(s\)"):
        TrainConfig(batch_size=8, parallel="fsdp").grad_accum_steps(3)
    with pytest.raises(ValueError, match="parallel"):
        TrainConfig(parallel="zero3")  # type: ignore[arg-type]


def _grads(model: torch.nn.Module) -> dict[str, Any]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_gradients(mode: str) -> None:
    from microgpt.common.parallel import apply_activation_checkpointing, transformer_blocks
    from microgpt.model.config import GPTConfig

    config = GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    torch.manual_seed(0)
    plain, checkpointed = GPT(config), GPT(config)
    checkpointed.load_state_dict(plain.state_dict())
    wrapped = apply_activation_checkpointing(transformer_blocks(checkpointed), mode)  # type: ignore[arg-type]
    assert wrapped == (3 if mode == "full" else 1)
    x = torch.randint(0, 50, (2, 16))
    for model in (plain, checkpointed):
        _, loss = model(x, x)
        assert loss is not None
        loss.backward()
    a, b = _grads(plain), _grads(checkpointed)
    assert a.keys() == b.keys() and all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_meta_init_replays_the_plain_init() -> None:
    from microgpt.common.parallel import materialize
    from microgpt.model.config import GPTConfig

    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    torch.manual_seed(7)
    plain = GPT(config)
    with torch.device("meta"):
        meta = GPT(config)
    materialize(meta, torch.device("cpu"), seed=7)
    for (name, a), (_, b) in zip(plain.state_dict().items(), meta.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(plain.rope_cos, meta.rope_cos)
