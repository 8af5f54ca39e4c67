"""The base trainer's loop on a tiny GPT: learning, metrics, exact resume after a crash, NaN stop, accumulation."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from microgpt.common.checkpoint import list_checkpoints, read_meta
from microgpt.common.checkpoint_load import load_weights
from microgpt.common.errors import MicrogptError
from microgpt.common.metrics import read_metrics
from microgpt.common.schedule import lr_multiplier
from microgpt.common.trainer import Batch, NonFiniteLossError, TrainConfig, Trainer
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT

VOCAB, BLOCK = 32, 16
# A repeating pattern with noise: learnable, so the loss must fall well under ln(VOCAB).
_g = torch.Generator().manual_seed(0)
CORPUS = (torch.arange(4000) * 7 % VOCAB + (torch.rand(4000, generator=_g) < 0.1).long()) % VOCAB


class Crash(Exception):
    pass


class ListLoader:
    """Random windows of CORPUS from its own generator; the position is (seed, draws)."""

    def __init__(self, batch: int, seed: int = 0, crash_after: int | None = None) -> None:
        self.batch, self.seed, self.draws, self.crash_after = batch, seed, 0, crash_after
        self.gen = torch.Generator().manual_seed(seed)

    def __next__(self) -> Batch:
        if self.crash_after is not None and self.draws >= self.crash_after:
            raise Crash
        self.draws += 1
        starts = torch.randint(0, len(CORPUS) - BLOCK - 1, (self.batch,), generator=self.gen)
        x = torch.stack([CORPUS[s : s + BLOCK] for s in starts.tolist()])
        y = torch.stack([CORPUS[s + 1 : s + BLOCK + 1] for s in starts.tolist()])
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.draws = state["seed"], 0
        self.gen = torch.Generator().manual_seed(self.seed)
        for _ in range(state["draws"]):
            self.crash_after, saved = None, self.crash_after
            next(self)
            self.crash_after = saved


class TinyTrainer(Trainer):
    def __init__(self, config: TrainConfig, out_dir: Path, *, crash_after: int | None = None, **model: Any) -> None:
        super().__init__(config, out_dir, seed=3)
        self.model_config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=VOCAB, **model)
        self.crash_after = crash_after
        self.nan_at: int | None = None
        self.calls = 0

    def build_model(self) -> nn.Module:
        return GPT(self.model_config)

    def build_train_loader(self, micro_batch_size: int) -> ListLoader:
        return ListLoader(micro_batch_size, crash_after=self.crash_after)

    def eval_batches(self, max_batches: int | None) -> Iterable[Batch]:
        x = CORPUS[3000 : 3000 + 4 * BLOCK].view(4, BLOCK)
        y = CORPUS[3001 : 3001 + 4 * BLOCK].view(4, BLOCK)
        return [(x, y)]

    def compute_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        loss = super().compute_loss(model, batch)
        if model.training:
            self.calls += 1
            if self.nan_at is not None and self.calls >= self.nan_at:
                return loss * math.nan
        return loss

    def model_config_dict(self) -> dict[str, Any]:
        return self.model_config.to_dict()

    def run_config_yaml(self) -> str:
        return "model: tiny\n"

    def bits_per_byte(self, loss: float) -> float | None:
        return loss / math.log(2)


def _config(**overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "max_steps": 12,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_steps": 2,
        "eval_interval": 4,
        "checkpoint_interval": 4,
        "log_interval": 1,
        "keep_last": 0,
        "progress": False,
        "plot": False,
        "sample_tokens": 0,
        "device": "cpu",
    }
    base.update(overrides)
    return TrainConfig(**base)


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in read_metrics(out_dir / "metrics.jsonl") if "train_loss" in r]


@pytest.mark.slow
def test_trains_logs_and_checkpoints(tmp_path: Path) -> None:
    result = TinyTrainer(_config(max_steps=40, plot=True, eval_interval=20, checkpoint_interval=20), tmp_path).fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(41))
    assert {"step", "tokens", "train_loss", "lr"} <= set(records[1])
    assert "tokens_per_sec" not in records[1]  # step 1 alone (torch.compile's step on CUDA) is never timed
    assert {"tokens_per_sec", "tokens_per_sec_per_device"} <= set(records[2]) and "mfu" not in records[2]  # CPU
    assert records[0]["val_loss"] == pytest.approx(math.log(VOCAB), abs=0.3)  # loss ≈ ln(vocab) at init
    assert records[-1]["val_loss"] < 2.2  # learned the pattern (ln 32 = 3.47)
    assert records[-1]["val_bpb"] == pytest.approx(records[-1]["val_loss"] / math.log(2))
    assert records[-1]["tokens"] == 40 * 4 * BLOCK
    assert result.step == 40 and result.checkpoint == tmp_path / "checkpoints" / "step-0000040"
    assert result.val_loss == records[-1]["val_loss"]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "step-0000040"
    names = set(load_weights(result.checkpoint))
    assert "lm_head.weight" in names and not any(n.startswith(("module.", "_orig_mod.")) for n in names)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    lr = [r["lr"] for r in records if "lr" in r]
    assert lr[0] == pytest.approx(1e-2 * lr_multiplier(0, max_steps=40, warmup_steps=2))


def test_resume_after_crash_is_bitwise_identical(tmp_path: Path) -> None:
    TinyTrainer(_config(), tmp_path / "straight").fit()
    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        TinyTrainer(_config(), crashed, crash_after=6).fit()  # dies during step 7, last checkpoint at step 4
    assert [p.name for p in list_checkpoints(crashed / "checkpoints")] == ["step-0000004"]
    TinyTrainer(_config(), crashed).fit()
    straight = _losses(tmp_path / "straight")
    assert len(straight) == 12
    assert _losses(crashed) == straight  # exact float equality, step for step
    meta = read_meta(crashed / "checkpoints" / "step-0000012")
    assert meta["step"] == 12 and meta["tokens"] == 12 * 4 * BLOCK


def test_rerunning_a_finished_run_does_nothing(tmp_path: Path) -> None:
    first = TinyTrainer(_config(max_steps=4), tmp_path).fit()
    lines = (tmp_path / "metrics.jsonl").read_text()
    again = TinyTrainer(_config(max_steps=4), tmp_path).fit()
    assert (tmp_path / "metrics.jsonl").read_text() == lines
    assert again.step == 4 and again.val_loss == first.val_loss


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    TinyTrainer(_config(max_steps=3, micro_batch_size=2), tmp_path / "accum").fit()
    TinyTrainer(_config(max_steps=3), tmp_path / "big").fit()
    accum, big = _losses(tmp_path / "accum"), _losses(tmp_path / "big")
    # ListLoader draws the same windows either way; accumulation only changes summation order.
    assert [s for s, _ in accum] == [s for s, _ in big]
    for (_, a), (_, b) in zip(accum, big, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = TinyTrainer(_config(), tmp_path)
    trainer.nan_at = 6
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 6.*step-0000004"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-0000004"]
    weights = load_weights(tmp_path / "checkpoints" / "step-0000004")["wte.weight"]
    assert bool(torch.isfinite(weights).all())


def test_muon_trains_and_resumes(tmp_path: Path) -> None:
    cfg = _config(optimizer="muon", max_steps=8, lr=3e-3)
    TinyTrainer(cfg, tmp_path / "a").fit()
    with pytest.raises(Crash):
        TinyTrainer(cfg, tmp_path / "b", crash_after=5).fit()
    TinyTrainer(cfg, tmp_path / "b").fit()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    optimizer_json = json.loads((tmp_path / "b" / "checkpoints" / "step-0000008" / "optimizer.json").read_text())
    assert [o["type"] for o in optimizer_json] == ["AdamW", "Muon"]
    losses = [v for _, v in _losses(tmp_path / "a")]
    assert losses[-1] < losses[0]


def test_batch_must_split_over_ranks() -> None:
    with pytest.raises(ValueError, match="batch_size must be a multiple of micro_batch_size"):
        _config(batch_size=6, micro_batch_size=4)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_resume_with_a_lower_max_steps_refuses_at_once(tmp_path: Path) -> None:
    TinyTrainer(_config(max_steps=4), tmp_path).fit()
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(MicrogptError, match=r"step-0000004 is at step 4, past train.max_steps=2.*train.max_steps=4"):
        TinyTrainer(_config(max_steps=2), tmp_path).fit()
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # metrics, checkpoints: nothing trained, nothing rewritten


def test_raised_max_steps_says_what_the_schedule_does(tmp_path: Path) -> None:
    TinyTrainer(_config(max_steps=4), tmp_path).fit()
    records = _Records()
    logging.getLogger("microgpt").addHandler(records)
    try:
        result = TinyTrainer(_config(max_steps=8), tmp_path).fit()
    finally:
        logging.getLogger("microgpt").removeHandler(records)
    assert result.step == 8
    was = lr_multiplier(4, max_steps=4, warmup_steps=2)
    now = lr_multiplier(4, max_steps=8, warmup_steps=2)
    assert was == pytest.approx(0.1) and now > 0.5  # the decay restarts stretched: the rate jumps back up
    said = [m for m in records.messages if "train.max_steps changed from 4 to 8" in m]
    assert len(said) == 1 and f"from {was:.4g} to {now:.4g}" in said[0], records.messages
    step5 = next(r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 5 and "lr" in r)
    assert step5["lr"] == pytest.approx(1e-2 * now)  # and the loop does what the warning says
