#!/usr/bin/env bash
# The profiler on a GPU: MFU of bf16 training and per-layer times against the measured step,
# then a short training run showing MFU live. Writes logs under $OUT (default: ./gpu_out).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/profile.txt"
for spec in "resnet50 3x224x224 128" "resnet18 3x32x32 512" "mobilenet_v2 3x224x224 128"; do
  set -- $spec
  echo "== mirante profile --model $1 --input $2 --batch $3 --time --device cuda --precision bf16" | tee -a "$OUT/profile.txt"
  timeout 150 python3 -m tui.cli profile --model "$1" --input "$2" --batch "$3" --time --device cuda \
    --precision bf16 --iters 20 --depth 1 --json "$OUT/$1.json" 2>&1 | tail -9 | tee -a "$OUT/profile.txt"
done
echo "== training with MFU live: resnet18 on shapes, batch 512, 3 epochs" | tee -a "$OUT/profile.txt"
timeout 120 python3 -m engine.train --model resnet18 --dataset shapes --epochs 3 --batch-size 512 \
  --warmup-steps 50 --lr 0.2 --runs-dir /tmp/runs --name mfu 2>&1 | tail -6 | tee -a "$OUT/profile.txt"
