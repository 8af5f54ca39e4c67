"""The training loop's state: what changes from step to step, what a checkpoint saves of it, how a run resumes.

The loop keeps a :class:`LoopState` and ends with its :class:`TrainResult`. A run saves, beside its weights and
optimizer state, ``trainer.json`` (step, tokens, best validation loss, the data loader's global position, the world
size and ``max_steps``) and ``rng.json`` (every rank's RNG). Resuming reads them back (:func:`restore_loop_state`);
rank 0 decides which checkpoint (:func:`agreed_resume`), and a run cannot resume past a lowered
``train.max_steps`` (:func:`refuse_past_max_steps`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as torch_dist

from microgpt.common.checkpoint import capture_rng_state, read_meta, restore_rng_state
from microgpt.common.checkpoint_load import load_optimizer_states
from microgpt.common.dist import DistInfo
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.common.loss_eval import Batch
from microgpt.common.train_config import TrainConfig

log = get_logger(__name__)


class BatchSource(Protocol):
    """An endless iterator of training batches that can save and restore its position (exact resume)."""

    def __next__(self) -> Batch:
        """Return the next ``(x, y)`` batch for this rank."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        ...


@dataclass
class TrainResult:
    """What a finished run reports (:meth:`LoopState.result`)."""

    step: int
    tokens: int
    val_loss: float | None
    val_bpb: float | None
    best_val_loss: float | None
    checkpoint: Path | None
    seconds: float

    def summary(self) -> str:
        """One line for a person: final step, validation loss and bits per byte, tokens, time, checkpoint."""
        loss = f"{self.val_loss:.4f}" if self.val_loss is not None else "n/a"
        bpb = f"{self.val_bpb:.4f}" if self.val_bpb is not None else "n/a"
        return (
            f"step {self.step}: val loss {loss} nats/token, {bpb} bits/byte, "
            f"{self.tokens:,} tokens in {self.seconds:.1f}s; checkpoint {self.checkpoint}"
        )


@dataclass
class LoopState:
    """What changes from step to step (and what a checkpoint restores)."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf
    last_val: tuple[float, float | None] | None = None  # (val loss, bits per byte) of the latest evaluation
    last_ckpt: Path | None = None
    pending: dict[str, Any] | None = None  # a logged train record, written with the next step's eval
    loss_value: float = math.nan

    def result(self, seconds: float) -> TrainResult:
        """What the run reports when the loop ends after ``seconds``."""
        return TrainResult(
            step=self.step,
            tokens=self.tokens,
            val_loss=self.last_val[0] if self.last_val is not None else None,
            val_bpb=self.last_val[1] if self.last_val is not None else None,
            best_val_loss=self.best_val if math.isfinite(self.best_val) else None,
            checkpoint=self.last_ckpt,
            seconds=seconds,
        )


def restore_loop_state(
    resume: Path,
    optimizers: list[torch.optim.Optimizer],
    loader: BatchSource,
    config: TrainConfig,
    dist: DistInfo,
) -> LoopState:
    """Load checkpoint ``resume``'s optimizer, loop, data-loader and RNG state (the weights are loaded before).

    Returns:
        The loop state as it was when the checkpoint was saved.

    Raises:
        MicrogptError: When the checkpoint holds no loader position, its position does not fit the loader, or it is
            past ``config.max_steps``.
    """
    meta = read_meta(resume)
    saved = read_json(resume / "trainer.json")
    load_optimizer_states(optimizers, resume)  # a single-folder or a sharded checkpoint, into either mode
    step, tokens = int(saved["step"]), int(saved["tokens"])
    refuse_past_max_steps(resume, step, config.max_steps)
    warn_schedule_change(config, resume, step, saved.get("max_steps"))
    position = saved.get("loader")  # one position for all ranks; older checkpoints hold a list, one per rank
    if not position:
        raise MicrogptError(f"{resume} holds no data-loader position (a soup or an export): it cannot be resumed")
    try:
        loader.load_state_dict(position if isinstance(position, dict) else position[min(dist.rank, len(position) - 1)])
    except MicrogptError as error:
        raise MicrogptError(f"{resume}: {error}") from None
    if saved.get("world_size", dist.world_size) != dist.world_size:
        log.info(
            "resuming on %d process(es) a run saved on %d: same global batch, same data order",
            dist.world_size,
            saved["world_size"],
        )
    # Each rank continues its own RNG stream; a rank the saved run did not have takes rank 0's (only dropout draws
    # from it, and dropout masks cannot match across world sizes anyway).
    rng_states = read_json(resume / "rng.json")
    restore_rng_state(rng_states[dist.rank if dist.rank < len(rng_states) else 0])
    last_val = (float(meta["val_loss"]), meta.get("val_bpb")) if meta.get("val_loss") is not None else None
    log.info("resuming from %s (step %d, %s tokens)", resume, step, f"{tokens:,}")
    best = saved.get("best_val_loss")
    return LoopState(step, tokens, float(best) if best is not None else math.inf, last_val, last_ckpt=resume)


def trainer_state(state: LoopState, loader: BatchSource, config: TrainConfig, dist: DistInfo) -> dict[str, Any]:
    """``trainer.json``'s content for a checkpoint at ``state.step``."""
    return {
        "step": state.step,
        "tokens": state.tokens,
        "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
        "loader": loader.state_dict(),
        "world_size": dist.world_size,
        "max_steps": config.max_steps,  # a resume with another max_steps can say what changes
    }


