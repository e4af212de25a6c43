"""What captures cost: a real training run's time in them, the bytes each adds to the store, and the redraw of a
64-channel layer on the Activations screen.

    python bench/capture_bench.py [--model resnet18] [--epochs 3] [--images 2400] [--every 16] [--tiny] [--json FILE]

1. A run, end to end in this process as `mirante train` runs it: `--model` on the built-in shapes (`--images` of
   them, so that 3 epochs fit a CPU), batch 128, every conv layer and block captured for 10 validation images at
   the default budget (1 MB), every `--every` steps. Each capture is timed where the trainer pays for it (the
   forward pass with the hooks, quantisation, Grad-CAM) and where its events are made (the read-back's delivery);
   the run's wall time and the mean time of a training step come from the same run. The share at the default
   cadence (a capture every 200 steps) is the capture's time over 200 steps' time and its own.
2. Bytes per capture: the run's Capture and Maps events, as stored (their encoded size), per capture.
3. A redraw at 80x24: the Activations pane showing `--model`'s 64-channel layer (resnet18: layer1.0.conv1, 8x8;
   smallcnn: conv4, 16x16) for one image, in the app (Textual's Pilot): the pane's draw and the view's lines.
4. Pictures in a Sixel terminal, end to end: `mirante replay RUN --images sixel` in a pty at 80x24 (10x20-pixel
   cells), Grad-CAM shown (`4`, `v`: the image and its map, as Sixel images); the time from `]` (the next image)
   to the end of the last Sixel image the app writes for it, and the bytes it writes.

`--tiny` runs each part small (the test suite runs it, so the benchmark cannot rot); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import platform
import pty
import re
import select
import signal
import statistics
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine.data  # noqa: E402
from engine import events as ev  # noqa: E402
from engine import recorder, train  # noqa: E402
from engine.config import TrainConfig  # noqa: E402
from engine.store import RunReader  # noqa: E402

DEFAULT_EVERY = 200  # mirante train's --capture-every
WIDE = {"resnet18": "layer1.0.conv1", "smallcnn": "conv4"}


def timed_run(directory: Path, model: str, epochs: int, images: int, every: int, steps: int | None) -> dict:
    """Train as `mirante train` does, timing each capture (taking it, and making its events) and each step."""
    original = engine.data.build_data
    train.build_data = lambda *a, **k: original(*a, **{**k, "shapes_count": images})
    taking, delivering, step_starts = [], [], []
    capture, emit = recorder.Recorder.capture, recorder.Recorder._emit_capture

    def timed_capture(self, step):
        start = time.perf_counter()
        capture(self, step)
        taking.append(time.perf_counter() - start)

    def timed_emit(self, step, captured, host):
        start = time.perf_counter()
        emit(self, step, captured, host)
        delivering.append(time.perf_counter() - start)

    record = recorder.Recorder.record

    def timed_record(self, step, *args, **kwargs):
        step_starts.append(time.perf_counter())
        return record(self, step, *args, **kwargs)

    recorder.Recorder.capture, recorder.Recorder._emit_capture = timed_capture, timed_emit
    recorder.Recorder.record = timed_record
    try:
        config = TrainConfig(model=model, dataset="shapes", epochs=epochs, steps=steps, batch_size=128, device="cpu",
                             runs_dir=str(directory), name="cost", capture_every=every)  # fmt: skip
        start = time.perf_counter()
        assert train.run(config.validate()) == 0
        wall = time.perf_counter() - start
    finally:
        train.build_data = original
        recorder.Recorder.capture, recorder.Recorder._emit_capture = capture, emit
        recorder.Recorder.record = record
    with RunReader(directory / "cost.mirante") as run:
        events = run.events_of("Capture") + run.events_of("Maps")
    count = len([e for e in events if isinstance(e, ev.Capture)])
    stored = sum(len(ev.encode(e)) for e in events)
    gaps = [b - a for a, b in zip(step_starts, step_starts[1:], strict=False)]
    costs = [t + d for t, d in zip(taking, delivering, strict=False)]
    first, rest = costs[0], costs[1:] or costs  # the first capture also plans the budget and imports Captum
    step_s = statistics.median(gaps)
    return {
        "model": model,
        "captures": count,
        "steps": len(step_starts),
        "wall s": wall,
        "step s": step_s,
        "first capture s": first,
        "capture s": statistics.median(rest),
        "all captures s": sum(costs),
        "share of this run": sum(costs) / wall,
        "share at default cadence": statistics.median(rest) / (DEFAULT_EVERY * step_s + statistics.median(rest)),
        "bytes per capture": stored / max(1, count),
    }


def redraw_ms(store: Path, layer: str, repeat: int) -> list[float]:
    """The Activations pane's redraw of `layer` for one image at 80x24, in milliseconds."""
    from tui.app import MiranteApp
    from tui.sources import FollowSource

    app = MiranteApp(FollowSource(store), store=store)
    times: list[float] = []

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(200):
                await pilot.pause(0.05)
                if app.source.done and app.state.ended is not None:
                    break
            await pilot.press("4")
            await pilot.pause()
            pane, view = app.query_one("ActivationsPane"), app.query_one("#view")
            pane.pick(layer)
            await pilot.pause()
            assert f"{layer} ·" in "\n".join(strip.text for strip in view.strips()), "the layer is not shown"
            for i in range(repeat):
                pane.image = i % 10  # another image each time: nothing is cached
                start = time.perf_counter()
                pane.redraw()
                view.strips()
                times.append(1000 * (time.perf_counter() - start))

    asyncio.run(main())
    return times


