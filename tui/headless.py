"""Headless training: run the trainer in a child process and print progress lines from its events."""

from __future__ import annotations

import queue
import signal
import sys
from typing import Any

from engine.launch import start_trainer
from engine.progress import Progress


def drain(live: Any, progress: Progress, timeout: float) -> bool:
    """Handle one batch of events from the queue; False when none came within `timeout`."""
    try:
        batch = live.get(timeout=timeout)
    except queue.Empty:
        return False
    for event in batch:
        progress.handle(event)
    return True


def train_headless(
    config: dict[str, Any], store: str, resume: str | None = None, overrides: dict[str, Any] | None = None
) -> int:
    """Train in a child process, print progress; Ctrl-C stops at a step boundary with a checkpoint.

    The child stops too if this process dies (the lifeline `child` holds closes with it).
    """
    child = start_trainer(config, resume, overrides)
    process, live = child.process, child.live
    progress = Progress()
    interrupts = 0
    while True:
        try:
            while process.is_alive() or not live.empty():
                drain(live, progress, timeout=0.2)
            while drain(live, progress, timeout=0.1):
                pass
            break
        except KeyboardInterrupt:  # the child got the same SIGINT: it stops and checkpoints
            interrupts += 1
            if interrupts == 1:
                print("stopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)
            else:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
    process.join()
    if progress.started is not None:  # a run that never started said why on stderr already
        print(progress.summary(store), flush=True)
    return process.exitcode if process.exitcode is not None else 1
