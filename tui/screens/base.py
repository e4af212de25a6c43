"""What every pane shares: the view options and the `draw(state, view)` contract."""

from __future__ import annotations

import math
from dataclasses import dataclass

from textual.containers import Container

from engine.compare import hms as duration  # h:mm:ss, as the CLI's tables write it
from tui.state import DEFAULT_SMOOTHING, RunState

__all__ = ["Pane", "View", "duration", "fmt", "status_line"]


@dataclass
class View:
    """How the user wants things drawn; changed by keys, read by panes."""

    smooth: bool = False
    smoothing: float = DEFAULT_SMOOTHING  # EMA weight, as TensorBoard's slider
    log_y: bool = False
    window: int | None = None  # charts show only the last this many steps (w)
    color: bool = True
    paused: bool = False  # the user paused the run or the replay: no event says so, the screens must

    def status(self, state: RunState) -> str:
        """The run's status as shown: "paused" while a running run is paused."""
        status = state.status()
        return "paused" if self.paused and status == "running" else status


class Pane(Container):
    """A view of the run. `draw` is called at most 5 times a second (REDRAW_S), only when the state moved."""

    TITLE = ""
    KEY = ""

    def draw(self, state: RunState, view: View) -> None:
        raise NotImplementedError

    def tick(self, state: RunState, view: View) -> None:
        """Once a second, event or not: what shows a clock redraws it (cheaply: no chart)."""


def fmt(value: float | None, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return format(value, spec)


def status_line(parts: list[tuple[str, int]], width: int) -> str:
    """Parts (text, rank) joined by " · " in their order; while the line is wider than `width`, the part of the
    highest rank (the last of equals) is left out. Rank 0 and 1 parts stay: the widget cuts what still overflows."""
    kept = list(parts)

    def line() -> str:
        return " " + " · ".join(text for text, _ in kept)

    while len(line()) > width:
        droppable = [i for i, (_, rank) in enumerate(kept) if rank > 1]
        if not droppable:
            break
        del kept[max(droppable, key=lambda i: (kept[i][1], i))]
    return line()
