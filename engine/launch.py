"""Starting the trainer in a child process (spawn) from code that must not import torch itself."""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.control import DETACH

LIVE_QUEUE_BATCHES = 256  # batches of events the UI may fall behind by before the trainer drops some
QUEUE_FLUSH_S = 10.0  # how long an ending trainer waits for its last batches to reach the UI
READ_POLL_S = 0.05  # how often the live queue's reader looks at the pipe (and notes that it was empty)
DRAIN_GRACE_S = 1.0  # after the trainer exited: how long the rest of a batch may take before it is given up
HANDOVER_S = 10.0  # how long a dead trainer's store may stay locked (its data loader workers) before it is left as is


def train_child(
    config: dict[str, Any],
    live: Any,
    commands: Any,
    lifeline: Any,
    resume: str | None,
    overrides: dict[str, Any],
    own_session: bool = False,
) -> None:
    """The child's entry point: torch is imported here, in the child only.

    `own_session`: leave the terminal's session, so that a trainer the app detached from keeps
    running when the terminal goes (the app stops it with a command, not with Ctrl-C).
    """
    parent = os.getppid()
    if own_session and hasattr(os, "setsid"):
        os.setsid()
    from engine.config import TrainConfig
    from engine.train import run

    code = run(
        TrainConfig.from_dict(config),
        live=live,
        commands=commands,
        lifeline=lifeline,
        resume=resume,
        overrides=overrides,
    )
    live.close()
    if os.getppid() != parent:  # the parent detached or died: nobody will read what is left on the queue
        live.cancel_join_thread()
        sys.exit(code)
    # Let what was put on the queue reach the parent, but not forever.
    flusher = threading.Thread(target=live.join_thread, daemon=True)
    flusher.start()
    flusher.join(timeout=QUEUE_FLUSH_S)
    if flusher.is_alive():
        live.cancel_join_thread()
    sys.exit(code)


@dataclass
class Child:
    """A trainer started by `start_trainer`, and the ends of its pipes that the parent holds."""

    process: Any
    live: Any  # lists of events from the trainer, for the UI
    commands: Any  # the app's commands to the trainer (stop, pause, resume, capture, detach)
    lifeline: Any  # the write end of the lifeline: open while this process lives; the trainer stops at its EOF

    def detach(self) -> None:
        """Let the trainer outlive this process. Said on the lifeline itself, so it arrives before the EOF."""
        self.lifeline.send_bytes(DETACH)


def start_trainer(
    config: dict[str, Any],
    resume: str | None = None,
    overrides: dict[str, Any] | None = None,
    own_session: bool = False,
) -> Child:
    """A trainer started in a spawned child; it ends when this process does, unless `Child.detach` was called.

    Keep the returned Child referenced until the trainer is done: dropping it closes the lifeline.
    """
    ctx = mp.get_context("spawn")
    live = ctx.Queue(maxsize=LIVE_QUEUE_BATCHES)
    commands = ctx.Queue()
    theirs, ours = ctx.Pipe(duplex=False)  # (read end, write end); only this process holds the write end
    process = ctx.Process(
        target=train_child,
        args=(config, live, commands, theirs, resume, overrides or {}, own_session),
        name="mirante-trainer",
    )
    process.start()
    theirs.close()  # the child has its own copy
    return Child(process, live, commands, ours)


class LiveEvents:
    """The trainer's live queue, read by a daemon thread, so that no read can block its caller past its timeout.

    `multiprocessing.Queue.get(timeout=...)` waits only for the pipe to become readable, then reads a
    whole message with no timeout: a trainer killed in the middle of putting a batch leaves half a
    message, and as this process holds both ends of the pipe, no EOF ever ends that read. Here the
    read that may hang is this daemon thread's; `get` waits on a local queue, and `finished` says,
    from the trainer's exit (not from the pipe), that nothing more will come.
    """

    def __init__(self, live: Any, process: Any, buffer: int = 16) -> None:
        self.process = process
        self._inbox: queue.Queue = queue.Queue(maxsize=buffer)  # small: a slow reader still makes the trainer drop
        self._empty_at = -math.inf  # when the pipe was last seen empty (monotonic)
        self._exit_seen: float | None = None  # when `finished` first saw the trainer exited
        self.error: str | None = None  # why the reading stopped early (a batch that would not unpickle)
        threading.Thread(target=self._pump, args=(live,), name="mirante-live", daemon=True).start()

    def _pump(self, live: Any) -> None:
        while True:
            try:
                batch = live.get(timeout=READ_POLL_S)
            except queue.Empty:
                self._empty_at = time.monotonic()  # after the get: the pipe held nothing during the whole poll
                continue
            except Exception as exc:  # a batch that does not unpickle, a closed pipe: nothing more can be read
                self.error = f"{type(exc).__name__}: {exc}"
                self._empty_at = math.inf
                return
            self._inbox.put(batch)  # blocks while the consumer is behind: the trainer's puts then fail, and it drops

    def get(self, timeout: float) -> list[ev.Event]:
        """The next batch; queue.Empty when none came within `timeout`."""
        return self._inbox.get(timeout=timeout)

    @property
    def finished(self) -> bool:
        """The trainer has exited and every batch it put has been got (or the rest of a torn one given up)."""
        if self._exit_seen is None:
            if self.process is None or self.process.exitcode is None:
                return False
            self._exit_seen = time.monotonic()
        drained = self._empty_at > self._exit_seen  # read before the inbox: every batch read by then is in it
        if not self._inbox.empty():
            return False
        return drained or time.monotonic() - self._exit_seen > DRAIN_GRACE_S


