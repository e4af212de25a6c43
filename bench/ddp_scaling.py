"""Images/s of one run trained by 1, 2, ... N processes under torchrun (DistributedDataParallel).

    python bench/ddp_scaling.py                       # every GPU here: resnet18 at 32x32, 256 images per GPU
    python bench/ddp_scaling.py --device cpu --procs 1 2 --model smallcnn --per-proc 64

Each point is a real `python -m torch.distributed.run ... -m engine.train` run of --steps steps
(synthetic-free: the built-in shapes data, on the device), the global batch growing with the
process count (weak scaling); images/s is the median of the logged intervals after the first
third, as mirante records it (all ranks together).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.store import RunReader  # noqa: E402


def measure(procs: int, args: argparse.Namespace, runs: Path) -> float:
    name = f"scale-{procs}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    command += ["-m", "engine.train", "--headless", "--model", args.model, "--device", args.device]
    command += ["--batch-size", str(args.per_proc * procs), "--steps", str(args.steps), "--capture-every", "0"]
    command += ["--runs-dir", str(runs), "--name", name]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    with RunReader(runs / f"{name}.mirante") as run:
        steps, images = run.scalars("throughput/img_s")
    return statistics.median(images[len(images) // 3 :].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--procs", type=int, nargs="+", default=None, help="process counts (default: 1..GPUs)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--per-proc", type=int, default=256, help="images per process per step")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if args.procs is None:
        import torch

        count = torch.cuda.device_count() if args.device == "cuda" else 1
        args.procs = list(range(1, count + 1))
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, device {args.device}; model {args.model}")
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for procs in args.procs:
            rate = measure(procs, args, Path(tmp))
            base = base or rate / procs
            print(f"{procs} process(es): {rate:,.0f} img/s ({rate / (base * procs):.2f} of linear)", flush=True)


if __name__ == "__main__":
    main()
