"""The training settings shared by every trainer (pretraining, fine-tuning): one validated, frozen config."""

from __future__ import annotations

from pydantic import Field, model_validator

from microgpt.common.config import ConfigBase
from microgpt.common.device import Precision
from microgpt.common.errors import ConfigError
from microgpt.common.metrics import Backend
from microgpt.common.optim import OptimizerName
from microgpt.common.parallel import CheckpointingName, ParallelName
from microgpt.common.schedule import ScheduleName, lr_multiplier


class TrainConfig(ConfigBase):
    """How to train: batch, optimizer, schedule, evaluation, checkpoints, device and precision."""

    max_steps: int = Field(1000, ge=1, description="Optimizer steps in the whole run.")
    batch_size: int = Field(32, ge=1, description="Global batch in sequences per optimizer step, whatever the ranks.")
    micro_batch_size: int | None = Field(
        None, ge=1, description="Sequences per rank per micro-step; default batch_size / world_size (no accumulation)."
    )
    parallel: ParallelName = Field(
        "auto",
        description="With several processes: ddp (replicas), fsdp (FSDP2 shards), or auto (fsdp on GPUs when 16 "
        "bytes/parameter exceed a quarter of one GPU's memory, else ddp).",
    )
    activation_checkpointing: CheckpointingName = Field(
        "none", description="Recompute activations in backward: none, full (every block) or selective (every other)."
    )
    optimizer: OptimizerName = Field("adamw", description="adamw, or muon (Muon for hidden matrices + AdamW).")
    lr: float = Field(1e-3, gt=0.0, description="AdamW peak learning rate.")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decoupled weight decay on matrices and embeddings.")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0.0, lt=1.0, description="AdamW beta2.")
    muon_lr: float = Field(0.02, gt=0.0, description="Muon peak learning rate.")
    muon_momentum: float = Field(0.95, ge=0.0, lt=1.0, description="Muon momentum.")
    muon_weight_decay: float = Field(0.0, ge=0.0, description="Muon decoupled weight decay.")
    grad_clip: float = Field(1.0, ge=0.0, description="Clip the global gradient norm to this (0 disables).")
    schedule: ScheduleName = Field("cosine", description="LR decay after warmup: cosine, linear, wsd or constant.")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup steps.")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Final LR as a fraction of the peak.")
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0, description="wsd only: fraction of the run spent decaying.")
    eval_interval: int = Field(250, ge=0, description="Evaluate every this many steps (0: only at the end).")
    eval_batches: int = Field(20, ge=0, description="Validation batches per periodic evaluation (0: the whole split).")
    final_eval_full: bool = Field(True, description="Evaluate on the whole validation split at the last step.")
    sample_interval: int = Field(0, ge=0, description="Log a sample every this many steps (0: only at the end).")
    sample_prompt: str = Field("\n", description="Prompt of the periodic samples.")
    sample_tokens: int = Field(64, ge=0, description="Tokens per periodic sample (0 disables sampling).")
    checkpoint_interval: int = Field(500, ge=0, description="Save every this many steps (0: only at the end).")
    keep_last: int = Field(2, ge=0, description="Keep this many newest checkpoints (0 keeps all).")
    keep_best: bool = Field(True, description="Also keep the checkpoint with the lowest validation loss.")
    log_interval: int = Field(10, ge=1, description="Write a metrics record every this many steps.")
    device: str = Field("auto", description="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps.")
    precision: Precision = Field("auto", description="auto (bf16 on capable GPUs, fp32 on CPU), fp32, bf16, fp16.")
    compile: bool | None = Field(
        None,
        description="torch.compile the model; default on for CUDA, off on CPU (measured there: 5-15% faster steps "
        "but 15-20 s to compile per process, more than a short CPU run saves).",
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice).")
    deterministic: bool = Field(
        False,
        description="torch.use_deterministic_algorithms: bitwise-repeatable GPU runs and resumes, slower (an op "
        "with no deterministic kernel stops the run naming it). CPU runs are deterministic without it.",
    )
    peak_flops: float | None = Field(
        None,
        gt=0.0,
        description="One device's peak FLOP/s for MFU in metrics.jsonl; default from a table of GPUs (none on CPU).",
    )
    progress: bool = Field(True, description="Show a progress bar on rank 0.")
    plot: bool = Field(True, description="Redraw loss.png at each evaluation.")
    metrics_backends: tuple[Backend, ...] = Field((), description="Extra metric sinks: tensorboard, wandb.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size != 0:
            raise ValueError(
                f"batch_size must be a multiple of micro_batch_size (batch_size={self.batch_size}, "
                f"micro_batch_size={self.micro_batch_size})"
            )
        return self

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step so that ranks × micro-steps × micro-batch = the global batch.

        Raises:
            ConfigError: When the global batch does not split evenly over the ranks.
        """
        micro = self.micro_batch(world_size)
        if micro < 1 or self.batch_size % (micro * world_size) != 0:
            raise ConfigError(
                f"train.batch_size={self.batch_size} does not split into {world_size} rank(s) × "
                f"micro_batch_size={micro}; pick a batch size divisible by both"
            )
        return self.batch_size // (micro * world_size)

    def micro_batch(self, world_size: int) -> int:
        """Sequences per rank per micro-step: ``micro_batch_size``, else the global batch split over the ranks."""
        return self.micro_batch_size or self.batch_size // world_size

    def lr_multiplier(self, step: int, max_steps: int | None = None) -> float:
        """The schedule's learning-rate multiplier at ``step`` of a run of ``max_steps`` (default: this run's)."""
        return lr_multiplier(
            step,
            max_steps=self.max_steps if max_steps is None else max_steps,
            warmup_steps=self.warmup_steps,
            schedule=self.schedule,
            min_lr_ratio=self.min_lr_ratio,
            decay_fraction=self.decay_fraction,
        )
