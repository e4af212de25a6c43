"""The app as a user waits for it: opening a long run, redrawing it, answering keys while a trainer writes.

    python bench/tui_bench.py [--steps 1000000] [--repeat 3] [--skip-ingest] [--tiny] [--json FILE]

1. Open, end to end: a run of `--steps` steps (six scalars a step, a 64-layer LayerStats
   every 10 steps, an Epoch every 10,000 steps, System every 500, activation maps every
   5,000), written as mirante's trainer writes it. `mirante watch RUN` and `mirante replay
   RUN --start LAST` are started in a fresh process in a 120x40 pseudo-terminal, as a user
   starts them; timed from the spawn until the terminal has received the frame whose status
   line shows the run's last seq (the overview is drawn in the same frame, every chart from
   the whole run). Resident memory (VmRSS) of the process right then. `--repeat` runs each.
2. Redraw at that length, smoothing on: in process, a new Step folded, then the Overview's
   redraw and its three charts drawn to their lines (what a 5 Hz tick costs); likewise the
   Gradients pane (its table, sparklines and heatmap).
3. Key latency while a live trainer writes at full speed: `mirante train`'s child (smallcnn
   on shapes, `--log-every 1 --probe-every 1`, every event to the app) feeding the app in
   process at 120x40; a key (space) posted every 0.5 s as the terminal delivers it, and the
   time until its action has run. Also the events/s the app folds from a synthetic source
   offered 150k events/s and unpaced.
4. Bytes per second `mirante replay` of the smallcnn sample at 5x writes to a 120x40 terminal.

`--tiny` runs every part small and fast (the test suite runs it, so the benchmark cannot rot).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import math
import os
import platform
import pty
import select
import signal
import statistics
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textual import events  # noqa: E402

from engine import events as ev  # noqa: E402
from engine.diagnostics import VERSION as DIAGNOSTICS_VERSION  # noqa: E402
from engine.store import RunReader, RunWriter  # noqa: E402
from tui import graphics  # noqa: E402
from tui.app import MiranteApp  # noqa: E402

LAYERS = 64
SIZE = (120, 40)


# --- a long run, as the trainer writes it -------------------------------------------------


def write_big_run(path: Path, steps: int, config: dict | None = None) -> int:
    """Write the run (its config with `config` over the usual one); returns its last seq."""
    rng = np.random.default_rng(0)
    t = np.arange(steps)
    columns = {
        "train/loss": (2.3 * np.exp(-t / (steps / 3)) + 0.05 * rng.random(steps)).tolist(),
        "train/acc": (1 - np.exp(-t / (steps / 3)) * 0.9 - 0.02 * rng.random(steps)).tolist(),
        "lr": (0.1 * 0.5 * (1 + np.cos(np.pi * t / steps))).tolist(),
        "throughput/img_s": (5000 + 200 * rng.random(steps)).tolist(),
        "time/data_s": (0.001 * rng.random(steps)).tolist(),
        "time/compute_s": (0.02 + 0.001 * rng.random(steps)).tolist(),
    }
    names = tuple(columns)
    grads = rng.lognormal(-3, 1, (steps // 10 + 1, LAYERS)).astype(np.float32)
    maps = np.float16(rng.random((8, 16, 16))).tobytes()
    seq = ev.Sequencer(clock=iter(1_700_000_000.0 + 0.01 * i for i in range(10**10)).__next__)
    config = {
        "diagnostics": DIAGNOSTICS_VERSION,
        "total_steps": steps,
        "steps_per_epoch": 10_000,
        "batch_size": 128,
    } | (config or {})
    with RunWriter(path) as writer:
        layers = tuple(f"layer{i}.conv" for i in range(LAYERS))
        writer.write(
            ev.RunStarted(**seq.header(0), name=path.stem, model="bench", dataset="none", layers=layers, config=config)
        )
        for step, values in enumerate(zip(*columns.values(), strict=True), start=1):
            writer.write(ev.Step(**seq.header(step), scalars=dict(zip(names, values, strict=True))))
            if step % 10 == 0:
                g = grads[step // 10]
                writer.write(ev.LayerStats(**seq.header(step), grad_norm=g, weight_norm=g, update_ratio=g))
            if step % 500 == 0:
                writer.write(ev.System(**seq.header(step), metrics={"cpu/rss_gb": 1.0 + step / steps}))
            if step % 5000 == 0:
                writer.write(
                    ev.Activation(**seq.header(step), layer="layer0.conv", sample=0, shape=(8, 16, 16), data=maps)
                )
            if step % 10_000 == 0:
                acc = columns["train/acc"][step - 1]
                writer.write(ev.Epoch(**seq.header(step), epoch=step // 10_000, val_loss=1.0, val_acc=acc))
        writer.write(ev.RunEnded(**seq.header(steps), status="finished"))
    return seq.last_seq


# --- 1. open, end to end -------------------------------------------------------------------


def answer_who(fd: int, output: bytes) -> bool:
    """Answer "who are you" (DA1) once the app asks it, as tmux does (a terminal always answers it; without an
    answer the app waits graphics.WAIT for one). True once answered."""
    if graphics.DA1 not in output:
        return False
    os.write(fd, b"\x1b[?1;2c")
    return True


def open_in_terminal(argv: list[str], marker: str, timeout: float = 60.0) -> tuple[float, float]:
    """(seconds from spawn until `marker` reached the terminal, VmRSS in MB then) for a command in a pty."""
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), COLUMNS=str(SIZE[0]), LINES=str(SIZE[1]))
        os.execv(sys.executable, [sys.executable, "-m", "tui.cli", *argv])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    seen, elapsed, rss, answered = b"", math.nan, math.nan, False
    try:
        while time.perf_counter() - start < timeout:
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    seen += os.read(fd, 1 << 16)
                except OSError:
                    break
                answered = answered or answer_who(fd, seen)
                if marker.encode() in seen:
                    elapsed = time.perf_counter() - start
                    rss = rss_mb(pid)
                    break
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    if math.isnan(elapsed):
        raise RuntimeError(f"{' '.join(argv)}: {marker!r} never reached the terminal:\n{seen[-2000:]!r}")
    return elapsed, rss


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def open_figures(path: Path, last_seq: int, steps: int, repeat: int) -> dict[str, list[float]]:
    marker = f"seq {last_seq:,}"
    out: dict[str, list[float]] = {}
    for name, argv in (("watch", ["watch", str(path)]), ("replay", ["replay", str(path), "--start", str(steps)])):
        for _ in range(repeat):
            seconds, rss = open_in_terminal(argv, marker)
            out.setdefault(f"{name} s", []).append(seconds)
            out.setdefault(f"{name} MB", []).append(rss)
    return out


# --- 2. redraw at length ---------------------------------------------------------------------


def redraw_figures(path: Path, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per Overview redraw (smoothing on) and per Gradients redraw, each after a new Step."""
    from tui.sources import FollowSource
    from tui.widgets import Chart, Heatmap

    out: dict[str, list[float]] = {"overview ms": [], "gradients ms": []}

    async def main() -> None:
        app = MiranteApp(FollowSource(path), store=path)
        async with app.run_test(size=SIZE) as pilot:
            while app.state.ended is None:
                await pilot.pause(0.05)
            await pilot.press("s")
            for pane, key, drawn in (("overview ms", "1", Chart), ("gradients ms", "2", Heatmap)):
                await pilot.press(key)
                await pilot.pause(0.1)
                for i in range(rounds):
                    step = app.state.step + 1
                    app.state.apply(
                        ev.Step(
                            seq=app.state.last_seq + 1,
                            wall_time=0.0,
                            step=step,
                            scalars={"train/loss": 1.0, "train/acc": 0.5, "lr": 0.01},
                        )
                    )
                    if key == "2":
                        g = np.full(LAYERS, 0.1 + i, np.float32)
                        app.state.apply(
                            ev.LayerStats(
                                seq=app.state.last_seq + 1,
                                wall_time=0.0,
                                step=step,
                                grad_norm=g,
                                weight_norm=g,
                                update_ratio=g,
                            )
                        )
                    t0 = time.perf_counter()
                    app.redraw()
                    for widget in app.screen.query(drawn):
                        if widget.region.width:  # the visible ones: what the terminal is sent
                            widget.strips()
                    out[pane].append(1000 * (time.perf_counter() - t0))
                    await pilot.pause(0)
            app.exit()

    asyncio.run(main())
    return out