SIXEL = re.compile(rb"\x1bP[0-9;]*q.*?\x1b\\", re.S)  # one Sixel image, start to end


def sixel_ms(store: Path, repeat: int) -> tuple[list[float], list[int]]:
    """(ms from `]` to the end of the last Sixel image drawn for the next image, bytes written) for each of
    `repeat` images, on the Grad-CAM view of `mirante replay --images sixel` in a pty."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(TERM="xterm-256color", COLORTERM="truecolor", PYTHONPATH=str(ROOT))
        os.execv(sys.executable, [sys.executable, "-m", "tui.cli", "replay", str(store), "--speed", "1000",
                                  "--images", "sixel"])  # fmt: skip
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 800, 480))
    seen = bytearray()

    def read_until(done, timeout: float = 60.0) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if select.select([fd], [], [], 0.02)[0]:
                seen.extend(os.read(fd, 1 << 20))
            if done():
                return time.perf_counter()
        raise RuntimeError(f"the app did not draw in {timeout:g} s:\n{bytes(seen[-1000:])!r}")

    times, sizes = [], []
    try:
        read_until(lambda: b"end of run" in seen)
        os.write(fd, b"4")
        time.sleep(1.0)
        os.write(fd, b"v")
        read_until(lambda: len(SIXEL.findall(seen)) >= 2)
        for _ in range(repeat):
            time.sleep(0.5)  # the previous drawing settled
            if select.select([fd], [], [], 0)[0]:
                seen.extend(os.read(fd, 1 << 20))
            before = len(seen)
            start = time.perf_counter()
            os.write(fd, b"]")
            end = read_until(lambda before=before: len(SIXEL.findall(seen[before:])) >= 2)
            while select.select([fd], [], [], 0.3)[0]:  # the rest of the frame
                seen.extend(os.read(fd, 1 << 20))
            last = list(SIXEL.finditer(seen[before:]))
            times.append(1000 * (end - start))
            sizes.append(sum(len(m.group(0)) for m in last))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return times, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(WIDE))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=2400, help="shapes images in all (training and validation)")
    parser.add_argument("--every", type=int, default=16, help="steps between captures in the timed run")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    steps = 4 if args.tiny else None
    every, repeat = (2, 3) if args.tiny else (args.every, args.repeat)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        figures = timed_run(Path(tmp), args.model, args.epochs, args.images, every, steps)
        print(
            f"{args.model}: {figures['captures']} captures in {figures['steps']} steps, run {figures['wall s']:.1f} s; "
            f"a capture {1000 * figures['capture s']:.0f} ms (the first {1000 * figures['first capture s']:.0f} ms), "
            f"a step {1000 * figures['step s']:.0f} ms; captures took {100 * figures['share of this run']:.2f}% of "
            f"this run (one every {every} steps), {100 * figures['share at default cadence']:.2f}% at one every "
            f"{DEFAULT_EVERY}; {figures['bytes per capture'] / 1e6:.3f} MB per capture",
            flush=True,
        )
        times = redraw_ms(Path(tmp) / "cost.mirante", WIDE[args.model], repeat)
        figures["redraw ms"] = times
        print(f"redraw of {WIDE[args.model]} (64 channels) at 80x24: median {statistics.median(times):.1f} ms, "
              f"max {max(times):.1f} ms", flush=True)  # fmt: skip
        times, sizes = sixel_ms(Path(tmp) / "cost.mirante", repeat)
        figures["sixel ms"], figures["sixel bytes"] = times, sizes
        print(f"Grad-CAM in a Sixel terminal at 80x24, next image: median {statistics.median(times):.0f} ms, "
              f"max {max(times):.0f} ms, {statistics.median(sizes) / 1e3:.0f} kB of Sixel", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