def how_it_ended(exitcode: int | None) -> str:
    """A process's end in words: "killed by SIGKILL", "exit code 3"."""
    if exitcode is None:
        return "gone"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def remove_stub(store: str | os.PathLike, since: float, empty: bool) -> None:
    """Remove a store that a trainer killed while creating it left with no event: it would block the name.

    Only one made since `since` (this trainer's), and with `empty` only a file of 0 bytes (nothing
    was written to it): a store that holds anything committed, or that was there before, is never touched.
    """
    path = Path(store)
    try:
        stat = path.stat()
    except OSError:
        return
    if stat.st_mtime < since - 1 or (empty and stat.st_size):
        return
    for name in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            path.with_name(path.name + name).unlink()


@dataclass(frozen=True)
class Outcome:
    """What became of a run whose trainer has exited, as `settle` found (and left) its store."""

    ended: ev.RunEnded | None  # the run's RunEnded (its own, or the one written for it); None: it never started
    died: str | None  # why the trainer ended without saying so, in one line; None when it said so itself


def settle(
    store: str | os.PathLike,
    exitcode: int | None,
    since: float,
    who: str = "the trainer process",
    wait: float = HANDOVER_S,
) -> Outcome:
    """End the run in `store` as "failed" if its trainer exited (with `exitcode`) without ending it.

    `since`: when the trainer was started (time.time()): a RunStarted or RunEnded older than that
    belongs to the run before a --resume. A trainer that never started its run and exited with a
    code of its own said why already; one killed by a signal did not. A store still locked after
    `wait` seconds (a data loader worker outliving the trainer) is left as it is: it reads as crashed.
    Imports no torch: the parent that calls this must not.
    """
    from engine.store import RunReader, RunWriter, StoreError  # sqlite3 and numpy, only when a run has ended

    died = f"{who} died ({how_it_ended(exitcode)})"
    before = f"{died} before the run started" if exitcode is None or exitcode < 0 else None
    try:
        reader = RunReader(store)
    except StoreError:  # not created; cut short before SQLite wrote anything (the writer's lock comes first); or
        # killed inside the store's first transaction, its schema (a hot journal left: nothing was committed)
        creating = Path(store).with_name(Path(store).name + "-journal").exists()
        remove_stub(store, since, empty=not creating)
        return Outcome(None, before)
    if reader.last_seq() == 0 and not reader.writer_alive():  # killed before its first commit
        reader.close()
        remove_stub(store, since, empty=False)
        return Outcome(None, before)
    with reader:
        started, ended = reader.started(), reader.ended()
        if ended is not None and ended.wall_time >= since:
            return Outcome(ended, None)  # it ended its run itself
        if started is None or started.wall_time < since:
            return Outcome(ended, before)  # a resumed run that did not start again: as it was
        step = reader.summary().steps
        deadline = time.monotonic() + wait
        while reader.writer_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    reason = f"{died} at step {step}"
    try:
        writer = RunWriter(store, append=True)
        try:
            with RunReader(store) as reader:  # again, under the writer's lock: another settle may have ended it
                ended = reader.ended()
            if ended is not None and ended.wall_time >= since:
                return Outcome(ended, None)
            end = ev.RunEnded(seq=writer.last_seq + 1, wall_time=time.time(), step=step, status="failed", reason=reason)
            writer.write(end)
        finally:
            writer.close()
    except StoreError:  # still locked, not writable, or full: the run reads as crashed, which is true too
        return Outcome(None, reason)
    return Outcome(end, reason)
