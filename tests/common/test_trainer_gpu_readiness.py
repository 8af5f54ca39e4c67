"""What a first GPU run needs from the loop, checked on CPU: throughput that leaves out non-training time, MFU,
``train.deterministic``, the prefetch thread stopped, and the device facts (precision, peaks)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from microgpt.common.device import auto_precision, peak_flops
from microgpt.common.dist import collective_timeout
from microgpt.common.errors import MicrogptError
from microgpt.common.metrics import Throughput
from tests.common.test_trainer import ListLoader, TinyTrainer, _config


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throughput_leaves_out_paused_time_and_gives_per_device_rate_and_mfu() -> None:
    clock = FakeClock()
    meter = Throughput(world_size=4, flops_per_token=1e6, peak_flops=1e12, clock=clock)
    clock.now = 5.0  # the first step (compile): forgotten by restart()
    meter.add(10_000)
    meter.restart()
    meter.add(8_000)
    clock.now = 7.0
    with meter.paused():  # an evaluation
        clock.now = 100.0
    meter.add(8_000)
    clock.now = 102.0
    record = meter.record()  # 16,000 tokens in 4 s of training
    assert record["tokens_per_sec"] == pytest.approx(4_000)
    assert record["tokens_per_sec_per_device"] == pytest.approx(1_000)
    assert record["mfu"] == pytest.approx(1e6 * 1_000 / 1e12)
    assert meter.record() == {}  # nothing trained since
    unknown_peak = Throughput(1, 1e6, None, clock=clock)
    unknown_peak.add(100)
    clock.now += 1.0
    assert set(unknown_peak.record()) == {"tokens_per_sec", "tokens_per_sec_per_device"}  # no MFU without a peak


def test_auto_precision_never_picks_emulated_bf16() -> None:
    assert auto_precision("cuda", (8, 0)) is torch.bfloat16  # A100
    assert auto_precision("cuda", (9, 0)) is torch.bfloat16  # H100
    assert auto_precision("cuda", (7, 0)) is torch.float16  # V100: fp16 tensor cores, bf16 emulated
    assert auto_precision("cuda", (7, 5)) is torch.float16  # T4
    assert auto_precision("cuda", (6, 1)) is torch.float32
    assert auto_precision("cpu") is torch.float32


def test_peak_flops_table() -> None:
    cuda = torch.device("cuda")
    assert peak_flops(cuda, torch.bfloat16, name="NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops(cuda, torch.bfloat16, name="NVIDIA H100 PCIe") == 756e12
    assert peak_flops(cuda, torch.float32, name="NVIDIA A100-SXM4-80GB") == 156e12  # TF32
    assert peak_flops(cuda, torch.bfloat16, name="NVIDIA L40") == 181e12  # not L4's
    assert peak_flops(cuda, torch.float32, name="Tesla V100-SXM2-16GB") is None  # no TF32
    assert peak_flops(cuda, torch.bfloat16, name="Some Future GPU") is None
    assert peak_flops(torch.device("cpu"), torch.float32) is None


def test_collective_timeout_from_the_environment() -> None:
    assert collective_timeout({}).total_seconds() == 600
    assert collective_timeout({"MICROGPT_DIST_TIMEOUT": "7.5"}).total_seconds() == 7.5
    with pytest.raises(MicrogptError, match="MICROGPT_DIST_TIMEOUT='soon' must be a positive number"):
        collective_timeout({"MICROGPT_DIST_TIMEOUT": "soon"})


class ClosingLoader(ListLoader):
    """A loader with a real background thread, like TokenLoader's prefetch."""

    def __init__(self, batch: int) -> None:
        super().__init__(batch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.stop.wait, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class RecordingTrainer(TinyTrainer):
    def __init__(self, config: Any, out_dir: Path) -> None:
        super().__init__(config, out_dir)
        self.loaders: list[ClosingLoader] = []
        self.deterministic_seen: set[bool] = set()

    def build_train_loader(self, micro_batch_size: int) -> ClosingLoader:
        self.loaders.append(ClosingLoader(micro_batch_size))
        return self.loaders[-1]

    def compute_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.deterministic_seen.add(torch.are_deterministic_algorithms_enabled())
        return super().compute_loss(model, batch)


def test_deterministic_mode_during_fit_only_and_loader_thread_stopped(tmp_path: Path) -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    short = {"max_steps": 3, "eval_interval": 0, "checkpoint_interval": 0}
    trainer = RecordingTrainer(_config(**short, deterministic=True), tmp_path)
    trainer.fit()
    assert trainer.deterministic_seen == {True}
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    assert not trainer.loaders[0].thread.is_alive()  # the loop closed its loader
    plain = RecordingTrainer(_config(**short), tmp_path / "plain")
    plain.fit()
    assert plain.deterministic_seen == {False}
