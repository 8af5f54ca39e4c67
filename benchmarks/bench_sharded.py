"""Sharded (FSDP2) vs single-folder (DDP) checkpoints and per-rank memory at the GPT-2 124M shape, on CPU/gloo.

Run under torchrun with 2 processes; each rank prints one line, rank 0 a summary::

    nice -n 10 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        benchmarks/bench_sharded.py --mode fsdp
    nice -n 10 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        benchmarks/bench_sharded.py --mode ddp

Per rank: the bytes it keeps between steps (its parameters, their gradients and AdamW's moments; local shards under
FSDP), the peak RSS after building the model and AdamW and taking 2 training steps (batch 2 × 256 tokens), then
the time to save a checkpoint (sharded: every rank writes its shard; DDP: rank 0 writes the whole one, as the
trainer does) and to load it back into the same model and optimizer, with the peak RSS after each.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn

from microgpt.common.checkpoint import CheckpointWriter
from microgpt.common.checkpoint_load import load_model_state, load_optimizer_states
from microgpt.common.dist import DistInfo, broadcast_object
from microgpt.common.optim import build_optimizers
from microgpt.common.parallel import materialize, shard_model, transformer_blocks
from microgpt.common.sharded import save_sharded
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT


def peak_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def local_mib(tensors: list[torch.Tensor]) -> float:
    """MiB this rank holds of ``tensors`` (a sharded DTensor counts its local shard only)."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total / 2**20


def state_mib(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> float:
    """What a rank keeps between steps: parameters, their gradients (during backward) and the optimizer state."""
    params = list(model.parameters())
    moments = [v for opt in optimizers for per in opt.state.values() for v in per.values() if torch.is_tensor(v)]
    return 2 * local_mib(params) + local_mib([m for m in moments if m.dim() > 0])


def main() -> None:
    """Build, step, save, load; print per-rank figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["fsdp", "ddp"], required=True)
    parser.add_argument("--out", type=Path, default=None, help="Folder for the checkpoint (default: a temp dir).")
    args = parser.parse_args()
    dist = DistInfo.from_env()
    torch_dist.init_process_group("gloo")
    torch.set_num_threads(1)
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model: nn.Module
    if args.mode == "fsdp":
        with torch.device("meta"):
            model = GPT(config)
        shard_model(model, transformer_blocks(model), device, compile_blocks=False)
        materialize(model, device, seed=0)
        wrapped = model
    else:
        model = GPT(config)
        wrapped = nn.parallel.DistributedDataParallel(model)
    optimizers = build_optimizers(model, optimizer="adamw", lr=1e-4)
    x = torch.randint(0, config.vocab_size, (2, 256))
    for _ in range(2):
        _, loss = wrapped(x, x)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    train_peak = peak_mb()
    state = state_mib(model, optimizers)
    made = None if args.out or not dist.is_main else tempfile.mkdtemp(prefix="bench-sharded-")
    root = args.out or Path(broadcast_object(made) or "")  # one folder for every rank: rank 0's
    torch_dist.barrier()
    started = time.perf_counter()
    meta = {"tokens": 0, "val_loss": None, "best_val_loss": None, "parent": None}
    common = {"model_config": config.to_dict(), "run_config_yaml": "", "trainer_state": {}, "rng_states": [{}]}
    if args.mode == "fsdp":
        path = save_sharded(root, 1, dist=dist, model=model, optimizers=optimizers, meta=meta, **common)  # type: ignore[arg-type]
    else:
        path = root / "step-0000001"
        if dist.is_main:
            CheckpointWriter(root).save(1, model=model, optimizers=optimizers, meta=meta, **common)  # type: ignore[arg-type]
    torch_dist.barrier()
    save_s = time.perf_counter() - started
    save_peak = peak_mb()
    started = time.perf_counter()
    load_model_state(model, path)
    load_optimizer_states(optimizers, path)
    torch_dist.barrier()
    load_s = time.perf_counter() - started
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    print(
        f"{args.mode} rank {dist.rank}: weights + gradients + AdamW state {state:,.0f} MiB, "
        f"peak RSS after 2 steps {train_peak:,.0f} MiB, save {save_s:.2f} s "
        f"(peak {save_peak:,.0f} MiB), load {load_s:.2f} s (peak {peak_mb():,.0f} MiB), checkpoint {size:,.0f} MiB",
        flush=True,
    )
    torch_dist.barrier()  # every rank has measured the folder before rank 0 removes it
    torch_dist.destroy_process_group()
    if args.out is None and dist.is_main:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
