"""`Remote`: the app's way to command the run it shows, and to say plainly when it cannot.

A run trained in this app takes its commands on the trainer's queue. Any other run being
written on this machine takes them on its command pipe beside the store (`engine.control`),
so `mirante watch` can pause, resume, stop or ask for a capture from any terminal. A replay,
a finished run, or a run written on another machine cannot be commanded: `send` returns the
reason, and the app shows it instead of pretending.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import control


class Remote:
    """Sends pause / resume / stop / capture / detach to a run; `send` returns None, or why it could not."""

    def __init__(self, store: str | Path | None, queue: Any | None = None) -> None:
        self.store = Path(store) if store is not None else None
        self.queue = queue  # the trainer's command queue, for a run trained in this app
        self.owned = queue is not None  # the run ends with this app unless it detaches

    def send(self, command: str) -> str | None:
        if self.queue is not None:
            self.queue.put(command)
            return None
        if self.store is None:
            return "no run to command"
        try:
            control.send(self.store, command)
        except control.ControlError as exc:
            return _short(str(exc), self.store)
        return None


def _short(message: str, store: Path) -> str:
    """The error without the store's path in front: the app's status line names the run already."""
    prefix = f"{store}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
