"""Training-step speed of microgpt's GPT against Hugging Face transformers' LlamaForCausalLM and GPT2LMHeadModel.

One step = forward, backward, AdamW step, zero_grad; fp32 on CPU; all models measured in the same process,
interleaved in rounds so a neighbouring process slows each equally. Prints ms per step and the ratio.

    .venv/bin/python benchmarks/bench_step.py                 # the issue's shape: 4 layers, 4 heads, 128 wide
    .venv/bin/python benchmarks/bench_step.py --gpt2-124m     # also one GPT-2-124M-shaped step (batch 4 × 256)
    .venv/bin/python benchmarks/bench_step.py --compile       # also microgpt and HF Llama, both torch.compile'd
    .venv/bin/python benchmarks/bench_step.py --isolated 3 --compile   # each model in a process of its own
    .venv/bin/python benchmarks/bench_step.py --ablations [--compile]   # one option changed at a time
    .venv/bin/python benchmarks/bench_step.py --attention     # native attention kernel vs SDPA + RoPE by context
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from microgpt.model import fast, native
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.model.rope import apply_rope, rope_tables

# transformers reads attn_implementation from config kwargs; its stubs do not list it.
SDPA: dict[str, Any] = {"attn_implementation": "sdpa"}


ADAMW_OPTIONS: dict[str, dict[str, bool]] = {"default": {}, "fused": {"fused": True}, "foreach": {"foreach": True}}
ADAMW = "default"  # --adamw: the same AdamW implementation for every model of a run


def make_step(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor, hf: bool) -> Callable[[], float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **ADAMW_OPTIONS[ADAMW])
    model.train()

    def step() -> float:
        if hf:
            loss = model(input_ids=idx, labels=targets).loss
        else:
            _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def time_steps(steps: dict[str, Callable[[], float]], rounds: int, per_round: int, warmup: int) -> dict[str, float]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            samples[name].append((time.perf_counter() - start) / per_round)
    # The fastest round: a busy neighbour only ever adds time, so the minimum is the least disturbed estimate
    # (TOOLCHAIN.md: a busy process slows a 2-thread step 2-25x). The median is printed beside it.
    for name, values in samples.items():
        print(f"  ({name}: median {statistics.median(values) * 1e3:.2f} ms over {len(values)} rounds)")
    return {name: min(values) for name, values in samples.items()}


VOCAB, N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 65, 4, 4, 128, 64, 12  # the shape (nanoGPT's baby GPT)
OURS_CFG = GPTConfig(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, block_size=BLOCK, vocab_size=VOCAB, mlp="swiglu")


def hf_llama() -> nn.Module:
    """HF's Llama of the same shape as ``OURS_CFG`` (RoPE, RMSNorm, SwiGLU, tied embeddings, SDPA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB, hidden_size=N_EMBD, intermediate_size=OURS_CFG.hidden_dim, num_hidden_layers=N_LAYER,
            num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD, max_position_embeddings=BLOCK,
            tie_word_embeddings=True, **SDPA,
        )
    )  # fmt: skip


ISOLATED_ROWS = ("microgpt", "HF Llama", "microgpt compiled", "HF Llama compiled")


def isolated_worker(args: argparse.Namespace) -> None:
    """Time one row of :func:`isolated` in this process alone and print its best ms per step as JSON."""
    name = args.worker
    torch.manual_seed(0)
    hf = name.startswith("HF")
    model = hf_llama() if hf else GPT(OURS_CFG)
    if name.endswith("compiled"):
        model.compile(mode=args.compile or "default")
    idx = torch.randint(0, VOCAB, (BATCH, BLOCK))
    targets = torch.randint(0, VOCAB, (BATCH, BLOCK))
    result = time_steps({name: make_step(model, idx, targets, hf=hf)}, rounds=args.rounds, per_round=10, warmup=5)
    print(json.dumps({"name": name, "ms": result[name] * 1e3}))


