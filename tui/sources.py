"""Where events come from: the trainer's live queue, a store followed while it is written, a replay.

All three are plain objects with the same shape, so one set of screens serves them all and
tests need no App: `read(timeout)` returns the next batch in seq order (maybe empty) and
`done` says that no more will come. A batch may start with a `Snapshot`: the run as of a
seq, read from the store in one go (opening a run, `replay --start`, a live view that fell
far behind); the consumer replaces its state with it and folds the events after it. The app
runs `read` in a worker thread and posts each batch as one message.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue as MultiprocessingQueue
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.launch import LiveEvents, settle
from engine.names import SUFFIX
from engine.store import RunReader, StoreError
from tui.snapshot import Opening, Snapshot, load

PAGE = 5_000  # events read from a store at a time
CREATION_GRACE_S = 5.0  # a file this new that is not (yet) a run store may be one being created
SNAPSHOT_GAP = 20_000  # a live view this far behind reopens the run from the store instead of folding the gap

Item = ev.Event | Snapshot


class FollowSource:
    """A run store, finished or being written: what it holds, opened at once, then new events as they are committed.

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
        self._opening: Opening | None = None

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

    def prefetch(self) -> FollowSource:
        """Start opening the run now, in a thread, while the caller goes on (importing and starting the app)."""
        if self._open() is not None and self._opening is None:
            self._opening = Opening(self.path)
        return self

    def read(self, timeout: float = 0.2) -> list[Item]:
        reader = self._open()
        if reader is None:
            self.sleep(timeout)
            return []
        if self.after == 0:
            snapshot = self._opening.result() if self._opening is not None else load(reader)
            self._opening = None
            if snapshot is not None:
                self.after = snapshot.last_seq
                return [snapshot]
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
    of replay; `start` opens the run as of that step first. `pause()`, `resume()`, `restart()`,
    `jump(step)` and `speed` change the pace.
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
        self._buffer: deque[ev.Event] = deque()
        self._after = 0
        self._exhausted = False
        self._replay_time = 0.0  # recorded seconds released so far
        self._last_wall: float | None = None
        self._tick = clock()
        self._start_step = start  # first read: everything up to this step at once
        self._opening: Opening | None = None

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

    def read(self, timeout: float = 0.1) -> list[Item]:
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
            out.append(self._buffer.popleft())
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
        self._buffer, self._after, self._exhausted = deque(), 0, False
        self._replay_time, self._last_wall, self._tick = 0.0, None, self.clock()
        self.done = False
        self.restarted = True

    def prefetch(self) -> ReplaySource:
        """Start opening the run at `start` now, in a thread, while the caller goes on (starting the app)."""
        if self._start_step is not None and self._opening is None:
            self._opening = Opening(self.reader.path, self._start_step)
        return self

    def jump(self, step: int) -> list[Item]:
        """The run as of `step`, at once (a Snapshot); the replay goes on from there at its pace.

        A run that must be folded from the start (see `tui.snapshot.load`) gets its events up to `step` instead.
        """
        opening, self._opening = self._opening, None
        if opening is not None and opening.step == step:
            snapshot = opening.result()
        else:
            snapshot = load(self.reader, upto_seq=self.reader.seq_at_step(step))
        if snapshot is not None and snapshot.last_seq > self._after:
            self._buffer, self._after, self._exhausted = deque(), snapshot.last_seq, False
            self._last_wall, self._replay_time = snapshot.state.last_wall, 0.0
            return [snapshot]
        out: list[Item] = []
        while True:
            self._refill()
            if not self._buffer:
                return out
            while self._buffer and self._buffer[0].step <= step:
                out.append(self._buffer.popleft())
            if self._buffer:
                self._last_wall = out[-1].wall_time if out else self._last_wall
                self._replay_time = 0.0
                return out

    def close(self) -> None:
        self.reader.close()