# --- 3. keys while a trainer writes ----------------------------------------------------------


def key_latency(app: MiranteApp, seconds: float) -> tuple[list[float], float]:
    """Key latencies (ms) over `seconds`, and the events/s folded meanwhile."""
    latencies: list[float] = []
    folded = 0.0

    async def main() -> None:
        nonlocal folded
        async with app.run_test(size=SIZE):  # no Pilot waits: they wait for an idle app, never idle here
            deadline = time.perf_counter() + 120
            while app.state.step < 5 and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
            start_seq, start = app.state.last_seq, time.perf_counter()
            while time.perf_counter() - start < seconds:
                await asyncio.sleep(0.5)
                before, t0 = app.frozen, time.perf_counter()
                app.post_message(events.Key("space", " "))  # as a terminal delivers it
                while app.frozen == before and time.perf_counter() - t0 < 5:
                    await asyncio.sleep(0.001)
                latencies.append(1000 * (time.perf_counter() - t0))
            folded = (app.state.last_seq - start_seq) / (time.perf_counter() - start)
            app.exit()

    asyncio.run(main())
    return latencies, folded


def live_trainer(seconds: float, tmp: Path, steps: int) -> tuple[list[float], float, float]:
    """(key latencies ms, events/s the app took, steps/s the trainer made) with a real trainer writing."""
    from engine.config import TrainConfig
    from engine.launch import start_trainer
    from tui.sources import LiveSource

    config = TrainConfig(
        model="smallcnn",
        dataset="shapes",
        steps=steps,
        log_every=1,
        probe_every=1,
        runs_dir=str(tmp),
        name="live",
        batch_size=32,
    )
    child = start_trainer(config.to_dict(), own_session=True)
    store = tmp / "live.mirante"
    app = MiranteApp(LiveSource(child.live, store, child.process), store=store, commands=child.commands)
    try:
        latencies, folded = key_latency(app, seconds)
        step_rate = app.state.steps_per_second() or 0.0
    finally:
        child.commands.put("stop")
        child.process.join(timeout=60)
        if child.process.is_alive():
            child.process.kill()
    return latencies, folded, step_rate