def isolated(args: argparse.Namespace) -> None:
    """Each Llama-shaped model in a process of its own, in turn, ``--isolated`` times; the best run per model.

    In one shared process every model's allocations fragment the others' heap (measured: ~2 ms of a compiled
    36 ms step); a process per model is how each trains for real. Rounds alternate the models so a neighbouring
    load hits all of them.
    """
    best: dict[str, float] = {}
    for _ in range(args.isolated):
        for name in ISOLATED_ROWS:
            command = [sys.executable, __file__, "--worker", name, "--rounds", str(args.rounds)]
            command += ["--threads", str(args.threads), "--adamw", ADAMW]
            if args.compile:
                command += ["--compile", args.compile]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            ms = json.loads(output.strip().splitlines()[-1])["ms"]
            best[name] = min(best.get(name, math.inf), ms)
            print(f"  {name:20s} {ms:7.2f} ms/step")
    print(f"best of {args.isolated} processes each, {args.threads} threads, fp32, AdamW {ADAMW}:")
    for name, ms in best.items():
        print(f"  {name:20s} {ms:7.2f} ms/step  {BATCH * BLOCK / ms * 1e3:9.0f} tok/s")
    print(f"  microgpt vs HF Llama, both eager:          {best['HF Llama'] / best['microgpt']:.2f}x")
    print(f"  microgpt compiled vs HF Llama eager:       {best['HF Llama'] / best['microgpt compiled']:.2f}x")
    print(f"  microgpt compiled vs HF Llama compiled:    {best['HF Llama compiled'] / best['microgpt compiled']:.2f}x")


def small_shape(args: argparse.Namespace) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab, n_layer, n_head, n_embd, block, batch = VOCAB, N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH
    torch.manual_seed(0)
    ours_cfg = OURS_CFG
    ours = GPT(ours_cfg)
    ours_gpt2 = GPT(
        GPTConfig(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block, vocab_size=vocab,
            pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True,
        )
    )  # fmt: skip
    llama = hf_llama()
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=block,
            **SDPA,
        )
    )  # fmt: skip
    idx = torch.randint(0, vocab, (batch, block))
    targets = torch.randint(0, vocab, (batch, block))
    steps = {
        "microgpt (rope, rmsnorm, swiglu)": make_step(ours, idx, targets, hf=False),
        "HF LlamaForCausalLM": make_step(llama, idx, targets, hf=True),
        "microgpt (gpt-2 options)": make_step(ours_gpt2, idx, targets, hf=False),
        "HF GPT2LMHeadModel": make_step(gpt2, idx, targets, hf=True),
    }
    if args.compile:
        # Fresh copies of both Llama-shaped models, each compiled in place with the same mode.
        torch.manual_seed(0)
        compiled_models = (
            ("microgpt compiled", GPT(ours_cfg), False),
            ("HF Llama compiled", hf_llama(), True),
        )
        for name, model, hf in compiled_models:
            model.compile(mode=args.compile)
            step = make_step(model, idx, targets, hf=hf)
            start = time.perf_counter()
            step()
            print(f"{name}: first step (compiles, mode {args.compile}) {time.perf_counter() - start:.1f} s")
            steps[name] = step
    result = time_steps(steps, rounds=args.rounds, per_round=args.steps, warmup=5)
    tokens = batch * block
    print(f"shape: {n_layer} layers, {n_head} heads, {n_embd} wide, context {block}, batch {batch}, vocab {vocab}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, AdamW {ADAMW}")
    for name, seconds in result.items():
        print(f"  {name:34s} {seconds * 1e3:7.2f} ms/step  {tokens / seconds:9.0f} tok/s")
    names = list(result)
    # Achieved model FLOP/s by the stated formula (6N + 12·L·H·Q·T per token, microgpt.model.flops): how close
    # the step is to the CPU's matmul throughput, the floor no implementation of this shape can beat.
    per_token = ours.flops_per_token(seq_len=block)
    flops = per_token * tokens / result[names[0]]
    print(f"  microgpt model FLOP/s: {flops / 1e9:.1f} GFLOP/s ({per_token / 1e6:.2f} MFLOP/token)")
    print(f"  speedup vs Llama: {result[names[1]] / result[names[0]]:.2f}x")
    print(f"  speedup vs GPT2 (same options):  {result[names[3]] / result[names[2]]:.2f}x")
    if args.compile:
        compiled = result["microgpt compiled"]
        print(f"  microgpt compiled vs HF Llama eager:    {result[names[1]] / compiled:.2f}x")
        print(f"  microgpt compiled vs HF Llama compiled: {result['HF Llama compiled'] / compiled:.2f}x")


