"""The model a run trains: built or loaded, placed on the device, sharded (FSDP2) or wrapped (compile, DDP).

:func:`build_training_model` resolves ``train.parallel`` and returns the model the checkpoints save;
:func:`wrap_for_training` returns the module the loop calls forward and backward on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from microgpt.common.checkpoint_load import load_model_state
from microgpt.common.device import seed_everything
from microgpt.common.dist import DistInfo
from microgpt.common.log import get_logger
from microgpt.common.parallel import (
    Mode,
    apply_activation_checkpointing,
    choose_mode,
    materialize,
    shard_model,
    transformer_blocks,
)
from microgpt.common.train_config import TrainConfig

log = get_logger(__name__)


def compile_enabled(config: TrainConfig, device: torch.device) -> bool:
    """``train.compile``, or by default: compile on CUDA only."""
    return config.compile if config.compile is not None else device.type == "cuda"


def build_training_model(
    build_model: Callable[[], nn.Module],
    init_weights: Callable[[nn.Module], None],
    *,
    config: TrainConfig,
    dist: DistInfo,
    device: torch.device,
    seed: int,
    resume: Path | None,
) -> tuple[nn.Module, Mode]:
    """The model on the training device: initialised, or loaded from ``resume``; sharded under FSDP.

    ``train.parallel`` is resolved first (``auto`` on GPUs counts the parameters of a model built on the meta
    device). Under FSDP the model is built on the meta device, sharded and materialised shard by shard (see
    :mod:`microgpt.common.parallel`); otherwise it is built on the CPU and moved. Both give the same weights from
    the same seed (identical on every rank; DDP also broadcasts rank 0's).

    Args:
        build_model: Returns a freshly initialised model (the trainer's hook).
        init_weights: Loads starting weights into a fresh model when not resuming (fine-tuning loads its parent's).
        config: The training settings (``parallel``, ``activation_checkpointing``, ``compile``).
        dist: This process's place in the job.
        device: The training device.
        seed: Seed of the initialisation.
        resume: The checkpoint to load, or None.

    Returns:
        ``(model, mode)`` with mode ``single``, ``ddp`` or ``fsdp``.
    """

    def count_params() -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model().parameters())

    mode = choose_mode(config.parallel, dist.world_size, count_params, device)
    seed_everything(seed)
    if mode == "fsdp":
        with torch.device("meta"):
            model = build_model()
        blocks = transformer_blocks(model)
        apply_activation_checkpointing(blocks, config.activation_checkpointing)
        shard_model(model, blocks, device, compile_blocks=compile_enabled(config, device))
        materialize(model, device, seed)
        log.info("FSDP2: %d block(s) and the root sharded over %d ranks", len(blocks), dist.world_size)
    else:
        model = build_model()
        apply_activation_checkpointing(transformer_blocks(model), config.activation_checkpointing)
    if resume is not None:
        load_model_state(model, resume)  # a single-folder or a sharded checkpoint, into either mode
    else:
        init_weights(model)
    return (model if mode == "fsdp" else model.to(device)), mode


def wrap_for_training(
    raw_model: nn.Module, mode: Mode, *, config: TrainConfig, dist: DistInfo, device: torch.device
) -> nn.Module:
    """The module the loop calls: compiled (by default on CUDA only) and, with several ranks, DDP-wrapped.

    Under FSDP the model was sharded in place by :func:`build_training_model` (its blocks compiled there): it is
    returned as is. Checkpoints always save ``raw_model``, so no ``_orig_mod.``/``module.`` prefix reaches a weight
    name.
    """
    if mode == "fsdp":
        return raw_model
    model = raw_model
    if compile_enabled(config, device):
        model = torch.compile(model)  # type: ignore[assignment]  # returns a callable wrapper of the module
    if dist.is_distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model