class PacedSource:
    """Synthetic events at `rate` events/s (None: as fast as the app takes them)."""

    def __init__(self, rate: float | None, batch: int = 1000) -> None:
        self.rate, self.batch = rate, batch
        self.done = False
        self.seq = ev.Sequencer(clock=time.time)
        self.sent = 0
        self._start = time.perf_counter()
        self._step = 0
        self._layers = tuple(f"l{i}" for i in range(LAYERS))
        self._g = [1.0] * LAYERS

    def read(self, timeout: float = 0.1) -> list[ev.Event]:
        if self.sent == 0:
            self.sent = 1
            config = {"total_steps": 10**9, "diagnostics": DIAGNOSTICS_VERSION}
            return [
                ev.RunStarted(
                    **self.seq.header(0), name="b", model="m", dataset="d", layers=self._layers, config=config
                )
            ]
        if self.rate is not None:
            due = self._start + self.sent / self.rate
            if due > time.perf_counter():
                time.sleep(min(timeout, due - time.perf_counter()))
                return []
        out: list[ev.Event] = []
        while len(out) < self.batch:
            self._step += 1
            out.append(ev.Step(**self.seq.header(self._step), scalars={"train/loss": 1.0 / self._step, "lr": 0.1}))
            if self._step % 10 == 0:
                out.append(
                    ev.LayerStats(
                        **self.seq.header(self._step), grad_norm=self._g, weight_norm=self._g, update_ratio=self._g
                    )
                )
        self.sent += len(out)
        return out


# --- 4. bytes to the terminal ----------------------------------------------------------------


