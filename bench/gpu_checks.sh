#!/usr/bin/env bash
# Everything that needs a GPU, in one run: the CUDA tests, the overhead benchmarks, a short
# end-to-end training run. Writes logs under $OUT (default: ./gpu_out). Uses the machine's
# own python3 with torch; mirante's engine needs nothing else (textual is not imported).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
} 2>&1 | tee -a "$OUT/summary.txt"

log "pytest on CUDA: no-sync test, probes, models, engine"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_probes.py tests/test_train.py \
  2>&1 | tail -15 | tee -a "$OUT/summary.txt"

b() { log "overhead $*"; timeout 200 python3 bench/overhead.py --device cuda --precision bf16 "$@" 2>&1 | tail -10 | tee -a "$OUT/summary.txt"; }
# mirante's defaults: gradient norms every step, update ratios every 10, read-back every 10
b --model resnet18 --size 32 --batch 512 --steps 50 --rounds 5
b --model resnet50 --size 224 --batch 128 --steps 20 --rounds 5
b --model resnet18 --size 32 --batch 512 --steps 50 --rounds 5 --probe-every 1 --update-every 1 --log-every 1
b --model smallcnn --size 32 --batch 512 --steps 50 --rounds 5
log "ATen ops per step (CPU count)"
timeout 300 python3 bench/opcount.py 2>&1 | tee -a "$OUT/summary.txt"

log "headless training on CUDA: resnet18 on shapes, 2 epochs"
timeout 120 python3 -m engine.train --model resnet18 --dataset shapes --epochs 2 --batch-size 256 \
  --runs-dir "$OUT" --name gpu-resnet18 --headless > "$OUT/train.log" 2>&1
echo "exit $?" | tee -a "$OUT/summary.txt"
tail -3 "$OUT/train.log" | tee -a "$OUT/summary.txt"
python3 - "$OUT/gpu-resnet18.mirante" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import sys
from engine.store import RunReader
with RunReader(sys.argv[1]) as run:
    s = run.summary()
    print("store:", s.status, s.steps, "steps, best val acc", s.best_val_acc, "duration", round(s.duration or 0, 1), "s")
    steps, tput = run.scalars("throughput/img_s")
    print("img/s over the run: median", sorted(tput)[len(tput) // 2] if len(tput) else None)
    print("kinds:", sorted({e.kind for e in run.follow(0, limit=None)}))
PY
rm -rf "$OUT/gpu-resnet18.ckpt"

echo "== DDP: one run by 1..N GPU processes under torchrun (NCCL) ==" | tee -a "$OUT/summary.txt"
timeout 300 python3 bench/ddp_scaling.py --steps 120 2>&1 | tee -a "$OUT/summary.txt"
