"""Opening a run from its store: the state as of one seq, read as the screens need it, not folded event by event.

A million-step run is a million Step events; folding them one by one took about a minute.
`load` reads instead what the screens show: each scalar as arrays (a thousand column chunks)
turned into bounded series, the epochs, diagnostics and System samples (a few thousand rows
at most), `LAYER_WINDOW` per-layer probes spread over the run and the newest, the list of activation captures and the
latest maps of each layer. All in one read transaction, so the state is exactly the run as of
`last_seq`, and a source goes on with the events after it.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.diagnostics import VERSION as DIAGNOSTICS_VERSION
from engine.diagnostics import number
from engine.store import RunReader
from tui.state import DEFAULT_SMOOTHING, LAYER_WINDOW, RunState, Series, layer_stride, maps_of


@dataclass(frozen=True)
class Snapshot:
    """A run's state as of `last_seq`: the consumer replaces its state with it and folds what follows."""

    state: RunState
    last_seq: int


def load(
    reader: RunReader,
    upto_seq: int | None = None,
    smoothing: float = DEFAULT_SMOOTHING,
    clock: Callable[[], float] = time.time,
) -> Snapshot | None:
    """The run as of `upto_seq` (everything committed if None), or None when it must be folded from the start.

    None for an empty store, and for a run recorded before its writer ran the lecture's checks: the
    app runs them itself, and they must see every event.
    """
    with reader.snapshot():
        last_seq, step, first_wall, last_wall = reader.extent(upto_seq)
        starts = reader.events_of("RunStarted", limit=1, upto_seq=last_seq)
        if not last_seq or not starts or (number(starts[-1].config.get("diagnostics")) or 0) < DIAGNOSTICS_VERSION:
            return None
        state = RunState(clock=clock, smoothing=smoothing)
        state.apply(starts[-1])
        scalars, walls = reader.scalars_and_walls(upto_seq=last_seq)  # one pass over the step chunks
        for name, (steps, values) in scalars.items():
            if len(steps):
                series = state.scalars[name] = Series(smoothing)
                series.extend(steps, values)
        state.walls.extend(*walls)
        for kind in ("Epoch", "Diagnostic", "System"):  # one per epoch, per finding, per 5 s: few
            state.apply_many(reader.events_of(kind, upto_seq=last_seq))
        count = reader.count_of("LayerStats", upto_seq=last_seq)
        picked = reader.events_at("LayerStats", layer_stride(count), upto_seq=last_seq)
        state.layers.load(count, picked, reader.events_of("LayerStats", limit=LAYER_WINDOW, upto_seq=last_seq))
        for _, capture_step, layer in reader.activation_index(upto_seq=last_seq):
            state.note_capture(layer, capture_step)
        for layer in state.captures:
            latest = reader.activation(layer, upto_seq=last_seq)
            if latest is not None:
                state.keep_maps(maps_of(latest))
        state.apply_many(reader.events_of("Filters", limit=1, upto_seq=last_seq))
        for _, _, layer in reader.activation_index("Visualized", upto_seq=last_seq):
            if layer not in state.visualized:
                state.apply(reader.activation(layer, kind="Visualized", upto_seq=last_seq))
        latest_capture = reader.capture_at(upto_seq=last_seq)
        if latest_capture is not None:
            state.apply(latest_capture)
        ended = [e for e in reader.events_of("RunEnded", limit=1, upto_seq=last_seq) if e.seq > starts[-1].seq]
        state.apply_many(ended)
    state.last_seq, state.step, state.first_wall, state.last_wall = last_seq, step, first_wall, last_wall
    return Snapshot(state, last_seq)


def raw_series(reader: RunReader, upto_seq: int) -> Callable[[str], tuple]:
    """`name -> (steps, values)` as the store holds them up to `upto_seq`: what smoothing again needs."""
    return lambda name: reader.scalars(name, upto_seq=upto_seq)


class Opening:
    """A run read as of `step` (everything if None) in a forked process, while this one goes on starting the app.

    Reading a long run is mostly decompressing column chunks and numpy work, and starting the
    app is mostly importing Python modules: in threads of one process they take turns at the
    interpreter lock, in two processes they run side by side. The child hands the finished
    state over pickled (under a megabyte at a million steps). Without fork, or if the child
    fails, `result()` reads the run here (raising what reading it raises).
    """

    def __init__(self, path: str | Path, step: int | None = None) -> None:
        self.path, self.step = Path(path), step
        self._received: Snapshot | None = None
        self._ok = False
        self._thread: threading.Thread | None = None
        if hasattr(os, "fork"):
            theirs, ours = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: read, hand it over, leave without running anything of the parent's
                code = 1
                try:
                    os.close(theirs)
                    data = pickle.dumps(open_at(self.path, step), protocol=pickle.HIGHEST_PROTOCOL)
                    with os.fdopen(ours, "wb") as out:
                        out.write(data)
                    code = 0
                finally:
                    os._exit(code)
            os.close(ours)
            self._thread = threading.Thread(target=self._receive, args=(pid, theirs), daemon=True)
            self._thread.start()

    def _receive(self, pid: int, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if status == 0 and data:
            self._received, self._ok = pickle.loads(data), True

    def result(self) -> Snapshot | None:
        if self._thread is not None:
            self._thread.join()
            if self._ok:
                return self._received
        return open_at(self.path, self.step)


def open_at(path: Path, step: int | None) -> Snapshot | None:
    """The run in the store at `path` as of `step` (everything if None)."""
    with RunReader(path) as reader:
        return load(reader, upto_seq=None if step is None else reader.seq_at_step(step))