def gpt2_124m(args: argparse.Namespace) -> None:
    cfg = GPTConfig(
        n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257,
        pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (4, 256))
    targets = torch.randint(0, cfg.vocab_size, (4, 256))
    steps = {"microgpt": make_step(model, idx, targets, hf=False)}
    if args.compile:
        compiled = GPT(cfg)
        compiled.compile(mode=args.compile)
        steps[f"microgpt compiled ({args.compile})"] = make_step(compiled, idx, targets, hf=False)
    result = time_steps(steps, rounds=3, per_round=1, warmup=1)
    print(f"GPT-2 124M shape ({model.num_params() / 1e6:.1f}M params), batch 4 x 256, fp32 (nanoGPT here: 5.6 s/step):")
    for name, seconds in result.items():
        flops = model.flops_per_token(seq_len=256) * 4 * 256 / seconds
        print(f"  {name:34s} {seconds:.2f} s/step  {4 * 256 / seconds:.0f} tok/s  {flops / 1e9:.1f} GFLOP/s")


def without_native(step: Callable[[], float]) -> Callable[[], float]:
    """``step`` with microgpt's native kernels switched off (SDPA, ``F.silu``, the hand-written norm instead)."""

    def step_with_torch_ops() -> float:
        available = native.native_available
        native.native_available = lambda: False  # what every use_* check asks
        try:
            return step()
        finally:
            native.native_available = available

    return step_with_torch_ops


def without_fast_paths(step: Callable[[], float]) -> Callable[[], float]:
    """``step`` running only the model's plain code, as ``MICROGPT_KERNELS=0`` does (no kernels, no custom backward)."""

    def step_with_plain_code() -> float:
        enabled = fast.enabled
        fast.enabled = lambda: False  # what every @fast_path call asks first
        try:
            return step()
        finally:
            fast.enabled = enabled

    return step_with_plain_code


def sdpa_with_rope(qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], heads: int) -> torch.Tensor:
    """The torch path the native attention kernel replaces: RoPE on queries and keys, then causal SDPA."""
    B, T, _, D = qkv.shape
    q, k = apply_rope(qkv[:, :, : 2 * heads], *rope).split(heads, dim=2)
    v = qkv[:, :, 2 * heads :]
    y = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    )
    return y.transpose(1, 2).reshape(B, T, heads * D)


def attention_steps(batch: int, heads: int, head_dim: int, context: int) -> dict[str, Callable[[], float]]:
    """Forward + backward of attention with RoPE at one shape: the native kernel and SDPA + RoPE."""
    torch.manual_seed(0)
    qkv = torch.randn(batch, context, 3 * heads, head_dim)
    cos, sin = rope_tables(context, head_dim, 10000.0)
    rope = (cos[:, None], sin[:, None])
    grad = torch.randn(batch, context, heads * head_dim)
    ours_in, theirs_in = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()

    def ours() -> float:
        native.short_causal_attention(ours_in, rope, heads, heads).backward(grad)
        return 0.0

    def theirs() -> float:
        sdpa_with_rope(theirs_in, rope, heads).backward(grad)
        return 0.0

    return {"native": ours, "sdpa": theirs}


