"""The one training loop, owned by an abstract base class; pretraining and fine-tuning override small hooks.

The loop, in the order every step runs it (``last_step`` lets the final eval and save reuse the periodic code)::

    for step in start .. max_steps:
        (when due) evaluate → write metrics → sample → checkpoint       # all of it on the last step
        if last_step: stop
        micro-steps: forward, backward (DDP syncs gradients on the last micro-step only)
        clip → set lr → optimizer step → zero_grad → log

In the code: :meth:`Trainer.fit` → ``_fit`` (``train()``): ``_setup`` builds or restores the model, optimizers,
loader and the loop state (``_LoopState``, restored from a checkpoint); then per step ``_periodic`` (the hooks),
``_train_step`` (one optimizer step) and ``_after_step`` (count tokens, log; MFU through ``estimate_mfu``).

Subclasses implement :meth:`Trainer.build_model`, :meth:`Trainer.build_train_loader`, :meth:`Trainer.eval_batches`
and the config hooks; they never copy the loop (torchtitan's ``train()``/``train_step()`` split is the model).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from microgpt.common.checkpoint import (
    CheckpointWriter,
    capture_rng_state,
    latest_checkpoint,
    read_meta,
    restore_rng_state,
    step_dir_name,
)
from microgpt.common.device import autocast_dtype, peak_flops, pick_device, seed_everything
from microgpt.common.dist import DistInfo, barrier, broadcast_object, process_group
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.common.loss_eval import Batch, evaluate, model_loss
from microgpt.common.metrics import MetricsLog, Throughput
from microgpt.common.optim import build_optimizers, set_learning_rate
from microgpt.common.parallel import (
    Mode,
    apply_activation_checkpointing,
    choose_mode,
    clip_grad_norm,
    materialize,
    shard_model,
    transformer_blocks,
)
from microgpt.common.schedule import lr_multiplier
from microgpt.common.sharded import load_model_state, load_optimizer_states, save_sharded
from microgpt.common.train_config import TrainConfig

log = get_logger(__name__)

__all__ = [
    "Batch",
    "BatchSource",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "checkpoint_step",
    "refuse_past_max_steps",
]


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
    """What a finished run reports."""

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
class _LoopState:
    """What changes from step to step (and what a checkpoint restores)."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf
    last_val: tuple[float, float | None] | None = None  # (val loss, bits per byte) of the latest evaluation
    last_ckpt: Path | None = None
    pending: dict[str, Any] | None = None  # a logged train record, written with the next step's eval
    loss_value: float = math.nan


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
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:  # GPU kernels with atomics (e.g. index_add in backward) otherwise vary run to run
            if self.device.type == "cuda":  # cuBLAS needs a fixed workspace to be deterministic
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        try:
            with process_group(self.dist, self.device):
                return self._fit(started)
        finally:
            torch.use_deterministic_algorithms(was_deterministic)

    def _fit(self, started: float) -> TrainResult:
        """``train()``: set up (or resume), then per step the periodic work and one :meth:`_train_step`."""
        run, state = self._setup()
        try:
            while True:
                last_step = state.step == self.config.max_steps
                self._periodic(run, state, last_step)  # evaluate → metrics → sample → checkpoint, when due
                if last_step:
                    break
                loss_sum, step_tokens = self._train_step(
                    run.model, run.raw_model, run.optimizers, run.loader, state.step, run.dtype, run.scaler
                )
                self._after_step(run, state, loss_sum, step_tokens)
        finally:
            close = getattr(run.loader, "close", None)
            if callable(close):
                close()  # stop a prefetch thread
            run.bar.close()
            if run.metrics is not None:
                run.metrics.close()
        return TrainResult(
            step=state.step,
            tokens=state.tokens,
            val_loss=state.last_val[0] if state.last_val is not None else None,
            val_bpb=state.last_val[1] if state.last_val is not None else None,
            best_val_loss=state.best_val if math.isfinite(state.best_val) else None,
            checkpoint=state.last_ckpt,
            seconds=time.perf_counter() - started,
        )

    def _setup(self) -> tuple[_Run, _LoopState]:
        """Build (or restore) the model, optimizers, loader and loop state; open the metrics and the progress bar."""
        cfg, dist, device = self.config, self.dist, self.device
        ckpt_root = self.out_dir / "checkpoints"
        # Rank 0 decides whether and where to resume, so all ranks agree even if their views of out_dir differ.
        found = latest_checkpoint(ckpt_root) if dist.is_main else None
        resume = _agreed_resume(broadcast_object(str(found) if found is not None else None), dist)
        raw_model = self._build(resume)
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
        state = _LoopState(last_ckpt=resume)
        if resume is not None:
            state.step, state.tokens, state.best_val, state.last_val = self._restore(resume, optimizers, loader)
            refuse_past_max_steps(resume, state.step, cfg.max_steps)
        model = self._wrap(raw_model)
        dtype = autocast_dtype(device, cfg.precision)
        metrics = MetricsLog(self.out_dir, cfg.metrics_backends) if dist.is_main else None
        if metrics is not None and resume is not None:
            metrics.truncate_after(state.step)
        if resume is not None:
            # Each rank continues its own RNG stream; a rank the saved run did not have takes rank 0's (only dropout
            # draws from it, and dropout masks cannot match across world sizes anyway).
            rng_states = _read_json(resume / "rng.json")
            restore_rng_state(rng_states[dist.rank if dist.rank < len(rng_states) else 0])
        n_params = sum(p.numel() for p in raw_model.parameters())
        log.info(
            "training %s parameters on %s (%s), %d rank(s), global batch %d = %d micro-step(s) × %d × %d rank(s)",
            f"{n_params:,}",
            device,
            str(dtype).replace("torch.", ""),
            dist.world_size,
            cfg.batch_size,
            self.grad_accum,
            self.micro_batch,
            dist.world_size,
        )
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

    def _periodic(self, run: _Run, state: _LoopState, last_step: bool) -> None:
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
                val = state.last_val if evaluated else None
                state.last_ckpt = self._save(
                    run.writer, step, state.tokens, run.raw_model, run.optimizers, run.loader, state.best_val, val
                )

    def _after_step(self, run: _Run, state: _LoopState, loss_sum: torch.Tensor, step_tokens: int) -> None:
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

    def _restore(
        self, resume: Path, optimizers: list[torch.optim.Optimizer], loader: BatchSource
    ) -> tuple[int, int, float, tuple[float, float | None] | None]:
        """Load checkpoint ``resume``'s optimizer, loop and data-loader state (the weights are loaded before).

        Returns:
            ``(step, tokens, best_val_loss, (val_loss, val_bpb) or None)`` as they were when it was saved.
        """
        meta = read_meta(resume)
        state = _read_json(resume / "trainer.json")
        load_optimizer_states(optimizers, resume)  # a single-folder or a sharded checkpoint, into either mode
        step, tokens = int(state["step"]), int(state["tokens"])
        self._warn_schedule_change(resume, step, state.get("max_steps"))
        saved = state.get("loader")  # one position for all ranks; older checkpoints hold a list, one per rank
        if not saved:
            raise MicrogptError(f"{resume} holds no data-loader position (a soup or an export): it cannot be resumed")
        try:
            loader.load_state_dict(saved if isinstance(saved, dict) else saved[min(self.dist.rank, len(saved) - 1)])
        except MicrogptError as error:
            raise MicrogptError(f"{resume}: {error}") from None
        if state.get("world_size", self.dist.world_size) != self.dist.world_size:
            log.info(
                "resuming on %d process(es) a run saved on %d: same global batch, same data order",
                self.dist.world_size,
                state["world_size"],
            )
        last_val = (float(meta["val_loss"]), meta.get("val_bpb")) if meta.get("val_loss") is not None else None
        log.info("resuming from %s (step %d, %s tokens)", resume, step, f"{tokens:,}")
        return step, tokens, float(state.get("best_val_loss") or math.inf), last_val

    def _warn_schedule_change(self, resume: Path, step: int, saved_max_steps: Any) -> None:
        """Say what a changed ``train.max_steps`` does to the learning rate (the schedule is a function of it)."""
        cfg = self.config
        if not isinstance(saved_max_steps, int) or saved_max_steps == cfg.max_steps or step >= cfg.max_steps:
            return
        before, after = (
            lr_multiplier(
                step,
                max_steps=total,
                warmup_steps=cfg.warmup_steps,
                schedule=cfg.schedule,
                min_lr_ratio=cfg.min_lr_ratio,
                decay_fraction=cfg.decay_fraction,
            )
            for total in (saved_max_steps, cfg.max_steps)
        )
        log.warning(
            "train.max_steps changed from %d to %d since %s: the %s schedule is recomputed over %d steps, so the "
            "learning-rate multiplier at step %d moves from %.4g to %.4g and decays to its minimum at step %d",
            saved_max_steps,
            cfg.max_steps,
            resume.name,
            cfg.schedule,
            cfg.max_steps,
            step,
            before,
            after,
            cfg.max_steps,
        )

    def _build(self, resume: Path | None) -> nn.Module:
        """The model on the training device: initialised, or loaded from ``resume``; sharded under FSDP.

        ``train.parallel`` is resolved first (``auto`` on GPUs counts the parameters of a model built on the meta
        device). Under FSDP the model is built on the meta device, sharded and materialised shard by shard (see
        :mod:`microgpt.common.parallel`); otherwise it is built on the CPU, as before, and moved. Both give the same
        weights from the same seed (identical on every rank; DDP also broadcasts rank 0's).
        """
        cfg, dist, device = self.config, self.dist, self.device

        def count_params() -> int:
            with torch.device("meta"):
                return sum(p.numel() for p in self.build_model().parameters())

        self.mode = choose_mode(cfg.parallel, dist.world_size, count_params, device)
        seed_everything(self.seed)
        if self.mode == "fsdp":
            with torch.device("meta"):
                model = self.build_model()
            blocks = transformer_blocks(model)
            apply_activation_checkpointing(blocks, cfg.activation_checkpointing)
            shard_model(model, blocks, device, compile_blocks=self._compile_enabled())
            materialize(model, device, self.seed)
            log.info("FSDP2: %d block(s) and the root sharded over %d ranks", len(blocks), dist.world_size)
        else:
            model = self.build_model()
            apply_activation_checkpointing(transformer_blocks(model), cfg.activation_checkpointing)
        if resume is not None:
            load_model_state(model, resume)  # a single-folder or a sharded checkpoint, into either mode
        else:
            self.init_weights_from(model)
        return model if self.mode == "fsdp" else model.to(device)

    def _compile_enabled(self) -> bool:
        return self.config.compile if self.config.compile is not None else self.device.type == "cuda"

    def _wrap(self, raw_model: nn.Module) -> nn.Module:
        """The module the loop calls: compiled (by default on CUDA only) and, with several ranks, DDP-wrapped.

        Under FSDP the model was sharded in place by :meth:`_build` (its blocks compiled there): it is returned as is.
        Checkpoints always save ``raw_model``, so no ``_orig_mod.``/``module.`` prefix reaches a weight name.
        """
        device = self.device
        model = raw_model
        if self.mode == "fsdp":
            return model
        if self._compile_enabled():
            model = torch.compile(model)  # type: ignore[assignment]  # returns a callable wrapper of the module
        if self.dist.is_distributed:
            ids = [device.index] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def _train_step(
        self,
        model: nn.Module,
        raw_model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        loader: BatchSource,
        step: int,
        dtype: torch.dtype,
        scaler: torch.amp.GradScaler | None,
    ) -> tuple[torch.Tensor, int]:
        """One optimizer step: micro-steps with accumulation → clip → set lr → step → zero_grad.

        DDP syncs gradients on the last micro-step only. The loss stays on the device (no host sync here).

        Returns:
            ``(sum of the micro-steps' losses, tokens this step consumed across all ranks)``.
        """
        cfg, device = self.config, self.device
        loss_sum = torch.zeros((), device=device)
        step_tokens = 0
        for micro_step in range(self.grad_accum):
            x, y = next(loader)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = micro_step == self.grad_accum - 1
            no_sync = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else None
            with no_sync if no_sync is not None and not sync else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not torch.float32):
                    loss = self.compute_loss(model, (x, y))
                scaled = loss / self.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += loss.detach()
            step_tokens += x.numel() * self.dist.world_size
        if scaler is not None:
            for opt in optimizers:
                scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            clip_grad_norm(raw_model.parameters(), cfg.grad_clip)
        multiplier = lr_multiplier(
            step,
            max_steps=cfg.max_steps,
            warmup_steps=cfg.warmup_steps,
            schedule=cfg.schedule,
            min_lr_ratio=cfg.min_lr_ratio,
            decay_fraction=cfg.decay_fraction,
        )
        set_learning_rate(optimizers, multiplier)
        for opt in optimizers:
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()
        if scaler is not None:
            scaler.update()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
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

    def _save(
        self,
        writer: CheckpointWriter,
        step: int,
        tokens: int,
        raw_model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        loader: BatchSource,
        best_val: float,
        val: tuple[float, float | None] | None,
    ) -> Path:
        rng = capture_rng_state()
        rng_states = [rng]
        if self.dist.is_distributed:  # every rank's RNG travels with the checkpoint (the data position is global)
            gathered: list[Any] = [None] * self.dist.world_size
            torch_dist.all_gather_object(gathered, rng)
            rng_states = list(gathered)
        path = writer.root / step_dir_name(step)
        if self.dist.is_main or self.mode == "fsdp":  # FSDP: every rank writes its own shards
            trainer_state = {
                "step": step,
                "tokens": tokens,
                "best_val_loss": best_val if math.isfinite(best_val) else None,
                "loader": loader.state_dict(),
                "world_size": self.dist.world_size,
                "max_steps": self.config.max_steps,  # a resume with another max_steps can say what changes
            }
            meta = {
                "tokens": tokens,
                "val_loss": val[0] if val else None,
                "val_bpb": val[1] if val else None,
                "best_val_loss": trainer_state["best_val_loss"],
                "parent": self.parent,
                **self.checkpoint_meta(),
            }
            save: Callable[..., Path] = writer.save
            if self.mode == "fsdp":
                save = functools.partial(save_sharded, writer.root, dist=self.dist)
            path = save(
                step,
                model=raw_model,
                optimizers=optimizers,
                model_config=self.model_config_dict(),
                run_config_yaml=self.run_config_yaml(),
                trainer_state=trainer_state,
                rng_states=rng_states,
                meta=meta,
                write_extra=self.write_checkpoint_extra,
            )
            if self.dist.is_main:
                if self.mode == "fsdp":
                    writer.prune()
                log.info("saved %s", path)
        barrier()
        return path


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


def _agreed_resume(path: str | None, dist: DistInfo) -> Path | None:
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


def _due(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MicrogptError(f"cannot read {path}: {error}") from None