def gather_rng_states(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective under torchrun: every rank calls it)."""
    rng = capture_rng_state()
    if not dist.is_distributed:
        return [rng]
    gathered: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(gathered, rng)
    return list(gathered)


def warn_schedule_change(config: TrainConfig, resume: Path, step: int, saved_max_steps: Any) -> None:
    """Say what a changed ``train.max_steps`` does to the learning rate (the schedule is a function of it)."""
    if not isinstance(saved_max_steps, int) or saved_max_steps == config.max_steps or step >= config.max_steps:
        return
    before, after = (config.lr_multiplier(step, total) for total in (saved_max_steps, config.max_steps))
    log.warning(
        "train.max_steps changed from %d to %d since %s: the %s schedule is recomputed over %d steps, so the "
        "learning-rate multiplier at step %d moves from %.4g to %.4g and decays to its minimum at step %d",
        saved_max_steps,
        config.max_steps,
        resume.name,
        config.schedule,
        config.max_steps,
        step,
        before,
        after,
        config.max_steps,
    )


def checkpoint_step(step_dir: Path) -> int | None:
    """The step a checkpoint was saved at (its ``meta.json``), or None when it does not say."""
    step = read_meta(step_dir).get("step")
    return step if isinstance(step, int) else None


def refuse_past_max_steps(step_dir: Path | None, step: int | None, max_steps: int) -> None:
    """Refuse to resume a run whose newest checkpoint is already past ``train.max_steps`` (lowering it).

    A run exactly at ``max_steps`` is finished (a rerun does nothing); one past it cannot go back.

    Raises:
        MicrogptError: Naming the checkpoint, its step and the fix.
    """
    if step_dir is None or step is None or step <= max_steps:
        return
    raise MicrogptError(
        f"{step_dir} is at step {step}, past train.max_steps={max_steps}: a run cannot go back; set "
        f"train.max_steps={step} (or more) to resume it, or use another out_dir to train a shorter run"
    )


def agreed_resume(path: str | None, dist: DistInfo) -> Path | None:
    """Rank 0's resume decision, checked on this rank: a rank that cannot see that checkpoint has another out_dir.

    Raises:
        MicrogptError: When this rank does not see the checkpoint rank 0 resumes from.
    """
    if path is None:
        return None
    if not (Path(path) / "meta.json").is_file():
        raise MicrogptError(
            f"rank {dist.rank} cannot see {path}, the checkpoint rank 0 resumes from: every node needs the same "
            "out_dir on a shared file system"
        )
    return Path(path)


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint.

    Raises:
        MicrogptError: When it cannot be read or parsed.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MicrogptError(f"cannot read {path}: {error}") from None