def attention_by_context(args: argparse.Namespace) -> None:
    """Forward + backward of causal attention with RoPE: the native kernel against SDPA + RoPE, by shape."""
    print("batch x heads x head_dim, context: native kernel vs SDPA + RoPE, forward + backward, best of 5 rounds")
    shapes = [(12, 4, 32, 64), (12, 4, 32, 128), (12, 4, 32, 256), (4, 12, 64, 128), (4, 12, 64, 256)]
    for batch, heads, head_dim, context in shapes:
        per_round = max(3, 2000 // (batch * context))
        best = time_steps(attention_steps(batch, heads, head_dim, context), rounds=5, per_round=per_round, warmup=3)
        print(
            f"  {batch}x{heads}x{head_dim}, {context:4d}: native {best['native'] * 1e3:7.2f} ms  "
            f"SDPA + RoPE {best['sdpa'] * 1e3:7.2f} ms  ({best['sdpa'] / best['native']:.2f}x)"
        )


def ablations(args: argparse.Namespace) -> None:
    """Step time of one option changed at a time, from the Llama-shaped base (same run, interleaved)."""
    base: dict[str, Any] = {
        "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "vocab_size": 65,
        "pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu",
    }  # fmt: skip
    changes: dict[str, dict[str, Any]] = {
        "base (rope, rmsnorm, swiglu)": {},
        "learned positions": {"pos_encoding": "learned"},
        "layernorm": {"norm": "layernorm"},
        "gelu (4x)": {"mlp": "gelu"},
        "relu2 (4x)": {"mlp": "relu2"},
        "qk_norm": {"qk_norm": True},
        "gqa n_kv_head=2": {"n_kv_head": 2},
    }
    idx = torch.randint(0, 65, (12, 64))
    targets = torch.randint(0, 65, (12, 64))
    steps = {}
    for name, change in changes.items():
        torch.manual_seed(0)
        steps[name] = make_step(GPT(GPTConfig.model_validate(base | change)), idx, targets, hf=False)
    torch.manual_seed(0)
    steps["no native kernels (torch ops)"] = without_native(
        make_step(GPT(GPTConfig.model_validate(base)), idx, targets, hf=False)
    )
    torch.manual_seed(0)
    steps["plain PyTorch (MICROGPT_KERNELS=0)"] = without_fast_paths(
        make_step(GPT(GPTConfig.model_validate(base)), idx, targets, hf=False)
    )
    if args.compile:
        torch.manual_seed(0)
        compiled = GPT(GPTConfig.model_validate(base))
        compiled.compile(mode=args.compile)  # in place: the module keeps its type and parameters
        start = time.perf_counter()
        step = make_step(compiled, idx, targets, hf=False)
        step()
        print(f"torch.compile warm-up: {time.perf_counter() - start:.1f} s")
        steps["base + torch.compile"] = step
    result = time_steps(steps, rounds=args.rounds, per_round=args.steps, warmup=3)
    reference = result["base (rope, rmsnorm, swiglu)"]
    print("ablations (one change from the base; ms per step, relative):")
    for name, seconds in result.items():
        print(f"  {name:30s} {seconds * 1e3:7.2f} ms  {seconds / reference:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--gpt2-124m", action="store_true", help="also time a GPT-2-124M-shaped step")
    parser.add_argument("--ablations", action="store_true", help="time one-option changes instead of the peers")
    parser.add_argument("--attention", action="store_true", help="native attention kernel vs SDPA by context")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        help="also time torch.compile'd models with this mode (default when given alone: %(const)s)",
    )
    parser.add_argument(
        "--adamw", choices=sorted(ADAMW_OPTIONS), default="default", help="AdamW implementation, same for all models"
    )
    parser.add_argument(
        "--isolated", type=int, metavar="N", help="each Llama-shaped model in its own process, N processes per model"
    )
    parser.add_argument("--worker", choices=ISOLATED_ROWS, help=argparse.SUPPRESS)  # one row of --isolated
    args = parser.parse_args()
    global ADAMW
    ADAMW = args.adamw
    torch.set_num_threads(args.threads)
    if args.worker:
        isolated_worker(args)
        return
    if args.isolated:
        isolated(args)
        return
    if args.ablations:
        ablations(args)
        return
    if args.attention:
        attention_by_context(args)
        return
    small_shape(args)
    if args.gpt2_124m:
        gpt2_124m(args)


if __name__ == "__main__":
    main()
