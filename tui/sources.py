"""Where events come from: the trainer's live queue, a store followed while it is written, a replay.

All three are plain objects with the same shape, so one set of screens serves them all and
tests need no App: `read(timeout)` returns the next batch of events in seq order (maybe
empty) and `done` says that no more will come. The app runs `read` in a worker thread and
posts each batch as one message.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.store import RunReader, StoreError

PAGE = 5_000  # events read from a store at a time
CREATION_GRACE_S = 5.0  # a file this new that is not (yet) a run store may be one being created


class FollowSource:
    """A run store, finished or being written: all it holds, then new events as they are committed.

    A store that does not exist yet, or is still empty, is waited for.
    """

    def __init__(self, path: str | Path, page: int = PAGE, sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = Path(path)
        self.page = page
        self.sleep = sleep
        self.after = 0
        self.done = False
        self.writer_alive: bool | None = None
        self._reader: RunReader | None = None

    def _open(self) -> RunReader | None:
        """The reader, once the store exists and is one; None while it is being created."""
        if self._reader is None:
            if not self.path.exists() or self.path.stat().st_size == 0:
                return None
            try:
                self._reader = RunReader(self.path)
            except StoreError:
                if time.time() - self.path.stat().st_mtime < CREATION_GRACE_S:
                    return None  # a writer may be half-way through creating it
                raise
        return self._reader

    def read(self, timeout: float = 0.2) -> list[ev.Event]:
        reader = self._open()
        if reader is None:
            self.sleep(timeout)
            return []
        events = reader.follow(self.after, limit=self.page)
        if events:
            self.after = events[-1].seq
            return events
        self.writer_alive = reader.writer_alive()
        if not self.writer_alive:  # nothing new, and nobody will write more
            self.done = True
        else:
            self.sleep(timeout)
        return []

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class ReplaySource:
    """A saved run re-animated: events released at their recorded pace, `speed` times faster.

    Long pauses in the recording (evaluations, checkpoints) are shortened to `max_gap` seconds
    of replay; `start` jumps to a step first. `pause()`, `resume()`, `restart()`, `jump(step)`
    and `speed` change the pace.
    """

    def __init__(
        self,
        path: str | Path,
        speed: float = 10.0,
        *,
        max_gap: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        page: int = PAGE,
        start: int | None = None,
    ) -> None:
        self.reader = RunReader(path)
        self.speed = speed
        self.max_gap = max_gap
        self.clock = clock
        self.sleep = sleep
        self.page = page
        self.paused = False
        self.done = False
        self.restarted = False  # set when the consumer must start its state afresh
        self._buffer: list[ev.Event] = []
        self._after = 0
        self._exhausted = False
        self._replay_time = 0.0  # recorded seconds released so far
        self._last_wall: float | None = None
        self._tick = clock()
        self._start_step = start  # first read: everything up to this step at once

    def _refill(self) -> None:
        if len(self._buffer) < self.page // 2 and not self._exhausted:
            more = self.reader.follow(self._after, limit=self.page)
            if more:
                self._after = more[-1].seq
                self._buffer.extend(more)
            else:
                self._exhausted = True

    def _advance_clock(self) -> None:
        now = self.clock()
        if not self.paused:
            self._replay_time += (now - self._tick) * self.speed
        self._tick = now

    def read(self, timeout: float = 0.1) -> list[ev.Event]:
        if self._start_step is not None:
            start, self._start_step = self._start_step, None
            return self.jump(start)
        self._refill()
        self._advance_clock()
        out: list[ev.Event] = []
        while self._buffer and not self.paused:
            event = self._buffer[0]
            if self._last_wall is None:
                self._last_wall = event.wall_time
            gap = min(max(0.0, event.wall_time - self._last_wall), self.max_gap * self.speed)
            if gap > self._replay_time:
                break
            self._replay_time -= gap
            self._last_wall = event.wall_time
            out.append(self._buffer.pop(0))
            if len(out) >= self.page:
                break
            if not self._buffer:
                self._refill()
        if not out:
            if self._exhausted and not self._buffer:
                self.done = True
            self.sleep(timeout)
        return out

    def pause(self) -> None:
        self._advance_clock()
        self.paused = True

    def resume(self) -> None:
        self._advance_clock()
        self.paused = False

    def restart(self) -> None:
        """From the beginning: the consumer must clear its state (`restarted` is set until it does)."""
        self._buffer, self._after, self._exhausted = [], 0, False
        self._replay_time, self._last_wall, self._tick = 0.0, None, self.clock()
        self.done = False
        self.restarted = True

    def jump(self, step: int) -> list[ev.Event]:
        """Everything up to `step`, at once; the replay goes on from there at its pace."""
        out: list[ev.Event] = []
        while True:
            self._refill()
            if not self._buffer:
                return out
            while self._buffer and self._buffer[0].step <= step:
                out.append(self._buffer.pop(0))
            if self._buffer:
                self._last_wall = out[-1].wall_time if out else self._last_wall
                self._replay_time = 0.0
                return out

    def close(self) -> None:
        self.reader.close()


class LiveSource:
    """Events from the trainer's queue. Batches dropped while the UI was behind are read back from the store."""

    def __init__(self, live: Any, store: str | Path, process: Any | None = None) -> None:
        self.live = live
        self.store = Path(store)
        self.process = process
        self.after = 0
        self.done = False
        self.recovered = 0  # events read back from the store after a drop

    def read(self, timeout: float = 0.1) -> list[ev.Event]:
        try:
            batch = self.live.get(timeout=timeout)
        except queue.Empty:
            if self.process is not None and not self.process.is_alive():
                self.done = True
            return []
        batch = [e for e in batch if e.seq > self.after]
        if not batch:
            return []
        if batch[0].seq > self.after + 1:
            batch = self._from_store(batch[0].seq - 1) + batch
        self.after = batch[-1].seq
        return batch

    def _from_store(self, upto: int) -> list[ev.Event]:
        """The events after `self.after` up to `upto`, which the queue dropped; the store has them all."""
        missing: list[ev.Event] = []
        try:
            with RunReader(self.store) as reader:
                after = self.after
                while after < upto:
                    page = [e for e in reader.follow(after, limit=PAGE) if e.seq <= upto]
                    if not page:
                        break  # not committed yet: the writer commits every 250 ms, take what is there
                    missing += page
                    after = page[-1].seq
        except StoreError:
            pass
        self.recovered += len(missing)
        return missing

    def close(self) -> None:
        pass
