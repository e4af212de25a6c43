"""`Emitter`: stamps events, writes every one to the run store, and batches them to a live queue."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable
from typing import Any

from engine import events as ev
from engine.store import RunWriter

QUEUE_BATCH_SECONDS = 0.1  # how often batches go to the UI queue
QUEUE_BATCH_EVENTS = 1000


class Emitter:
    """The trainer's one way out: `emit(Kind, step, **fields)`.

    The store gets every event (the log is complete even if the UI dies). The queue, when
    there is one, gets lists of events; if it is full the batch is dropped, never waited
    for, and the UI catches up from the store. Each of `watchers` is called with every event
    (the live checks, `engine.checks`, whose findings come right after the event causing them).
    """

    def __init__(self, writer: RunWriter, live: Any | None = None, clock=time.time) -> None:
        self.writer = writer
        self.live = live
        self.watchers: list[Callable[[ev.Event], None]] = []  # called with every event emitted (the live checks)
        self.sequencer = ev.Sequencer(last_seq=writer.last_seq, clock=clock)
        self._batch: list[ev.Event] = []
        self._last_send = time.monotonic()

    def emit(self, kind: type[ev.Event], step: int, **fields: Any) -> ev.Event:
        header = self.sequencer.header(step)
        try:
            event = kind(**header, **fields)
            self.writer.write(event)
        except (TypeError, ValueError):
            self.sequencer.last_seq -= 1  # not made or refused, so not kept: its seq goes to the next event
            raise
        if self.live is not None:
            self._batch.append(event)
            if len(self._batch) >= QUEUE_BATCH_EVENTS or time.monotonic() - self._last_send > QUEUE_BATCH_SECONDS:
                self.send()
        for watcher in self.watchers:
            watcher(event)
        return event

    def detach(self, flush: bool = True) -> None:
        """Send nothing live any more: the app detached (what is pending is sent first), or the parent that
        read the queue is gone (`flush` False: nobody would read it)."""
        if flush:
            self.send()
        self.live = None

    def send(self) -> None:
        """Put the pending batch on the live queue now (if there is room)."""
        if self.live is None or not self._batch:
            return
        with contextlib.suppress(queue.Full):  # the app is behind: it reads what it missed from the store
            self.live.put_nowait(self._batch)
        self._batch = []
        self._last_send = time.monotonic()

    def close(self) -> None:
        self.send()
        self.writer.close()


class NullEmitter:
    """What the ranks other than 0 emit to under torchrun: nothing (rank 0 records the run)."""

    writer = None
    live = None
    watchers: tuple = ()  # nothing is emitted: nothing to watch

    def emit(self, kind: type[ev.Event], step: int, **fields: Any) -> None:
        return None

    def send(self) -> None:
        pass

    def detach(self, flush: bool = True) -> None:
        pass

    def close(self) -> None:
        pass