def terminal_bytes(seconds: float, speed: float = 5.0) -> float:
    """Bytes per second `mirante replay` writes to a 120x40 pseudo-terminal, after its first 3 s, while the replay
    runs: the window ends with the replay (a window running past its end averaged idle seconds in)."""
    sample = ROOT / "sample_runs" / "smallcnn-shapes.mirante"
    with RunReader(sample) as run:
        _, _, first, last = run.extent()
    replayed = (last - first) / speed  # seconds the replay runs, from when the app has started it
    if replayed <= 3 + 0.5:
        raise RuntimeError(f"{sample.name} replays in {replayed:.1f} s at {speed:g}x: too short for a window after 3 s")
    seconds = min(seconds, replayed - 3)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / sample.name
        copy.write_bytes(sample.read_bytes())
        pid, fd = pty.fork()
        if pid == 0:
            os.environ.update(TERM="xterm-256color", PYTHONPATH=str(ROOT))
            os.execv(sys.executable, [sys.executable, "-m", "tui.cli", "replay", str(copy), "--speed", str(speed)])
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
        total, start, counting, answered = 0, time.perf_counter(), None, False
        try:
            while time.perf_counter() - start < seconds + 3:
                if select.select([fd], [], [], 0.1)[0]:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:
                        break
                    answered = answered or answer_who(fd, data)
                    if counting is None and time.perf_counter() - start > 3:
                        counting = time.perf_counter()
                    if counting is not None:
                        total += len(data)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
        return total / max(time.perf_counter() - (counting or time.perf_counter()), 1e-9)


# --- main ------------------------------------------------------------------------------------


def describe(values: list[float], unit: str, digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f} {unit}"
    return f"median {statistics.median(values):.{digits}f} {unit}, max {max(values):.{digits}f} ({len(values)} runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="length of the run opened (default 1M)")
    parser.add_argument("--repeat", type=int, default=3, help="times each open is measured")
    parser.add_argument("--skip-ingest", action="store_true", help="skip the live trainer and ingest figures")
    parser.add_argument("--tiny", action="store_true", help="everything small and quick (what the tests run)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.repeat = 20_000, 1
    seconds = 1.0 if args.tiny else 8.0  # each key-latency phase
    figures: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "steps": args.steps,
    }
    print(f"machine: {figures['machine']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.mirante"
        t0 = time.perf_counter()
        last_seq = write_big_run(path, args.steps)
        print(
            f"run written: {args.steps:,} steps, {last_seq:,} events, {path.stat().st_size / 1e6:.0f} MB "
            f"in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        opened = open_figures(path, last_seq, args.steps, args.repeat)
        for name in ("watch", "replay"):
            print(
                f"open, `mirante {name}`, to the first complete frame: {describe(opened[f'{name} s'], 's')}; "
                f"resident memory then {describe(opened[f'{name} MB'], 'MB', 0)}",
                flush=True,
            )
        redraw = redraw_figures(path, rounds=5 if args.tiny else 20)
        print(
            f"redraw at {args.steps:,} steps, smoothing on: Overview {describe(redraw['overview ms'], 'ms', 1)}; "
            f"Gradients {describe(redraw['gradients ms'], 'ms', 1)}",
            flush=True,
        )
        figures |= opened | redraw
        if not args.skip_ingest:
            latencies, folded, steps_s = live_trainer(seconds, Path(tmp), steps=2000 if args.tiny else 100_000)
            print(
                f"keys while a live trainer writes at full speed (smallcnn, every step logged and probed, "
                f"{steps_s:,.0f} steps/s): key latency median {statistics.median(latencies):.0f} ms, "
                f"max {max(latencies):.0f} ms; {folded:,.0f} events/s folded",
                flush=True,
            )
            figures |= {"live key ms": latencies, "live events/s": folded, "live steps/s": steps_s}
            for rate in (150_000, None):
                latencies, folded = key_latency(MiranteApp(PacedSource(rate)), seconds)
                label = "unpaced" if rate is None else f"offered {rate:,}/s"
                print(
                    f"synthetic events {label}: {folded:,.0f} events/s folded; key latency median "
                    f"{statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms",
                    flush=True,
                )
                figures |= {f"synthetic {label} events/s": folded, f"synthetic {label} key ms": latencies}
        rate = terminal_bytes(1.0 if args.tiny else 10.0)
        print(f"terminal output, replay at 5x at 120x40: {rate / 1000:.1f} KB/s", flush=True)
        figures["terminal KB/s"] = rate / 1000
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
