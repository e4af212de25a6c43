"""Messages from the source worker to the app: events arrive in batches, never one by one."""

from __future__ import annotations

from textual.message import Message

from engine import events as ev


class EventsArrived(Message):
    """Events are waiting in the app's inbox (the worker does not send them one message each)."""

    def __init__(self, events: list[ev.Event]) -> None:
        super().__init__()
        self.events = events


class SourceDone(Message):
    """The source will send nothing more (the run ended and was read to the end, or its trainer exited)."""


class SourceFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
