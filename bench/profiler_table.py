"""mirante's counts beside PyTorch's FlopCounterMode and torchvision's published figures, every classifier.

For each torchvision classifier at its published crop size, one sample:
- torchvision: `num_params` and `_ops` (GMACs) from the weights' metadata (no download);
- mirante: `engine.profiler.count_by_name`, as `mirante profile --model NAME` counts;
- FlopCounterMode: `torch.utils.flop_counter` over one forward, then a forward and a backward of
  `output.sum()`, on the meta device (its FLOPs halved to MACs for the forward column).

    python bench/profiler_table.py                    # every classifier, a markdown table
    python bench/profiler_table.py --tiny --json F    # three models, for the test suite

Then the wall time of `mirante profile --model M` as a user runs it, a fresh process each time,
beside that of importing torch and torchvision alone (what most of it is).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision import models as tv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import flops, profiler  # noqa: E402 (after the path)

TINY = ["resnet18", "mobilenet_v3_small", "vit_b_32"]
WALL = ["resnet50", "vgg16", "vit_b_16", "regnet_y_128gf"]  # `mirante profile` timed end to end, 3 runs each
ROOT = Path(__file__).resolve().parents[1]


def wall_times(models: list[str], repeat: int) -> dict[str, list[float]]:
    """Seconds of `python -m tui.cli profile --model M > /dev/null` per model, and of importing torch alone."""
    commands = {"import torch, torchvision": ["-c", "import torch, torchvision"]}
    commands |= {f"mirante profile --model {m}": ["-m", "tui.cli", "profile", "--model", m] for m in models}
    out: dict[str, list[float]] = {}
    for label, args in commands.items():
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, check=True, timeout=300)
            out.setdefault(label, []).append(time.perf_counter() - start)
    return out


def flop_counter(name: str, crop: int) -> tuple[int, int]:
    """(forward FLOPs, forward + backward FLOPs) by FlopCounterMode, on meta."""
    build = profiler.builder(name, (3, crop, crop), 1000)
    model, _ = flops.build_for_count(build)
    model.eval()
    x = torch.zeros(1, 3, crop, crop, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return forward, counter.get_total_flops()


def row(name: str) -> dict:
    weights = tv.get_model_weights(name).DEFAULT
    crop = weights.transforms().crop_size[0]
    start = time.perf_counter()
    counts = profiler.count_by_name(name, (3, crop, crop), 1000)
    seconds = time.perf_counter() - start
    forward, training = flop_counter(name, crop)
    return {
        "model": name,
        "input": crop,
        "params": counts.params,
        "tv_params": weights.meta["num_params"],
        "tv_gmacs": weights.meta["_ops"],
        "gmacs": counts.macs / 1e9,
        "fcm_gmacs": forward / 2e9,
        "train_gflops": counts.train_flops / 1e9,
        "fcm_train_gflops": training / 1e9,
        "count_s": seconds,
        "unknown": sorted(counts.unknown),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | input | params (= torchvision) | GMACs: torchvision | mirante | FlopCounterMode "
        "| training GFLOPs: mirante | FlopCounterMode | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "yes" if r["params"] == r["tv_params"] else f"no: {r['tv_params']:,}"
        lines.append(
            f"| {r['model']} | {r['input']} | {r['params']:,} ({same}) | {r['tv_gmacs']:.3f} | {r['gmacs']:.3f} "
            f"| {r['fcm_gmacs']:.3f} | {r['train_gflops']:.2f} | {r['fcm_train_gflops']:.2f} "
            f"| {r['fcm_train_gflops'] / r['train_gflops']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help=f"only {', '.join(TINY)}")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = parser.parse_args()
    names = TINY if args.tiny else tv.list_models(module=tv)
    rows = [row(name) for name in names]
    print(table(rows))
    exact = sum(r["params"] == r["tv_params"] and abs(r["gmacs"] - r["tv_gmacs"]) <= 5e-4 for r in rows)
    print(f"\n{exact} of {len(rows)} models: parameters equal and GMACs within torchvision's rounding (0.0005)")
    seconds = [r["count_s"] for r in rows]
    print(f"mirante's count, in process: {sum(seconds):.1f} s for all, slowest {max(seconds):.2f} s")
    wall = wall_times(TINY[:1] if args.tiny else WALL, 1 if args.tiny else 3)
    for label, times in wall.items():
        print(f"{label}: {', '.join(f'{t:.2f}' for t in times)} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wall": wall}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
