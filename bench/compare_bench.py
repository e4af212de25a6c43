"""A compare as a user waits for it: many long runs opened at once, and keys while several are being written.

    python bench/compare_bench.py [--runs 16] [--steps 100000] [--live 4] [--repeat 3] [--tiny] [--json FILE]

1. Open, end to end: `--runs` stores of `--steps` steps each (written as `bench/tui_bench.py` writes
   its long run: six scalars a step, a 64-layer LayerStats every 10 steps, an Epoch every 10,000,
   each run its own learning rate), in one directory. `mirante compare DIR` is started in a fresh
   process in a 120x40 pseudo-terminal, as a user starts it, and timed from the spawn until the
   terminal has received the frame whose status line says every run has finished (the Curves pane
   is drawn in that frame, every chart from every run, whole). Resident memory (VmRSS) then.
2. A redraw of the Curves pane with every run open, smoothing on: in process, a new Step folded into
   one run, then the pane's redraw and its four charts drawn to their lines (what a 5 Hz tick costs).
3. Key latency while `--live` of the runs are being written: that many writer processes append
   steps to their stores at a trainer's pace (1,000 steps/s each, a LayerStats every 10 steps), the
   app (in process, 120x40) follows every store, and a key (space) is posted every 0.5 s as the
   terminal delivers it: the time until its action has run.

`--tiny` runs every part small and fast (the test suite runs it, so the benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tui_bench import SIZE, describe, key_latency, open_in_terminal, write_big_run  # noqa: E402

from engine import events as ev  # noqa: E402
from engine.diagnostics import VERSION as DIAGNOSTICS_VERSION  # noqa: E402
from engine.store import RunWriter  # noqa: E402
from tui.app import MiranteApp  # noqa: E402
from tui.sources import CompareSource  # noqa: E402

LAYERS = 64
LIVE_STEPS_S = 1000


def write_runs(directory: Path, runs: int, steps: int) -> list[Path]:
    """`runs` finished stores of `steps` steps, each its own learning rate (written two at a time)."""
    paths = [directory / f"run{i:02d}.mirante" for i in range(runs)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.starmap(write_big_run, [(p, steps, {"lr": 0.01 * (i + 1)}) for i, p in enumerate(paths)])
    return paths


def write_live(path: Path, seconds: float, lr: float) -> None:
    """A run being written for `seconds` at LIVE_STEPS_S steps a second, as a trainer logging every step would."""
    seq = ev.Sequencer()
    layers = tuple(f"layer{i}.conv" for i in range(LAYERS))
    config = {"diagnostics": DIAGNOSTICS_VERSION, "steps_per_epoch": 10_000, "batch_size": 128, "lr": lr}
    rng = np.random.default_rng(0)
    with RunWriter(path) as writer:
        writer.write(ev.RunStarted(**seq.header(0), name=path.stem, model="bench", dataset="none", layers=layers,
                                   config=config))  # fmt: skip
        start, step = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            step += 1
            loss = 2.3 * np.exp(-step / 20_000) + 0.05 * rng.random()
            writer.write(ev.Step(**seq.header(step), scalars={"train/loss": loss, "lr": lr, "throughput/img_s": 5e3}))
            if step % 10 == 0:
                g = rng.lognormal(-3, 1, LAYERS).astype(np.float32)
                writer.write(ev.LayerStats(**seq.header(step), grad_norm=g, weight_norm=g, update_ratio=g))
            ahead = step / LIVE_STEPS_S - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
        writer.write(ev.RunEnded(**seq.header(step), status="finished"))


# --- 1. open, end to end --------------------------------------------------------------------------


def open_figures(directory: Path, runs: int, repeat: int) -> dict[str, list[float]]:
    marker = f"{runs} finished"  # the status line once every run is read and drawn
    out: dict[str, list[float]] = {"open s": [], "open MB": []}
    for _ in range(repeat):
        seconds, rss = open_in_terminal(["compare", str(directory)], marker)
        out["open s"].append(seconds)
        out["open MB"].append(rss)
    return out


# --- 2. redraw with every run open ------------------------------------------------------------------


def redraw_figures(paths: list[Path], rounds: int) -> list[float]:
    """Milliseconds per Curves redraw (smoothing on) after a new Step in one run."""
    from tui.sources import Tagged
    from tui.widgets import Chart

    out: list[float] = []

    async def main() -> None:
        app = MiranteApp(CompareSource(paths))
        async with app.run_test(size=SIZE) as pilot:
            while not app.source.done or app._inbox:
                await pilot.pause(0.05)
            await pilot.press("s")
            await pilot.pause(0.1)
            state = app.state
            for i in range(rounds):
                run = i % len(paths)
                member = state.members[run].state
                step = member.step + 1
                event = ev.Step(seq=member.last_seq + 1, wall_time=0.0, step=step, scalars={"train/loss": 1.0})
                state.apply(Tagged(run, event))
                t0 = time.perf_counter()
                app.redraw()
                for widget in app.screen.query(Chart):
                    if widget.region.width:
                        widget.strips()
                out.append(1000 * (time.perf_counter() - t0))
                await pilot.pause(0)
            app.exit()

    asyncio.run(main())
    return out


# --- 3. keys while runs are written ------------------------------------------------------------------


def live_figures(paths: list[Path], directory: Path, live: int, seconds: float) -> tuple[list[float], float]:
    """(key latencies in ms, events/s the app folded) while `live` writer processes write runs of their own."""
    writers = []
    context = multiprocessing.get_context("spawn")
    live_paths = [directory / f"live{i}.mirante" for i in range(live)]
    for i, path in enumerate(live_paths):
        writer = context.Process(target=write_live, args=(path, seconds + 30, 0.5 + i), daemon=True)
        writer.start()
        writers.append(writer)
    try:
        while not all(p.exists() and p.stat().st_size for p in live_paths):
            time.sleep(0.05)
        return key_latency(MiranteApp(CompareSource(paths + live_paths)), seconds)
    finally:
        for writer in writers:
            writer.kill()
            writer.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=16, help="runs compared (default 16)")
    parser.add_argument("--steps", type=int, default=100_000, help="length of each run (default 100,000)")
    parser.add_argument("--live", type=int, default=4, help="runs being written during the key latency (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="times the open is measured")
    parser.add_argument("--tiny", action="store_true", help="everything small and quick (what the tests run)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.tiny:
        args.runs, args.steps, args.live, args.repeat = 4, 5_000, 2, 1
    seconds = 1.0 if args.tiny else 10.0
    figures: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "runs": args.runs,
        "steps": args.steps,
    }
    print(f"machine: {figures['machine']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "runs"
        directory.mkdir()
        t0 = time.perf_counter()
        paths = write_runs(directory, args.runs, args.steps)
        size = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{args.runs} runs of {args.steps:,} steps written: {size:.0f} MB in {time.perf_counter() - t0:.0f} s")
        opened = open_figures(directory, args.runs, args.repeat)
        print(
            f"open, `mirante compare DIR` of {args.runs} runs, to the first complete frame: "
            f"{describe(opened['open s'], 's')}; resident memory then {describe(opened['open MB'], 'MB', 0)}",
            flush=True,
        )
        redraw = redraw_figures(paths, rounds=5 if args.tiny else 20)
        print(f"Curves redraw with {args.runs} runs open, smoothing on: {describe(redraw, 'ms', 1)}", flush=True)
        live_dir = Path(tmp) / "live"
        live_dir.mkdir()
        latencies, folded = live_figures(paths, live_dir, args.live, seconds)
        print(
            f"keys while {args.live} runs are written ({LIVE_STEPS_S:,} steps/s each) beside {args.runs} open: "
            f"key latency median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms; "
            f"{folded:,.0f} events/s folded",
            flush=True,
        )
        figures |= opened | {"redraw ms": redraw, "live key ms": latencies, "live events/s": folded}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
