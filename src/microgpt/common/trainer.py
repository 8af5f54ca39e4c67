"""The one training loop, owned by an abstract base class; pretraining and fine-tuning override small hooks.

The loop, in the order every step runs it (``last_step`` lets the final eval and save reuse the periodic code)::

    for step in start .. max_steps:
        (when due) evaluate → write metrics → sample → checkpoint       # all of it on the last step
        if last_step: stop
        micro-steps: forward, backward (DDP syncs gradients on the last micro-step only)
        clip → set lr → optimizer step → zero_grad → log

In the code: :meth:`Trainer.fit` → ``_fit`` (``train()``): ``_setup`` builds or loads the model
(:mod:`~microgpt.common.model_setup`), the optimizers, the loader and the loop state
(:mod:`~microgpt.common.loop_state`, restored from a checkpoint); then per step ``_periodic`` (the hooks),
``_train_step`` (one optimizer step, :func:`~microgpt.common.optim.optimizer_step`) and ``_after_step`` (count
tokens, log; MFU through ``estimate_mfu``).

Subclasses implement :meth:`Trainer.build_model`, :meth:`Trainer.build_train_loader`, :meth:`Trainer.eval_batches`
and the config hooks; they never copy the loop (torchtitan's ``train()``/``train_step()`` split is the model).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from microgpt.common.checkpoint import CheckpointWriter, latest_checkpoint, step_dir_name
from microgpt.common.device import autocast_dtype, deterministic_algorithms, peak_flops, pick_device
from microgpt.common.dist import DistInfo, barrier, broadcast_object, process_group
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.common.loop_state import (
    BatchSource,
    LoopState,
    TrainResult,
    agreed_resume,
    checkpoint_step,
    gather_rng_states,
    refuse_past_max_steps,
    restore_loop_state,
    trainer_state,
)
from microgpt.common.loss_eval import Batch, evaluate, model_loss
from microgpt.common.metrics import MetricsLog, Throughput
from microgpt.common.model_setup import build_training_model, wrap_for_training
from microgpt.common.optim import build_optimizers, optimizer_step
from microgpt.common.parallel import Mode
from microgpt.common.sharded import save_sharded
from microgpt.common.train_config import TrainConfig

log = get_logger(__name__)

__all__ = [
    "Batch",
    "BatchSource",
    "LoopState",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "checkpoint_step",
    "refuse_past_max_steps",
]


@dataclass
class _Run:
    """What the loop works with, built once by :meth:`Trainer._setup`."""

    model: nn.Module  # wrapped (DDP/FSDP, compiled) for the forward/backward
    raw_model: nn.Module  # for checkpoints and samples
    optimizers: list[torch.optim.Optimizer]
    loader: BatchSource
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None
    writer: CheckpointWriter
    metrics: MetricsLog | None
    throughput: Throughput
    bar: tqdm  # type: ignore[type-arg]
    resume: Path | None
    start_step: int


class NonFiniteLossError(MicrogptError):
    """The training loss became NaN or infinite."""


class Trainer(ABC):
    """The training loop; subclasses provide the model, the batches and a few config facts.

    Args:
        config: The training settings.
        out_dir: Run directory (checkpoints, metrics.jsonl, loss.png).
        seed: Seed of model init and sampling (data order is the loader's own seed).
        dist: This process's place in a torchrun job (default: read from the environment).
    """

    def __init__(self, config: TrainConfig, out_dir: Path, *, seed: int = 1337, dist: DistInfo | None = None) -> None:
        """Store the settings; nothing heavy happens until :meth:`fit`."""
        self.config = config
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.dist = dist or DistInfo.from_env()
        self.device = pick_device(config.device, self.dist.local_rank)
        self.grad_accum = config.grad_accum_steps(self.dist.world_size)  # validates the batch split
        self.micro_batch = config.micro_batch(self.dist.world_size)
        self.parent: str | None = None  # checkpoint id this run started from (fine-tuning sets it)
        self.mode: Mode = "single"  # single, ddp or fsdp: train.parallel resolved when the model is built

    # ---- hooks ------------------------------------------------------------------------------------------------

    @abstractmethod
    def build_model(self) -> nn.Module:
        """Return the freshly initialised model (on the CPU; the trainer moves it)."""

    @abstractmethod
    def build_train_loader(self, micro_batch_size: int) -> BatchSource:
        """Return this rank's endless training batches of ``micro_batch_size`` sequences."""

    @abstractmethod
    def eval_batches(self, max_batches: int | None) -> Iterable[Batch]:
        """Yield this rank's validation batches (all of them when ``max_batches`` is None)."""

    @abstractmethod
    def model_config_dict(self) -> dict[str, Any]:
        """The model config as JSON data (saved with every checkpoint)."""

    @abstractmethod
    def run_config_yaml(self) -> str:
        """The whole run config as YAML text (saved with every checkpoint)."""

    def compute_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean loss of one micro-batch (default: the model's own ``(logits, loss)`` with targets)."""
        return model_loss(model, batch)

    def bits_per_byte(self, loss: float) -> float | None:
        """Convert a mean validation loss (nats/token) to bits per byte, when the data knows its bytes."""
        return None

    def sample_text(self, model: nn.Module, prompt: str, max_new_tokens: int) -> str | None:
        """Generate a short sample to log (default: none)."""
        return None

    def checkpoint_meta(self) -> dict[str, Any]:
        """Extra fields for each checkpoint's ``meta.json`` (e.g. the tokenizer fingerprint)."""
        return {}

    def write_checkpoint_extra(self, directory: Path) -> None:
        """Add files to a checkpoint being written (e.g. the tokenizer); the base adds none."""
        del directory

    def flops_per_token(self, model: nn.Module) -> float | None:
        """Training FLOPs per token of ``model`` for MFU (default: the model's ``flops_per_token()``, if any)."""
        method = getattr(model, "flops_per_token", None)
        return float(method()) if callable(method) else None

    def init_weights_from(self, model: nn.Module) -> None:
        """Load starting weights into a fresh model when not resuming (fine-tuning loads its parent's).

        The base keeps the model's own initialisation.
        """
        del model

    # ---- the loop ---------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train from scratch, or resume from the newest complete checkpoint in ``out_dir``.

        Returns:
            The final step, tokens, validation loss and bits per byte, and the last checkpoint.

        Raises:
            NonFiniteLossError: When the loss becomes NaN/inf (the last good checkpoint is kept).
            MicrogptError: For bad input (corrupt checkpoint, mismatched weights, full disk).
        """
        cfg = self.config
        started = time.perf_counter()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        with deterministic_algorithms(cfg.deterministic, self.device), process_group(self.dist, self.device):
            return self._fit(started)

    def _fit(self, started: float) -> TrainResult:
        """``train()``: set up (or resume), then per step the periodic work and one :meth:`_train_step`."""
        run, state = self._setup()
        try:
            while True:
                last_step = state.step == self.config.max_steps
                self._periodic(run, state, last_step)  # evaluate → metrics → sample → checkpoint, when due
                if last_step:
                    break
                loss_sum, step_tokens = self._train_step(run, state.step)
                self._after_step(run, state, loss_sum, step_tokens)
        finally:
            close = getattr(run.loader, "close", None)
            if callable(close):
                close()  # stop a prefetch thread
            run.bar.close()
            if run.metrics is not None:
                run.metrics.close()
        return state.result(time.perf_counter() - started)

    def _setup(self) -> tuple[_Run, LoopState]:
        """Build (or restore) the model, optimizers, loader and loop state; open the metrics and the progress bar."""
        cfg, dist, device = self.config, self.dist, self.device
        ckpt_root = self.out_dir / "checkpoints"
        # Rank 0 decides whether and where to resume, so all ranks agree even if their views of out_dir differ.
        found = latest_checkpoint(ckpt_root) if dist.is_main else None
        resume = agreed_resume(broadcast_object(str(found) if found is not None else None), dist)
        raw_model, self.mode = build_training_model(
            self.build_model,
            self.init_weights_from,
            config=cfg,
            dist=dist,
            device=device,
            seed=self.seed,
            resume=resume,
        )
        if dist.is_distributed:
            torch.manual_seed(self.seed + dist.rank)  # dropout masks differ per rank
        optimizers = build_optimizers(
            raw_model,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            betas=(cfg.beta1, cfg.beta2),
            muon_lr=cfg.muon_lr,
            muon_momentum=cfg.muon_momentum,
            muon_weight_decay=cfg.muon_weight_decay,
        )
        loader = self.build_train_loader(self.micro_batch)
        state = LoopState() if resume is None else restore_loop_state(resume, optimizers, loader, cfg, dist)
        model = wrap_for_training(raw_model, self.mode, config=cfg, dist=dist, device=device)
        dtype = autocast_dtype(device, cfg.precision)
        metrics = MetricsLog(self.out_dir, cfg.metrics_backends) if dist.is_main else None
        if metrics is not None and resume is not None:
            metrics.truncate_after(state.step)
        log.info(
            "training %s parameters on %s (%s), %d rank(s), global batch %d = %d micro-step(s) × %d × %d rank(s)",
            f"{sum(p.numel() for p in raw_model.parameters()):,}", device, str(dtype).replace("torch.", ""),
            dist.world_size, cfg.batch_size, self.grad_accum, self.micro_batch, dist.world_size,
        )  # fmt: skip
        run = _Run(
            model=model,
            raw_model=raw_model,
            optimizers=optimizers,
            loader=loader,
            dtype=dtype,
            scaler=torch.amp.GradScaler(device.type) if dtype is torch.float16 else None,
            writer=CheckpointWriter(ckpt_root, keep_last=cfg.keep_last, keep_best=cfg.keep_best),
            metrics=metrics,
            throughput=Throughput(
                dist.world_size, self.flops_per_token(raw_model), cfg.peak_flops or peak_flops(device, dtype)
            ),
            bar=tqdm(
                total=cfg.max_steps,
                initial=state.step,
                disable=not (dist.is_main and cfg.progress),
                unit="step",
                leave=True,
            ),
            resume=resume,
            start_step=state.step,
        )
        return run, state

    def _periodic(self, run: _Run, state: LoopState, last_step: bool) -> None:
        """The work due at this step, all of it on the last: evaluate, write metrics, sample, checkpoint."""
        cfg, step = self.config, state.step
        resumed_here = run.resume is not None and step == run.start_step  # periodic work was done before the save
        record, state.pending = state.pending or {}, None
        evaluated = False
        with run.throughput.paused():  # evaluation, samples and checkpoints stay out of tokens/s
            if not resumed_here and (last_step or _due(step, cfg.eval_interval)):
                full = last_step and cfg.final_eval_full
                val_loss = self._evaluate(run.model, None if full or cfg.eval_batches == 0 else cfg.eval_batches)
                val_bpb = self.bits_per_byte(val_loss)
                state.last_val, evaluated = (val_loss, val_bpb), True
                state.best_val = min(state.best_val, val_loss)
                record.update({"step": step, "tokens": state.tokens, "val_loss": val_loss, "val_bpb": val_bpb})
                bpb_text = f", {val_bpb:.4f} bits/byte" if val_bpb is not None else ""
                log.info("step %d: val loss %.4f%s", step, val_loss, bpb_text)
            if run.metrics is not None and record:
                run.metrics.write(record)
                if evaluated and cfg.plot:
                    run.metrics.plot()
            if not resumed_here and cfg.sample_tokens and (last_step or _due(step, cfg.sample_interval)):
                self._log_sample(run.raw_model)
            if not resumed_here and step > 0 and (last_step or _due(step, cfg.checkpoint_interval)):
                state.last_ckpt = self._save(run, state, state.last_val if evaluated else None)

    def _after_step(self, run: _Run, state: LoopState, loss_sum: torch.Tensor, step_tokens: int) -> None:
        """Count the step; sync the loss only when it is logged or a save/eval follows (a GPU sync costs)."""
        cfg = self.config
        state.tokens += step_tokens
        run.throughput.add(step_tokens)
        if state.step == run.start_step:  # the first step compiles (on CUDA): start the clock after it
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            run.throughput.restart()
        state.step += 1
        step = state.step
        run.bar.update(1)
        log_due = step % cfg.log_interval == 0
        next_saves = step == cfg.max_steps or _due(step, cfg.checkpoint_interval) or _due(step, cfg.eval_interval)
        if log_due or next_saves:
            state.loss_value = self._mean_across_ranks(loss_sum / self.grad_accum)
            if not math.isfinite(state.loss_value):
                kept = (
                    f"the last good checkpoint is {state.last_ckpt}" if state.last_ckpt else "no checkpoint was saved"
                )
                raise NonFiniteLossError(
                    f"training loss is {state.loss_value} at step {step}; stopped ({kept}). "
                    "Lower train.lr or raise train.warmup_steps."
                )
        if log_due:
            rates = run.throughput.record()  # empty for an interval of only the first step
            state.pending = {
                "step": step,
                "tokens": state.tokens,
                "train_loss": state.loss_value,
                "lr": run.optimizers[0].param_groups[0]["lr"],
                **rates,
            }
            rate = rates.get("tokens_per_sec_per_device")
            run.bar.set_postfix(loss=f"{state.loss_value:.4f}", tok_s=f"{rate or 0:,.0f}", refresh=False)

    # ---- pieces of the loop -----------------------------------------------------------------------------------

    def _train_step(self, run: _Run, step: int) -> tuple[torch.Tensor, int]:
        """One optimizer step: micro-steps with accumulation → clip → set lr → step → zero_grad.

        DDP syncs gradients on the last micro-step only. The loss stays on the device (no host sync here).

        Returns:
            ``(sum of the micro-steps' losses, tokens this step consumed across all ranks)``.
        """
        cfg, device, model, scaler = self.config, self.device, run.model, run.scaler
        loss_sum = torch.zeros((), device=device)
        step_tokens = 0
        for micro_step in range(self.grad_accum):
            x, y = next(run.loader)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = micro_step == self.grad_accum - 1
            no_sync = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else None
            with no_sync if no_sync is not None and not sync else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=run.dtype, enabled=run.dtype is not torch.float32):
                    loss = self.compute_loss(model, (x, y))
                scaled = loss / self.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += loss.detach()
            step_tokens += x.numel() * self.dist.world_size
        optimizer_step(
            run.optimizers,
            run.raw_model.parameters(),
            lr_multiplier=cfg.lr_multiplier(step),
            grad_clip=cfg.grad_clip,
            scaler=scaler,
        )
        return loss_sum, step_tokens

    def _mean_across_ranks(self, value: torch.Tensor) -> float:
        if self.dist.is_distributed:
            value = value.clone()
            torch_dist.all_reduce(value)  # SUM: gloo has no AVG
            value /= self.dist.world_size
        return float(value.item())

    def _evaluate(self, model: nn.Module, max_batches: int | None) -> float:
        """Mean loss per target token over the validation batches, across all ranks."""
        return evaluate(
            model,
            self.eval_batches(max_batches),
            loss_fn=self.compute_loss,
            device=self.device,
            dtype=autocast_dtype(self.device, self.config.precision),
            all_ranks=self.dist.is_distributed,
            name="the validation split",
        ).loss

    def _log_sample(self, model: nn.Module) -> None:
        if not self.dist.is_main and self.mode != "fsdp":  # under FSDP every rank runs the forwards (they gather)
            return
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG (exact resume)
                text = self.sample_text(model, self.config.sample_prompt, self.config.sample_tokens)
        finally:
            model.train()
        if text is not None and self.dist.is_main:
            log.info("sample: %r", text)

    def _save(self, run: _Run, state: LoopState, val: tuple[float, float | None] | None) -> Path:
        """Checkpoint step ``state.step`` (every rank calls it: the RNG states are gathered; FSDP ranks write)."""
        rng_states = gather_rng_states(self.dist)  # every rank's RNG travels with the checkpoint
        path = run.writer.root / step_dir_name(state.step)
        if self.dist.is_main or self.mode == "fsdp":  # FSDP: every rank writes its own shards
            trainer_json = trainer_state(state, run.loader, self.config, self.dist)
            meta = {
                "tokens": state.tokens,
                "val_loss": val[0] if val else None,
                "val_bpb": val[1] if val else None,
                "best_val_loss": trainer_json["best_val_loss"],
                "parent": self.parent,
                **self.checkpoint_meta(),
            }
            save: Callable[..., Path] = run.writer.save
            if self.mode == "fsdp":
                save = functools.partial(save_sharded, run.writer.root, dist=self.dist)
            path = save(
                state.step,
                model=run.raw_model,
                optimizers=run.optimizers,
                model_config=self.model_config_dict(),
                run_config_yaml=self.run_config_yaml(),
                trainer_state=trainer_json,
                rng_states=rng_states,
                meta=meta,
                write_extra=self.write_checkpoint_extra,
            )
            if self.dist.is_main:
                if self.mode == "fsdp":
                    run.writer.prune()
                log.info("saved %s", path)
        barrier()
        return path


def _due(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0
