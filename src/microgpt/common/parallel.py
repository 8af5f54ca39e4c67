"""How the model is spread over the ranks: one process, DDP (replicas), or FSDP2 (shards); activation checkpointing.

``train.parallel``:

- ``ddp`` — every rank holds the whole model, gradients and optimizer state; gradients are all-reduced once per
  optimizer step. Fastest while it fits: no parameter traffic in the forward pass.
- ``fsdp`` — PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) on every transformer block and on the root:
  each rank keeps ``1/world_size`` of every parameter, gradient and optimizer moment, all-gathers a block's
  parameters just before its forward (and again for its backward) and reduce-scatters its gradients. Memory per
  rank falls to ~16 bytes/parameter ÷ world size plus one block's full weights, at the cost of those gathers.
- ``auto`` (the default) — FSDP when there are several ranks on GPUs and the training state (≈16 bytes per
  parameter: fp32 weights and gradients, AdamW's two moments) would take more than a quarter of one GPU's memory
  (activations need the rest); DDP otherwise, and always DDP on CPUs (their memory is the host's, and gloo's
  gathers are slow).

With one process there is nothing to shard or replicate: ``fsdp`` then trains the plain model (with a warning).

Under FSDP the model is built on the meta device (no memory), sharded, then materialised on the training device
and initialised tensor by tensor: each full tensor is drawn on the CPU in the model's own init order with the
run's seed and only this rank's shard is kept — so the weights equal the unsharded run's whatever the world size,
and host memory peaks at one full tensor (the embedding), not the model.

On GPUs the FSDP mixed-precision policy keeps the sharded master weights in fp32, gathers them as bf16 for compute
and reduce-scatters gradients in fp32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``), and each
block is ``torch.compile``-d on its own before sharding (torchtitan's recipe: per-block graphs compile once and
reuse across identical blocks, and the gathers stay outside the graphs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from microgpt.common.log import get_logger

log = get_logger(__name__)

ParallelName = Literal["auto", "ddp", "fsdp"]
Mode = Literal["single", "ddp", "fsdp"]
CheckpointingName = Literal["none", "full", "selective"]

BYTES_PER_PARAM = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments
FSDP_MEMORY_FRACTION = 0.25  # auto picks FSDP when that state would exceed this fraction of one device's memory


def choose_mode(
    requested: ParallelName, world_size: int, count_params: Callable[[], int], device: torch.device
) -> Mode:
    """Resolve ``train.parallel`` for this run (see the module docstring for the ``auto`` rule).

    Args:
        requested: ``auto``, ``ddp`` or ``fsdp``.
        world_size: Number of processes.
        count_params: Returns the model's parameter count (called only by ``auto`` on GPUs).
        device: The training device.

    Returns:
        ``single`` (one process), ``ddp`` or ``fsdp``.
    """
    if world_size == 1:
        if requested == "fsdp":
            log.warning("train.parallel=fsdp with one process: nothing to shard, training the plain model")
        return "single"
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "ddp"
    memory = torch.cuda.get_device_properties(device).total_memory
    return "fsdp" if BYTES_PER_PARAM * count_params() > FSDP_MEMORY_FRACTION * memory else "ddp"


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``model``: the items of its largest ``nn.ModuleList`` (GPT's ``h``)."""
    lists: list[list[nn.Module]] = [list(m) for m in model.modules() if isinstance(m, nn.ModuleList)]
    return max(lists, key=len) if lists else []


