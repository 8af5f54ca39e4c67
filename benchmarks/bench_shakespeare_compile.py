"""torch.compile on or off for the sprint preset's model: one-off compile cost and steady ms per training step.

    .venv/bin/python benchmarks/bench_shakespeare_compile.py --steps 30

Same model, batch and optimizer as ``configs/shakespeare.yaml`` (4 layers, 128 wide, context 64, batch 32,
Muon + AdamW); random tokens (the cost of a step does not depend on them). Eager and compiled steps alternate in
rounds so both see the same machine load; the best round is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from microgpt.common.optim import build_optimizers
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT


def make(compiled: bool) -> tuple[torch.nn.Module, list[torch.optim.Optimizer], float]:
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=1024, qk_norm=True, zero_init_proj=True
    )
    raw = GPT(config)
    optimizers = build_optimizers(raw, optimizer="muon", lr=5e-3, muon_lr=0.03)
    model: torch.nn.Module = torch.compile(raw) if compiled else raw  # type: ignore[assignment]
    start = time.perf_counter()
    step(model, optimizers)  # the first call compiles
    return model, optimizers, time.perf_counter() - start


def step(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    x = torch.randint(0, 1024, (32, 64))
    _, loss = model(x, x)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    eager, eager_opts, eager_first = make(False)
    compiled, compiled_opts, compile_seconds = make(True)
    best = {"eager": float("inf"), "compiled": float("inf")}
    for _ in range(args.rounds):
        for name, model, opts in (("eager", eager, eager_opts), ("compiled", compiled, compiled_opts)):
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, opts)
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps * 1000)
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "eager_ms_per_step": round(best["eager"], 1),
                "compiled_ms_per_step": round(best["compiled"], 1),
                "first_compiled_step_s": round(compile_seconds, 1),
                "first_eager_step_s": round(eager_first, 2),
                "load": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
