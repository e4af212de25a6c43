"""Headless training: run the trainer in a child process and print progress lines from its events."""

from __future__ import annotations

import queue
import signal
import sys
import time
from typing import Any

from engine.launch import LiveEvents, settle, start_trainer
from engine.progress import Progress


def follow(events: LiveEvents, progress: Progress, timeout: float = 0.1) -> None:
    """Print from the trainer's events until it has exited and all it sent is read; never blocks on its pipe."""
    while True:
        try:
            batch = events.get(timeout=timeout)
        except queue.Empty:
            if events.finished:
                return
            continue
        for event in batch:
            progress.handle(event)


def train_headless(
    config: dict[str, Any], store: str, resume: str | None = None, overrides: dict[str, Any] | None = None
) -> int:
    """Train in a child process, print progress; Ctrl-C stops at a step boundary with a checkpoint.

    The child stops too if this process dies (the lifeline `child` holds closes with it). If the
    child dies first (killed, out of memory), this process notices from its exit, ends the run in
    the store as failed with the reason, says so in one line on stderr and returns 1.
    """
    since = time.time()
    child = start_trainer(config, resume, overrides)
    process = child.process
    events = LiveEvents(child.live, process)
    progress = Progress()
    interrupts = 0
    while True:
        try:
            follow(events, progress)
            break
        except KeyboardInterrupt:  # the child got the same SIGINT: it stops and checkpoints
            interrupts += 1
            if interrupts == 1:
                print("stopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)
            else:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
    process.join()
    code = process.exitcode
    died = None
    if progress.ended is None:  # its RunEnded did not come on the queue (dropped there, or never written)
        outcome = settle(store, code, since)
        progress.ended, died = outcome.ended, outcome.died
    if progress.started is not None:  # a run that never started said why on stderr already (or below)
        print(progress.summary(store), flush=True)
    if died is not None:
        print(f"mirante: error: {died}", file=sys.stderr, flush=True)
        return 1
    return code if code is not None and code >= 0 else 1
