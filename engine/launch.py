"""Starting the trainer in a child process (spawn) from code that must not import torch itself."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from engine.control import DETACH

LIVE_QUEUE_BATCHES = 256  # batches of events the UI may fall behind by before the trainer drops some
QUEUE_FLUSH_S = 10.0  # how long an ending trainer waits for its last batches to reach the UI


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
