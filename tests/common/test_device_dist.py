from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from microgpt.common.device import autocast_dtype, pick_device, seed_everything
from microgpt.common.dist import DistInfo
from microgpt.common.errors import MicrogptError


def test_auto_picks_cpu_here_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected
    monkeypatch.setenv("MICROGPT_DEVICE", "cpu")
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_or_unknown_device_is_clear() -> None:
    with pytest.raises(MicrogptError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(MicrogptError, match="unknown device 'tpu'"):
        pick_device("tpu")


def test_autocast_dtype_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is torch.float32
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(MicrogptError, match="fp16 needs a GPU"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(MicrogptError, match="unknown precision"):
        autocast_dtype(cpu, "fp8")


def test_seed_everything_repeats_all_generators() -> None:
    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(7)
    first = draw()
    seed_everything(7)
    assert draw() == first
    seed_everything(8)
    assert draw() != first


def test_dist_info_from_env() -> None:
    assert DistInfo.from_env({}) == DistInfo(0, 0, 1)
    info = DistInfo.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (info.rank, info.local_rank, info.world_size) == (3, 1, 4)
    assert not info.is_main and info.is_distributed
    assert DistInfo.from_env({"RANK": "0", "WORLD_SIZE": "2"}).is_main


@pytest.mark.parametrize(
    ("env", "message"),
    [({"RANK": "x"}, "RANK='x' is not an integer"), ({"RANK": "2", "WORLD_SIZE": "2"}, "inconsistent")],
)
def test_dist_info_bad_env(env: dict[str, str], message: str) -> None:
    with pytest.raises(MicrogptError, match=message):
        DistInfo.from_env(env)
