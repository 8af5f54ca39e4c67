"""Quality per wall-clock on tiny Shakespeare: run a preset end to end and report bits per byte and seconds.

The clock runs from launching ``microgpt train PRESET`` in a fresh output directory to its exit: tokenizer
training, data preparation, training, the final full-validation evaluation and the checkpoint are all inside.
Validation is nanoGPT's split (the last 10% of the characters); bits per byte are on the raw validation bytes.

    .venv/bin/python benchmarks/bench_shakespeare.py configs/shakespeare.yaml --bar-bpb 2.40 --bar-seconds 50
    .venv/bin/python benchmarks/bench_shakespeare.py configs/shakespeare-5min.yaml --bar-bpb 2.12 --bar-seconds 300

Extra ``key=value`` arguments are passed through as overrides (ablations): ``model.pos_encoding=learned``.
The reference point is nanoGPT's CPU "baby GPT" recipe measured on these machines (TOOLCHAIN.md): 99 s, 2.72 bpb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NANOGPT_BABY = {"seconds": 99.0, "bpb": 2.72}  # 1.8857 nats/char on ASCII text = 2.72 bits/byte


def run_preset(preset: Path, overrides: list[str], keep: Path | None) -> dict[str, object]:
    out = Path(tempfile.mkdtemp(prefix="bench-shakespeare-")) if keep is None else keep
    if keep is not None and keep.exists():
        shutil.rmtree(keep)
    command = [sys.executable, "-m", "microgpt", "train", str(preset), f"out_dir={out}", "train.progress=false"]
    command += overrides
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    report = {
        "preset": str(preset),
        "overrides": overrides,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "steps": final["step"],
        "tokens": final["tokens"],
        "val_loss": round(final["val_loss"], 4),
        "val_bpb": round(final["val_bpb"], 4),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    if keep is None:
        shutil.rmtree(out, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", type=Path)
    parser.add_argument("overrides", nargs="*", help="key=value overrides (ablations)")
    parser.add_argument("--bar-bpb", type=float, default=None, help="pass if val bits/byte <= this")
    parser.add_argument("--bar-seconds", type=float, default=None, help="pass if wall seconds <= this")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run in this folder")
    args = parser.parse_args()
    report = run_preset(args.preset, args.overrides, args.keep)
    verdicts = []
    if args.bar_bpb is not None:
        verdicts.append(float(str(report["val_bpb"])) <= args.bar_bpb)
    if args.bar_seconds is not None:
        verdicts.append(float(str(report["seconds"])) <= args.bar_seconds)
    report["nanogpt_baby_gpt"] = NANOGPT_BABY
    if verdicts:
        report["pass"] = all(verdicts)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
