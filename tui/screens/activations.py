"""Activations: the fixed validation image, the first conv's maps, a deeper layer's, and the first filters."""

from __future__ import annotations

import bisect

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
    DEFAULT_CSS = "ActivationsPane #filters { width: 1fr; }"  # beside the image: what is left of the row, not more

    def compose(self) -> ComposeResult:
        yield Static(id="caption")
        with Horizontal(id="top"):
            yield Picture(id="image")
            yield MapGrid(id="filters")
        yield MapGrid(id="first")
        yield MapGrid(id="deeper")

    def draw(self, state: RunState, view: View) -> None:
        layers = [name for name in state.capture_layers if name != "input"]
        image = state.latest_maps("input", self.step)
        self.query_one("#image", Picture).set_image(image.maps if image else None, "input")
        filters = state.filters
        if filters is not None and filters.maps.ndim == 4:
            out, cin, kh, kw = filters.maps.shape
            self.query_one("#filters", MapGrid).set_maps(  # the first 4 filters, one kernel per input channel
                filters.maps.reshape(out * cin, kh, kw)[: 4 * cin],
                [""] * (4 * cin),
                heading=f"{filters.layer} filters",
                total=out * cin,
                noun="kernels",
            )
        for widget_id, layer in zip(("#first", "#deeper"), layers[:2], strict=False):
            capture = state.latest_maps(layer, self.step)
            self.query_one(widget_id, MapGrid).set_maps(
                capture.maps if capture else None, heading=layer, total=channels(state, layer)
            )
        steps = state.capture_steps
        at = len(steps) if self.step is None else bisect.bisect_right(steps, self.step)
        if at == 0:
            caption = "no capture yet"
        else:
            caption = f"capture {at:,} of {len(steps):,}, showing step {steps[at - 1]:,} (left/right: earlier/later)"
        self.query_one("#caption", Static).update(caption)

    def move(self, state: RunState, delta: int) -> None:
        steps = state.capture_steps
        if not steps:
            return
        current = bisect.bisect_right(steps, self.step) - 1 if self.step is not None else len(steps) - 1
        self.step = steps[max(0, min(len(steps) - 1, current + delta))]


def channels(state: RunState, layer: str) -> int | None:
    """The layer's output channels, from the model's table (a capture keeps only the first few of them)."""
    rows = state.started.model_summary.get("layers", []) if state.started else []
    for row in rows if isinstance(rows, list) else ():
        if isinstance(row, (list, tuple)) and len(row) == 6 and row[0] == layer:
            shape = row[3]
            if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], int):
                return shape[0]
    return None
