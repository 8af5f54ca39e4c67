#!/usr/bin/env bash
# The first-GPU-run check, one table in under 10 minutes: bf16 + torch.compile steps of microgpt's GPT-2-124M beside
# a nanoGPT-recipe reference (benchmarks/gpu_check.py) on one GPU, then DDP over every visible GPU with NCCL, then
# the real trainer (`microgpt train`, tiny model, all GPUs) whose metrics.jsonl must carry per-GPU tokens/s and MFU,
# with DDP and with FSDP2 (train.parallel=fsdp).
#
#   benchmarks/gpu_check.sh                # on a machine with CUDA GPUs (exits 2 with one line without them)
#   benchmarks/gpu_check.sh --cpu-smoke    # the same path, tiny, fp32, 2 gloo processes: checks the script anywhere
#
# Environment: PYTHON (default .venv/bin/python), STEPS (timed steps, default 20), KEEP=1 keeps the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-20}
SMOKE=()
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    SMOKE=(--cpu-smoke)
    NGPU=2  # processes, on gloo
    export OMP_NUM_THREADS=1
elif [[ $# -gt 0 ]]; then
    echo "usage: benchmarks/gpu_check.sh [--cpu-smoke]" >&2
    exit 2
else
    NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
    if [[ "$NGPU" -eq 0 ]]; then
        echo "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run it on a GPU machine," \
             "or pass --cpu-smoke for a tiny CPU dry run" >&2
        exit 2
    fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/microgpt-gpu-check.XXXXXX")
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
ROWS="$WORK/rows"
mkdir -p "$ROWS"
run() { echo "== $*" >&2; "$@" >&2; }
torchrun() { "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" "$@"; }

# 1. one GPU: bf16 autocast, torch.compile, fused AdamW, micro-batch 12 × 1024 (nanoGPT's), both models
run "$PY" benchmarks/gpu_check.py --model microgpt --steps "$STEPS" --out "$ROWS/1-microgpt.json" ${SMOKE[@]+"${SMOKE[@]}"}
run "$PY" benchmarks/gpu_check.py --model nanogpt --steps "$STEPS" --out "$ROWS/2-nanogpt.json" ${SMOKE[@]+"${SMOKE[@]}"}

# 2. DDP over all visible GPUs (NCCL; init_process_group with device_id), the same two models
if [[ "$NGPU" -gt 1 ]]; then
    run torchrun benchmarks/gpu_check.py --model microgpt --steps "$STEPS" --out "$ROWS/3-microgpt-ddp.json" ${SMOKE[@]+"${SMOKE[@]}"}
    run torchrun benchmarks/gpu_check.py --model nanogpt --steps "$STEPS" --out "$ROWS/4-nanogpt-ddp.json" ${SMOKE[@]+"${SMOKE[@]}"}
else
    echo "== one GPU visible: DDP rows skipped" >&2
fi

# 3. the real trainer on every GPU: rank-0 data preparation, DDP, compile, bf16, eval, checkpoint, metrics.jsonl
if [[ ${#SMOKE[@]} -gt 0 ]]; then
    MODEL="{n_layer: 2, n_head: 2, n_embd: 64, block_size: 64}"; MICRO=2; MAXSTEPS=6; LOG=2; DEVICE=cpu
else
    MODEL="{n_layer: 6, n_head: 6, n_embd: 384, block_size: 256}"; MICRO=32; MAXSTEPS=60; LOG=10; DEVICE=auto
fi
cat > "$WORK/train.yaml" <<EOF
out_dir: $WORK/run
tokenizer: {vocab_size: 257}
data:
  sources: [{type: file, paths: [data/tinyshakespeare/train.txt], separator: "\n\n"}]
  val_fraction: 0.05
  workers: 1
model: $MODEL
train:
  max_steps: $MAXSTEPS
  batch_size: $((MICRO * NGPU))
  micro_batch_size: $MICRO
  lr: 1.0e-3
  warmup_steps: 2
  eval_interval: $((MAXSTEPS / 2))
  eval_batches: 2
  checkpoint_interval: $((MAXSTEPS / 2))
  log_interval: $LOG
  sample_tokens: 16
  progress: false
  plot: false
  device: $DEVICE
EOF
if [[ "$NGPU" -gt 1 ]]; then
    run "$PY" -m microgpt train "$WORK/train.yaml" --nproc "$NGPU"
else
    run "$PY" -m microgpt train "$WORK/train.yaml"
fi
"$PY" benchmarks/gpu_check.py --trainer-row "$WORK/run/metrics.jsonl" "$NGPU" --out "$ROWS/5-trainer.json" >/dev/null

# 4. the same trainer under FSDP2 (fully_shard per block + root; bf16 gathers, fp32 reduce-scatter; compile per block)
if [[ "$NGPU" -gt 1 ]]; then
    run "$PY" -m microgpt train "$WORK/train.yaml" out_dir="$WORK/run-fsdp" train.parallel=fsdp --nproc "$NGPU"
    "$PY" benchmarks/gpu_check.py --trainer-row "$WORK/run-fsdp/metrics.jsonl" "$NGPU" --label "microgpt train (tiny, FSDP2)" \
        --out "$ROWS/6-trainer-fsdp.json" >/dev/null
fi

echo
"$PY" benchmarks/gpu_check.py --table "$ROWS"
