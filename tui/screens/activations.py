"""Activations: the fixed validation image, the first conv's maps, a deeper layer's, and the first filters."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from tui.screens.base import Pane, View
from tui.state import RunState
from tui.widgets import MapGrid, Picture


class ActivationsPane(Pane):
    TITLE = "Activations"
    KEY = "4"
    step: int | None = None  # None: the latest capture; left/right keys step through them

    def compose(self) -> ComposeResult:
        yield Static(id="caption")
        with Horizontal(id="top"):
            yield Picture(id="image")
            yield MapGrid(id="filters")
        yield MapGrid(id="first")
        yield MapGrid(id="deeper")

    def draw(self, state: RunState, view: View) -> None:
        layers = [name for name in state.activations if name != "input"]
        image = state.latest_maps("input", self.step)
        self.query_one("#image", Picture).set_image(image.maps if image else None, "input")
        filters = state.filters
        if filters is not None and filters.maps.ndim == 4:
            out, cin, kh, kw = filters.maps.shape
            self.query_one("#filters", MapGrid).set_maps(
                filters.maps.reshape(out * cin, kh, kw)[: 4 * cin], [f"{filters.layer} filters"]
            )
        for widget_id, layer in zip(("#first", "#deeper"), layers[:2], strict=False):
            capture = state.latest_maps(layer, self.step)
            self.query_one(widget_id, MapGrid).set_maps(capture.maps if capture else None, [layer])
        steps = sorted({m.step for kept in state.activations.values() for m in kept})
        shown = "-" if image is None else str(image.step)
        self.query_one("#caption", Static).update(
            f"captures at steps {', '.join(map(str, steps[-8:])) or '-'}; showing step {shown}"
            " (left/right: earlier/later)"
        )

    def move(self, state: RunState, delta: int) -> None:
        steps = sorted({m.step for kept in state.activations.values() for m in kept})
        if not steps:
            return
        current = steps.index(self.step) if self.step in steps else len(steps) - 1
        self.step = steps[max(0, min(len(steps) - 1, current + delta))]