def apply_activation_checkpointing(blocks: list[nn.Module], mode: CheckpointingName) -> int:
    """Recompute blocks' activations in the backward pass instead of keeping them (trading FLOPs for memory).

    ``full`` checkpoints every block (activation memory ~ one block's; ~1/3 more compute); ``selective``
    checkpoints every other block, torchtitan's "selective layer" option: about half the saving for half the
    recomputation. The block's ``forward`` is wrapped in place, so parameter names (and checkpoints) are unchanged
    and FSDP's hooks on the block still gather its weights for the recomputation.

    Returns:
        How many blocks were wrapped.
    """
    if mode == "none":
        return 0
    chosen = blocks if mode == "full" else blocks[1::2]
    for block in chosen:
        block.forward = _checkpointed(block.forward)
    return len(chosen)


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation and sampling keep nothing for backward anyway
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def shard_model(model: nn.Module, blocks: list[nn.Module], device: torch.device, *, compile_blocks: bool) -> None:
    """``fully_shard`` every block, then the root (which keeps the embeddings, final norm and head), in place.

    Args:
        model: The model (on the meta device or materialised).
        blocks: Its transformer blocks (:func:`transformer_blocks`).
        device: The training device: bf16 gathers with fp32 gradient reduction on CUDA, fp32 elsewhere.
        compile_blocks: ``torch.compile`` each block before sharding it.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for index, block in enumerate(blocks):
        if compile_blocks:
            block.compile()
        # The last block's weights are needed again at once by the backward: keep them gathered (torchtitan).
        fully_shard(block, mp_policy=policy, reshard_after_forward=index < len(blocks) - 1)
    fully_shard(model, mp_policy=policy)


InitKind = Literal["normal", "zeros", "ones"]


def init_tensor(tensor: torch.Tensor, kind: InitKind, std: float) -> None:
    """Fill ``tensor`` in place: normal(0, ``std``) (drawn from torch's global RNG), zeros or ones.

    A model's ``init_plan()`` names one of these per tensor; the model and :func:`materialize` both fill with it.
    """
    if kind == "normal":
        nn.init.normal_(tensor, mean=0.0, std=std)
    elif kind == "zeros":
        nn.init.zeros_(tensor)
    else:
        nn.init.ones_(tensor)


def materialize(model: nn.Module, device: torch.device, seed: int) -> None:
    """Give a meta-device (sharded) model real storage on ``device`` and initialise it as the unsharded model is.

    The model must offer ``init_plan()`` (``(name, kind, std)`` in init order) and ``init_buffers()``, as
    :class:`~microgpt.model.gpt.GPT` does. Each full tensor is drawn on the CPU from ``torch.manual_seed(seed)``
    in plan order; a rank copies in only its shard.

    Raises:
        TypeError: When the model has no init plan.
    """
    plan = getattr(model, "init_plan", None)
    init_buffers = getattr(model, "init_buffers", None)
    if not callable(plan) or not callable(init_buffers):
        raise TypeError(f"{type(model).__name__} has no init_plan()/init_buffers(): it cannot be built on meta")
    # to_empty gives every (module, name) its own new tensor, which unties tied weights (GPT's wte/lm_head): note
    # the ties first and restore them after.
    first: dict[int, tuple[nn.Module, str]] = {}
    ties: list[tuple[nn.Module, str, nn.Module, str]] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in first:
                ties.append((module, name, *first[id(param)]))
            else:
                first[id(param)] = (module, name)
    model.to_empty(device=device)
    for module, name, owner, owner_name in ties:
        if getattr(module, name) is not getattr(owner, owner_name):
            setattr(module, name, getattr(owner, owner_name))
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, kind, std in plan():
            param = model.get_parameter(name)
            full = torch.empty(param.shape, dtype=param.dtype)
            init_tensor(full, kind, std)
            copy_full_into(param, full)
        init_buffers()
    torch.set_rng_state(generator_state)


def copy_full_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full (unsharded, CPU) tensor into ``target``: all of it, or this rank's shard of a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(target, DTensor):
            shard = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None).to_local()
            target.to_local().copy_(shard)
        else:
            target.copy_(full)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients so their global L2 norm is at most ``max_norm``; return the norm before clipping.

    ``nn.utils.clip_grad_norm_`` in its two halves, as torchtitan does under FSDP: with sharded gradients the norm
    comes back as a DTensor of partial sums, made whole (``full_tensor``: every rank's squares summed) before
    it scales each rank's shards. Unsharded, it is the same arithmetic as ``clip_grad_norm_``.
    """
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params if p.grad is not None]
    total = nn.utils.get_total_norm(grads)
    if is_sharded(total):
        total = total.full_tensor()  # type: ignore[attr-defined]  # a DTensor
    nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def is_sharded(tensor: torch.Tensor) -> bool:
    """True for a DTensor (a parameter or state tensor of an FSDP-sharded model)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from all ranks if sharded (a collective: every rank must call it)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
