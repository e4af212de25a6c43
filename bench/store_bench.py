"""Run-store benchmark: write a long run, then open it and read a downsampled loss curve.

    python bench/store_bench.py [--steps 1000000] [--layers 64] [--every 10] [--dir DIR]

Writes `--steps` Step events of five scalars each and a LayerStats of `--layers` layers every
`--every` steps through `RunWriter`, as a trainer would, then prints events/s written
(creating the events included, from values made up front; timed until `close()` has
committed everything), bytes per step
on disk, and the time to open the run in a fresh process and read `train/loss` downsampled
to 500 points.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import events as ev  # noqa: E402
from engine.store import RunWriter  # noqa: E402

READ_SNIPPET = """
import sys, time
t0 = time.perf_counter()
from engine.store import RunReader
t1 = time.perf_counter()
with RunReader(sys.argv[1]) as run:
    series = run.series("train/loss", points=500)
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f} {len(series)}")
"""


def fake_metrics(steps: int, layers: int, every: int) -> dict[str, np.ndarray]:
    """Noisy, realistic-looking values, made up front so that the timing is of the store."""
    rng = np.random.default_rng(0)
    t = np.arange(steps)
    n_stats = (steps + every - 1) // every
    return {
        "train/loss": 2.3 * np.exp(-t / (steps / 3)) + 0.05 * rng.random(steps),
        "lr": 0.1 * 0.5 * (1 + np.cos(np.pi * t / steps)),
        "throughput/img_s": 5000 + 200 * rng.random(steps),
        "time/data_s": 0.001 * rng.random(steps),
        "time/compute_s": 0.02 + 0.001 * rng.random(steps),
        "grad_norm": rng.lognormal(-3, 1, (n_stats, layers)).astype(np.float32),
        "weight_norm": rng.uniform(1, 10, (n_stats, layers)).astype(np.float32),
        "update_ratio": rng.lognormal(-7, 0.5, (n_stats, layers)).astype(np.float32),
    }


def write_run(path: Path, steps: int, layers: int, every: int, config: dict | None = None) -> tuple[int, float, float]:
    """Write the run; `config` goes into its RunStarted (the app reads `diagnostics` and `total_steps` there)."""
    m = fake_metrics(steps, layers, every)
    scalar_names = ("train/loss", "lr", "throughput/img_s", "time/data_s", "time/compute_s")
    columns = [m[name].tolist() for name in scalar_names]
    seq = ev.Sequencer()
    names = tuple(f"layer{i}.conv" for i in range(layers))
    started = time.perf_counter()
    writer = RunWriter(path)
    writer.write(
        ev.RunStarted(**seq.header(0), name=path.stem, model="bench", dataset="none", layers=names, config=config or {})
    )
    for step, values in enumerate(zip(*columns, strict=True)):
        writer.write(ev.Step(**seq.header(step), scalars=dict(zip(scalar_names, values, strict=True))))
        if step % every == 0:
            i = step // every
            writer.write(
                ev.LayerStats(
                    **seq.header(step),
                    grad_norm=m["grad_norm"][i],
                    weight_norm=m["weight_norm"][i],
                    update_ratio=m["update_ratio"][i],
                )
            )
    writer.write(ev.RunEnded(**seq.header(steps), status="finished"))
    caller = time.perf_counter() - started  # what the training loop itself spent
    writer.close()
    return seq.last_seq, caller, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.mirante"
        n_events, caller_s, seconds = write_run(path, args.steps, args.layers, args.every)
        size = path.stat().st_size
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            [sys.executable, "-c", READ_SNIPPET, str(path)], capture_output=True, text=True, check=True, cwd=root
        ).stdout.split()
        import_s, read_s, buckets = float(out[0]), float(out[1]), int(out[2])

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"steps: {args.steps:,}, layers: {args.layers}, LayerStats every {args.every} steps")
    print(f"write: {n_events:,} events in {seconds:.2f} s = {n_events / seconds:,.0f} events/s")
    print(f"caller: {caller_s:.2f} s in event creation and write() = {1e6 * caller_s / n_events:.1f} us/event")
    print(f"disk: {size:,} bytes = {size / args.steps:.1f} bytes/step")
    print(f"open + read train/loss at 500 points: {read_s:.3f} s ({buckets} buckets; import {import_s:.3f} s)")


if __name__ == "__main__":
    main()