class LiveSource:
    """Events from the trainer's queue, in order and without a hole.

    When the UI falls behind, the trainer drops whole batches (it never waits for the UI); the
    events after such a gap are held until the store has committed the gap (the writer commits
    every 250 ms), then the gap is read back from it and everything is delivered in order. A
    gap larger than SNAPSHOT_GAP, or one at the start (a resumed run), comes as a Snapshot.

    A multiprocessing queue is read through `engine.launch.LiveEvents`, so no read blocks on a
    trainer that died in the middle of a put. Once the trainer has exited (`exited`) and all it
    sent is read, the rest comes from the store; a trainer that died without ending its run gets
    its run ended as failed there (`died` says why), and that RunEnded is the last event delivered.
    """

    def __init__(self, live: Any, store: str | Path, process: Any | None = None, since: float | None = None) -> None:
        if isinstance(live, MultiprocessingQueue):
            live = LiveEvents(live, process)
        self.live = live
        self.store = Path(store)
        self.process = process
        self.since = time.time() if since is None else since  # when the trainer started: older events are a past run's
        self.after = 0  # the last seq delivered
        self.done = False
        self.exited = False  # the trainer is gone: nothing can be asked of it (what it sent may still be read)
        self.died: str | None = None  # why the trainer ended without ending its run, in one line
        self.recovered = 0  # events read back from the store after a drop
        self._held: list[ev.Event] = []  # received after a gap the store has not committed yet

    def read(self, timeout: float = 0.1) -> list[Item]:
        if self._held:
            filled = self._fill()
            if filled:
                return filled
            timeout = min(timeout, 0.05)  # the store is behind: look again soon
        try:
            batch = self.live.get(timeout=timeout)
        except queue.Empty:
            if self.process is not None and not self.process.is_alive():
                self.exited = True
                if getattr(self.live, "finished", True):
                    return self._finish()
            return []
        newest = self._held[-1].seq if self._held else self.after
        batch = [e for e in batch if e.seq > newest]
        if not batch:
            return []
        if self._held or batch[0].seq > self.after + 1:
            self._held += batch
            return self._fill()
        self.after = batch[-1].seq
        return batch

    def _finish(self) -> list[Item]:
        """The trainer has exited and what it sent is read: what the store holds beyond it, and the run's end."""
        out = self._fill(give_up=True) if self._held else []
        exitcode = getattr(self.process, "exitcode", None)
        recorded = None
        if exitcode is not None:
            outcome = settle(self.store, exitcode, self.since)
            self.died, recorded = outcome.died, outcome.ended
        delivered = self.after
        try:
            with RunReader(self.store) as reader:
                last = reader.last_seq()
                if last > self.after:
                    out += self._missing(reader, last)
                    self.after = last
        except StoreError:
            pass  # never created: the trainer died before its run started
        if recorded is not None and recorded.seq <= delivered:
            out.append(recorded)  # the queue ran ahead of the store's last commit: the end comes after what it sent
        self.done = True  # last: `died` is set by then
        return out

    def _fill(self, give_up: bool = False) -> list[Item]:
        """The held events behind what the store has of the gap before them; [] while the store lags.

        `give_up`: the trainer has exited, so the store will hold no more: deliver what it has.
        """
        upto = self._held[0].seq - 1
        try:
            with RunReader(self.store) as reader:
                committed = reader.last_seq()
                if committed < upto and not give_up:
                    return []
                missing = self._missing(reader, upto)
        except StoreError:
            if not give_up:
                return []  # not created yet, or being created: the writer is behind
            missing = []
        self.recovered += upto - self.after
        out, self.after, self._held = missing + self._held, self._held[-1].seq, []
        return out

    def _missing(self, reader: RunReader, upto: int) -> list[Item]:
        """What the store has after `self.after` up to `upto`: a Snapshot when that is much, else the events."""
        if self.after == 0 or upto - self.after > SNAPSHOT_GAP:
            snapshot = load(reader, upto_seq=upto)
            if snapshot is not None:
                return [snapshot]
        return self._events(reader, upto)

    def _events(self, reader: RunReader, upto: int) -> list[Item]:
        """The events after `self.after` up to `upto`, as committed."""
        missing: list[Item] = []
        after = self.after
        while after < upto:
            page = [e for e in reader.follow(after, limit=PAGE) if e.seq <= upto]
            if not page:
                break
            missing += page
            after = page[-1].seq
        return missing

    def close(self) -> None:
        pass


@dataclass
class Tagged:
    """One item of one run of a compare: an event, a Snapshot, or news about the run itself."""

    run: int
    item: Any


@dataclass(frozen=True)
class Added:
    """A run joined the compare (it appeared in a watched directory)."""

    path: Path


@dataclass(frozen=True)
class Gone:
    """The run's writer has gone: nothing more will come (without a RunEnded, it crashed)."""


@dataclass(frozen=True)
class Failed:
    """The run's store cannot be read: `error` says why."""

    error: str


class CompareSource:
    """The runs of a compare, each followed as `mirante watch` follows one run, read in turn: a batch holds each
    run's new items `Tagged` with its place in the compare. Directories in `watch` are looked at every
    `rescan_s` seconds, and a run store that appears in one (and passes `keep`) joins the compare.

    Done once every run's writer has gone and no directory is watched.
    """

    compare = True  # the app shows it in the compare panes

    def __init__(
        self,
        paths: list[Path],
        watch: list[Path] = (),
        keep: Callable[[Path], bool] = lambda path: True,
        sleep: Callable[[float], None] = time.sleep,
        rescan_s: float = 2.0,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.watch = [Path(d) for d in watch]
        self.keep = keep
        self.sleep = sleep
        self.rescan_s = rescan_s
        self.done = False
        self._followers = [self._follower(p) for p in self.paths]
        self._ended: set[int] = set()  # runs whose source is done or whose store failed
        self._known = {p.resolve() for p in self.paths}
        self._scanned = time.monotonic()

    def _follower(self, path: Path) -> FollowSource:
        return FollowSource(path, sleep=lambda s: None)

    def prefetch(self) -> CompareSource:
        """Start opening every run now, each in a forked process, while the app starts."""
        for follower in self._followers:
            follower.prefetch()
        return self

    def read(self, timeout: float = 0.2) -> list[Tagged]:
        out: list[Tagged] = self._scan()
        for i, follower in enumerate(self._followers):
            if i in self._ended:
                continue
            try:
                items = follower.read(0)
            except StoreError as exc:
                self._ended.add(i)
                out.append(Tagged(i, Failed(str(exc))))
                continue
            out += [Tagged(i, item) for item in items]
            if follower.done:
                self._ended.add(i)
                out.append(Tagged(i, Gone()))
        self.done = not self.watch and len(self._ended) == len(self._followers)
        if not out and not self.done:
            self.sleep(timeout)
        return out

    def _scan(self) -> list[Tagged]:
        """Runs that appeared in the watched directories since the last look."""
        if not self.watch or time.monotonic() - self._scanned < self.rescan_s:
            return []
        self._scanned = time.monotonic()
        out = []
        for directory in self.watch:
            for path in sorted(directory.glob(f"*{SUFFIX}")):
                if path.resolve() in self._known or not self.keep(path):
                    continue
                self._known.add(path.resolve())
                self.paths.append(path)
                self._followers.append(self._follower(path))
                out.append(Tagged(len(self._followers) - 1, Added(path)))
        return out

    def close(self) -> None:
        for follower in self._followers:
            follower.close()
