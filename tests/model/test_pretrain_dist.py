"""Two real torchrun processes on gloo: a slow rank-0 prepare, per-device throughput and MFU, unshared out_dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from microgpt.common.metrics import read_metrics
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "data" / "tinyshakespeare" / "val.txt").read_text(encoding="utf-8")[:30_000]
MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 257}


def _config(tmp_path: Path, sources: list[dict[str, object]], **train: object) -> Path:
    config = {
        "out_dir": str(tmp_path / "run"),
        "tokenizer": {"vocab_size": 257},  # bytes only: no BPE training to wait for
        "data": {"sources": sources, "val_fraction": 0.1, "workers": 1},
        "model": MODEL,
        "train": {
            "max_steps": 6,
            "batch_size": 8,
            "lr": 1e-2,
            "warmup_steps": 2,
            "eval_interval": 0,
            "eval_batches": 2,
            "checkpoint_interval": 0,
            "log_interval": 1,
            "progress": False,
            "plot": False,
            "sample_tokens": 0,
            "threads": 1,
            "device": "cpu",
            **train,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env(**extra: str) -> dict[str, str]:
    # No native-kernel build in each rank: these tests are about processes, not kernels.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MICROGPT_KERNELS": "0", **extra}


@pytest.mark.slow
def test_slow_rank0_prepare_outlasts_the_collective_timeout(tmp_path: Path, http_server: tuple[str, object]) -> None:
    # Rank 0 downloads the corpus from a server that answers after 25 s while collectives time out after 12 s:
    # a barrier behind the prepare would kill rank 1; waiting on the store must not.
    url, state = http_server
    state.files["corpus.txt"] = TEXT.encode()  # type: ignore[attr-defined]
    source = {"type": "url", "urls": [f"{url}/slow/25/corpus.txt"], "separator": "\n\n", "timeout": 120}
    config = _config(tmp_path, [source], peak_flops=1e12)
    command = [sys.executable, "-m", "microgpt", "train", str(config), "--nproc", "2"]
    result = subprocess.run(command, env=_env(MICROGPT_DIST_TIMEOUT="12"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train_loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    # The first step (where CUDA compiles) is in no rate; later records give the job's and one device's rate.
    assert "tokens_per_sec" not in records[0] and "mfu" not in records[0]
    per_token = GPT(GPTConfig.model_validate(MODEL)).flops_per_token()
    for record in records[1:]:
        assert record["tokens_per_sec_per_device"] == pytest.approx(record["tokens_per_sec"] / 2)
        assert record["mfu"] == pytest.approx(per_token * record["tokens_per_sec_per_device"] / 1e12)


@pytest.mark.slow
def test_ranks_with_different_out_dirs_are_refused(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    config = _config(tmp_path, [{"type": "file", "paths": [str(corpus)], "separator": "\n\n"}])
    # Each rank gets an out_dir of its own, as two nodes with local disks would have.
    script = tmp_path / "per_rank_out_dir.py"
    script.write_text(
        "import os, sys\n"
        "from microgpt.cli.main import main\n"
        "main(['train', sys.argv[1], f'out_dir={sys.argv[2]}/rank' + os.environ['RANK']])\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    command += [str(config), str(tmp_path)]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "out_dir is not one folder shared by all ranks" in line]
    assert len(lines) == 2, result.stderr[-3000:]  # both ranks stop with the same one line
    assert all(line.startswith("error: ") and "rank 1 sees" in line and "rank0" in line for line in lines)
    assert not (tmp_path / "rank1" / "checkpoints").exists() and not (tmp_path / "rank0" / "checkpoints").exists()
