"""The base loop under a real ``torchrun`` (2 gloo ranks): DDP wrapping, gradient accumulation with ``no_sync``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from microgpt.common.checkpoint import split_shared
from microgpt.common.checkpoint_load import load_weights
from microgpt.common.trainer import Batch
from tests.common.test_trainer import ListLoader, TinyTrainer, _config

ROOT = Path(__file__).resolve().parents[2]


class TwoRankLoader:
    """What two ranks with loader seeds 0 and 1 draw, dealt to one process: 2 micro-batches from each per step."""

    def __init__(self, batch: int) -> None:
        self.streams = [ListLoader(batch, seed=0), ListLoader(batch, seed=1)]
        self.count = 0

    def __next__(self) -> Batch:
        stream = self.streams[(self.count // 2) % 2]
        self.count += 1
        return next(stream)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class OneProcessTrainer(TinyTrainer):
    def build_model(self) -> torch.nn.Module:
        self.model = super().build_model()
        return self.model

    def build_train_loader(self, micro_batch_size: int) -> TwoRankLoader:  # type: ignore[override]
        return TwoRankLoader(micro_batch_size)


@pytest.mark.slow
def test_two_ranks_with_accumulation_match_one_process(tmp_path: Path) -> None:
    """2 ranks × 2 micro-steps (``no_sync`` on the first) give one process's 4 micro-steps, on every rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = ROOT / "tests" / "common" / "ddp_tiny_trainer.py"
    done = subprocess.run(
        [*command, str(script), str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "ddp" / "rank-0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "rank-1.safetensors"))
    for name, tensor in rank0.items():  # gradients were averaged before every optimizer step: identical weights
        assert torch.equal(tensor, rank1[name]), name

    reference = OneProcessTrainer(_config(max_steps=4, batch_size=8, micro_batch_size=2), tmp_path / "one")
    assert reference.grad_accum == 4
    reference.fit()
    expected, _ = split_shared(reference.model.state_dict())
    assert set(expected) == set(rank0)
    for name, tensor in expected.items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    step = tmp_path / "ddp" / "checkpoints" / "step-0000004"
    names = set(load_weights(step))  # saved from the unwrapped module: no DDP (or compile) prefix
    assert "lm_head.weight" in names and not any(n.startswith(("module.", "_orig_mod.")) for n in names)
    assert json.loads((step / "trainer.json").read_text())["world_size"] == 2
