"""The app under load: ingest rate against key latency, bytes written to the terminal, first frame of a big replay.

    python bench/tui_bench.py [--skip-big]

1. Ingest: a source hands the app synthetic events (Steps of 5 scalars, a 64-layer LayerStats
   every 10 steps) at a set rate, or as fast as it can; meanwhile a key (space) is pressed
   every 0.5 s, as a terminal delivers it, and the time until its action has run is measured.
   120x40. As from mirante's trainer, which runs the lecture's checks itself; and as from a
   run recorded before the checks existed, for which the app runs them while it folds.
2. Terminal output: `mirante replay` of the smallcnn sample at 5x (about 60 steps/s, like a
   live CPU run; the GPU case is below) in a pseudo-terminal of 120x40; bytes read from it
   per second.
3. First frame: a 1,000,000-step store (as bench/store_bench.py writes it) replayed: seconds
   from creating the app to the overview drawn with the run's name, in process; plus the
   time a fresh `python -c "import tui.cli, tui.app"` takes, which a real start adds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from textual import events  # noqa: E402

from engine import events as ev  # noqa: E402
from engine.diagnostics import VERSION as DIAGNOSTICS_VERSION  # noqa: E402
from tui.app import MiranteApp  # noqa: E402

LAYERS = 64


def synthetic(n_steps: int, checked: bool = True) -> list[ev.Event]:
    """A run's events; `checked`: its writer ran the lecture's checks (as the trainer does), so the app need not."""
    seq = ev.Sequencer()
    out: list[ev.Event] = [
        ev.RunStarted(
            **seq.header(0),
            name="bench",
            model="m",
            dataset="d",
            layers=tuple(f"l{i}" for i in range(LAYERS)),
            config={"total_steps": 10**9} | ({"diagnostics": DIAGNOSTICS_VERSION} if checked else {}),
        )
    ]
    for step in range(1, n_steps + 1):
        out.append(ev.Step(**seq.header(step), scalars={f"s{i}": 1.0 / step for i in range(4)} | {"train/loss": 1.0}))
        if step % 10 == 0:
            g = [float(step % 7 + 1)] * LAYERS
            out.append(ev.LayerStats(**seq.header(step), grad_norm=g, weight_norm=g, update_ratio=g))
    return out


class PacedSource:
    """Cycles through pre-made events at `rate` events/s (None: as fast as the app takes them)."""

    def __init__(self, events: list[ev.Event], rate: float | None, batch: int = 1000) -> None:
        self.events, self.rate, self.batch = events, rate, batch
        self.done = False
        self.sent = 0
        self._i = 1
        self._start = time.perf_counter()

    def read(self, timeout: float = 0.1) -> list[ev.Event]:
        if self.sent == 0:
            self.sent = 1
            return self.events[:1]
        if self.rate is not None:
            due = self._start + self.sent / self.rate
            if due > time.perf_counter():
                time.sleep(min(timeout, due - time.perf_counter()))
                return []
        batch = self.events[self._i : self._i + self.batch] or self.events[1 : 1 + self.batch]
        self._i = self._i + self.batch if self._i + self.batch < len(self.events) else 1
        self.sent += len(batch)
        return batch


def ingest(rate: float | None, seconds: float = 6.0, checked: bool = True) -> tuple[float, float, float]:
    """(events/s folded, median key latency ms, max key latency ms)."""
    source = PacedSource(synthetic(50_000, checked), rate)
    app = MiranteApp(source)
    latencies: list[float] = []
    folded = 0.0

    async def main() -> None:
        nonlocal folded
        async with app.run_test(size=(120, 40)):  # no Pilot waits: they wait for an idle app, never idle here
            await asyncio.sleep(0.5)
            start_version, start = app.state.version, time.perf_counter()
            while time.perf_counter() - start < seconds:
                await asyncio.sleep(0.5)
                before = app.frozen
                t0 = time.perf_counter()
                app.post_message(events.Key("space", " "))  # as a terminal delivers it
                while app.frozen == before and time.perf_counter() - t0 < 5:
                    await asyncio.sleep(0.001)
                latencies.append(1000 * (time.perf_counter() - t0))
            folded = (app.state.version - start_version) / (time.perf_counter() - start)
            app.exit()

    asyncio.run(main())
    return folded, statistics.median(latencies), max(latencies)


def terminal_bytes(seconds: float = 10.0, speed: float = 5.0) -> tuple[float, int]:
    """Bytes per second `mirante replay` writes to a 120x40 pseudo-terminal."""
    store = ROOT / "sample_runs" / "smallcnn-shapes.mirante"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / store.name
        copy.write_bytes(store.read_bytes())
        pid, fd = pty.fork()
        if pid == 0:
            os.environ.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), COLUMNS="120", LINES="40")
            os.execv(sys.executable, [sys.executable, "-m", "tui.cli", "replay", str(copy), "--speed", str(speed)])
        import fcntl

        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        total, start, counting = 0, time.perf_counter(), None
        while time.perf_counter() - start < seconds + 3:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if counting is None and time.perf_counter() - start > 3:  # after start-up and the first frames
                    counting = time.perf_counter()
                if counting is not None:
                    total += len(data)
        os.write(fd, b"q")
        time.sleep(0.5)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        measured = time.perf_counter() - (counting or time.perf_counter())
    return total / max(measured, 1e-9), total


def first_frame() -> tuple[float, float]:
    """(seconds to the first overview of a 1M-step replay in process, seconds to import the app fresh)."""
    from store_bench import write_run

    from tui.sources import ReplaySource

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.mirante"
        write_run(path, 1_000_000, LAYERS, 10)
        elapsed = 0.0

        async def main() -> None:
            nonlocal elapsed
            t0 = time.perf_counter()
            app = MiranteApp(ReplaySource(path, speed=10.0), store=path)
            async with app.run_test(size=(120, 40)) as pilot:
                while "big" not in str(app.query_one("#info").render()) or app.state.version != app._drawn:
                    await pilot.pause(0.01)
                elapsed = time.perf_counter() - t0
                await pilot.press("q")

        asyncio.run(main())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tui.cli, tui.app"], cwd=ROOT, check=True)
    return elapsed, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-big", action="store_true", help="skip the 1M-step replay (it writes ~140 MB)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    runs = [(rate, True) for rate in (10_000, 100_000, 150_000, None)] + [(r, False) for r in (50_000, 100_000, None)]
    for rate, checked in runs:
        folded, median, worst = ingest(rate, checked=checked)
        label = "as fast as it takes" if rate is None else f"offered {rate:,}/s"
        label += "" if checked else ", the app running the checks (a run from before them)"
        print(
            f"ingest ({label}): {folded:,.0f} events/s folded; key latency median {median:.0f} ms, max {worst:.0f} ms"
        )
    rate, total = terminal_bytes()
    print(f"terminal output, replay at 5x (~60 steps/s) at 120x40: {rate / 1000:.1f} KB/s ({total:,} bytes)")
    if not args.skip_big:
        seconds, imports = first_frame()
        print(f"replay of a 1M-step run: first overview {seconds:.2f} s in process; fresh import {imports:.2f} s")


if __name__ == "__main__":
    main()
