"""One GPU training step, measured: microgpt's GPT-2-124M beside a nanoGPT-recipe reference, same harness, same run.

``benchmarks/gpu_check.sh`` drives it (single GPU, then DDP over every visible GPU with NCCL, then the real trainer)
and prints one table; each invocation here measures one model on one process group and writes one JSON row.

    .venv/bin/python benchmarks/gpu_check.py --model microgpt --out rows/1.json
    torchrun --standalone --nproc_per_node=8 benchmarks/gpu_check.py --model nanogpt --out rows/4.json
    .venv/bin/python benchmarks/gpu_check.py --table rows/          # print the table of every row in rows/

The reference is written here from nanoGPT's published recipe (Karpathy, github.com/karpathy/nanoGPT,
``train.py`` / ``model.py`` defaults for GPT-2 124M), not copied: 12 layers, 12 heads, 768 wide, 1024 context,
vocabulary padded to 50304, learned positions, LayerNorm and GELU with biases, a fused q/k/v projection,
``F.scaled_dot_product_attention(is_causal=True)``, tied embeddings, normal(0, 0.02) init with the residual
projections at 0.02/sqrt(2·n_layer), fused AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1 on ≥2-D tensors),
gradient clipping at 1.0, bf16 autocast, TF32 matmuls, ``torch.compile``, micro-batch 12. microgpt runs its own
GPT-2 preset (configs/gpt2-124m.yaml's model) with its own optimizer builder at the same micro-batch.

Tokens are random ids (throughput does not depend on the text). MFU uses one formula for both
(``microgpt.model.flops``: 6·N + 12·L·H·Q·T per token) against one device's peak (``microgpt.common.device``).
``--cpu-smoke`` runs a tiny shape in fp32 without compile on the CPU, to check the script itself anywhere.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.common.device import enable_tf32, peak_flops
from microgpt.common.dist import DistInfo, destroy_distributed, init_distributed
from microgpt.common.metrics import estimate_mfu
from microgpt.common.optim import build_optimizers
from microgpt.model.config import GPTConfig
from microgpt.model.flops import flops_per_token
from microgpt.model.gpt import GPT

GPT2_124M = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257}
SMOKE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 500}


# ---- the nanoGPT-recipe reference ---------------------------------------------------------------------------


class RefBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)); x + mlp(ln_2(x)); LayerNorm and Linear with biases, GELU MLP 4x."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Q)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        out: torch.Tensor = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))
        return out


class RefGPT(nn.Module):
    """GPT-2 as nanoGPT builds it: token + learned position embeddings, blocks, final LayerNorm, tied head."""

    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(RefBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim >= 2:  # residual projections scaled by 1/sqrt(2·n_layer) (GPT-2 paper)
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def ref_optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=fused)


# ---- the harness ---------------------------------------------------------------------------------------------


def build(
    name: str, shape: dict[str, int], device: torch.device
) -> tuple[nn.Module, list[torch.optim.Optimizer], float]:
    """The model on ``device``, its optimizers, and its training FLOPs per token by microgpt's formula."""
    torch.manual_seed(0)
    gpt2 = {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "tie_embeddings": True}
    config = GPTConfig.model_validate({**shape, **gpt2})
    if name == "microgpt":
        gpt = GPT(config).to(device)
        optimizers = build_optimizers(gpt, optimizer="adamw", lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
        return gpt, optimizers, gpt.flops_per_token()
    ref = RefGPT(**{**shape, "vocab_size": config.padded_vocab_size}).to(device)
    n_matmul = sum(p.numel() for p in ref.parameters()) - ref.wpe.weight.numel()  # lookups do no arithmetic
    return ref, [ref_optimizer(ref, fused=device.type == "cuda")], flops_per_token(config, n_matmul)


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    dist = DistInfo.from_env()
    cuda = not args.cpu_smoke
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available (torch.cuda.is_available() is False); use --cpu-smoke on a CPU")
    device = torch.device(f"cuda:{dist.local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        enable_tf32()
    init_distributed(dist, device)
    shape = SMOKE if args.cpu_smoke else GPT2_124M
    raw, optimizers, per_token = build(args.model, shape, device)
    model: nn.Module = raw
    if cuda:
        model = torch.compile(model)  # type: ignore[assignment]
    if dist.is_distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    dtype = torch.bfloat16 if cuda else torch.float32
    B, T = args.micro_batch, shape["block_size"]
    gen = torch.Generator(device=device).manual_seed(1 + dist.rank)
    x = torch.randint(0, shape["vocab_size"], (B, T + 1), device=device, generator=gen)
    idx, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not torch.float32):
            _, loss = model(idx, targets)
        loss.backward()
        nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        detached: torch.Tensor = loss.detach()
        return detached

    started = time.perf_counter()
    for _ in range(args.warmup):  # compiles on the first step
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm_s = time.perf_counter() - started
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    final = float(loss)  # a host sync: every step is done
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.steps
    if dist.is_distributed:  # the slowest rank sets the pace
        worst = torch.tensor([seconds], device=device)
        torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
        seconds = float(worst.item())
    # Free the DDP model (its reducer holds the process group) before the group goes: destroying the group first
    # deadlocks gloo at teardown (the group's thread waits for the GIL the reducer's destructor holds).
    model = raw  # drops the DDP wrapper (the step closure sees the same cell)
    gc.collect()
    destroy_distributed()
    if not dist.is_main:
        return None
    per_device = B * T / seconds
    peak = peak_flops(device, dtype)
    return {
        "model": args.model,
        "gpus": dist.world_size,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "compile": cuda,
        "micro_batch": B,
        "seq": T,
        "step_ms": seconds * 1e3,
        "tok_s_per_gpu": per_device,
        "tok_s_total": per_device * dist.world_size,
        "mfu": estimate_mfu(per_token, per_device, peak) if peak else None,
        "warmup_s": warm_s,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "loss": final,
    }


def table(folder: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    head = "| run | GPUs | dtype | compile | step ms | tok/s per GPU | tok/s total | MFU | warm-up s | peak GB | loss |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") is not None else "n/a"
        ms = f"{r['step_ms']:.1f}" if r.get("step_ms") is not None else "n/a"
        warm = f"{r['warmup_s']:.0f}" if r.get("warmup_s") is not None else "n/a"
        lines.append(
            f"| {r['model']} | {r['gpus']} | {r['dtype']} | {r['compile']} | {ms} | {r['tok_s_per_gpu']:,.0f} | "
            f"{r['tok_s_total']:,.0f} | {mfu} | {warm} | {mem} | {r['loss']:.3f} |"
        )
    device = rows[0]["device"] if rows else "?"
    cuda = torch.version.cuda or "none"
    return f"{device}; torch {torch.__version__}, CUDA {cuda}\n\n" + "\n".join(lines)


def trainer_row(metrics: Path, gpus: int, label: str = "microgpt train (tiny)") -> dict[str, Any]:
    """The last throughput record of a `microgpt train` run's metrics.jsonl, as a table row named ``label``."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    timed = [r for r in records if "tokens_per_sec_per_device" in r]
    if not timed:
        sys.exit(f"gpu_check: {metrics} has no tokens_per_sec_per_device record")
    last = timed[-1]
    return {
        "model": label,
        "gpus": gpus,
        "device": "",
        "dtype": "auto",
        "compile": "auto",
        "step_ms": None,
        "tok_s_per_gpu": last["tokens_per_sec_per_device"],
        "tok_s_total": last["tokens_per_sec"],
        "mfu": last.get("mfu"),
        "warmup_s": None,
        "peak_mem_gb": None,
        "loss": last["train_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["microgpt", "nanogpt"], default="microgpt")
    parser.add_argument("--micro-batch", type=int, default=12, help="Sequences per GPU per step (nanoGPT: 12).")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps first (compile).")
    parser.add_argument("--cpu-smoke", action="store_true", help="Tiny shape, fp32, no compile, on the CPU.")
    parser.add_argument("--out", type=Path, help="Write this run's JSON row here (rank 0).")
    parser.add_argument("--table", type=Path, help="Print the table of every JSON row in this folder and exit.")
    parser.add_argument("--trainer-row", nargs=2, metavar=("METRICS", "GPUS"), help="Row from a metrics.jsonl.")
    parser.add_argument("--label", default="microgpt train (tiny)", help="The --trainer-row's name in the table.")
    args = parser.parse_args()
    if args.table is not None:
        print(table(args.table))
        return
    if args.trainer_row is not None:
        row = trainer_row(Path(args.trainer_row[0]), int(args.trainer_row[1]), args.label)
    else:
        measured = measure(args)
        if measured is None:
            return
        row = measured
    text = json.dumps(row)
    if args.out is not None:
        args.out.write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
