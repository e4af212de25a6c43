"""Starting the trainer in a child process (spawn) from code that must not import torch itself."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
from typing import Any

LIVE_QUEUE_BATCHES = 256  # batches of events the UI may fall behind by before the trainer drops some
QUEUE_FLUSH_S = 10.0  # how long an ending trainer waits for its last batches to reach the UI


def train_child(
    config: dict[str, Any],
    live: Any,
    commands: Any,
    resume: str | None,
    overrides: dict[str, Any],
    own_session: bool = False,
) -> None:
    """The child's entry point: torch is imported here, in the child only.

    `own_session`: leave the terminal's session, so that a trainer the app detached from keeps
    running when the terminal goes (the app stops it with a command, not with Ctrl-C).
    """
    if own_session and hasattr(os, "setsid"):
        os.setsid()
    from engine.config import TrainConfig
    from engine.train import run

    code = run(TrainConfig.from_dict(config), live=live, commands=commands, resume=resume, overrides=overrides)
    live.close()
    # Let what was put on the queue reach the parent, but not forever: after a detach nobody reads it.
    flusher = threading.Thread(target=live.join_thread, daemon=True)
    flusher.start()
    flusher.join(timeout=QUEUE_FLUSH_S)
    if flusher.is_alive():
        live.cancel_join_thread()
    sys.exit(code)


def start_trainer(
    config: dict[str, Any],
    resume: str | None = None,
    overrides: dict[str, Any] | None = None,
    own_session: bool = False,
) -> tuple[Any, Any, Any]:
    """(process, live event queue, command queue) for a trainer started in a spawned child."""
    ctx = mp.get_context("spawn")
    live = ctx.Queue(maxsize=LIVE_QUEUE_BATCHES)
    commands = ctx.Queue()
    process = ctx.Process(
        target=train_child, args=(config, live, commands, resume, overrides or {}, own_session), name="mirante-trainer"
    )
    process.start()
    return process, live, commands
