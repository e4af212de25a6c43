"""Messages from the source worker to the app: a nudge that events wait in the inbox, the end, a failure."""

from __future__ import annotations

from textual.message import Message


class EventsArrived(Message):
    """Events are waiting in the app's inbox (the worker does not send them one message each)."""


class SourceDone(Message):
    """The source will send nothing more (the run ended and was read to the end, or its trainer exited)."""


class SourceFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
