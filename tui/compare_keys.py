"""The keys of a compare (several runs in the app), and its status line: a part of `tui.app.MiranteApp`.

Each key changes the compare's state or a compare pane's choice, then asks for a redraw; `check_action` in the
app offers them only in a compare (and the pane-bound ones only on their pane).
"""

from __future__ import annotations

from typing import Any

from tui.compare import CompareState
from tui.screens.base import duration
from tui.screens.compare import CurvesPane, LayersPane


class CompareKeys:
    """The compare's actions, mixed into the app (which has `state`, `view`, `frozen`, `note`, `tell`, `redraw`)."""

    state: Any

    def compare_status(self, state: CompareState) -> list[tuple[str, int]]:
        """The status line's parts for a compare: (text, rank), as `MiranteApp.run_status`."""
        settings = (
            ("frozen", self.frozen),
            (f"smoothed {self.view.smoothing:g}", self.view.smooth),
            ("log y", self.view.log_y),
        )
        return [
            (state.name, 0),
            (state.status(), 0),
            (f"x: {state.axis}", 1),
            *[(name, 1) for name, on in settings if on],
            (f"elapsed {duration(state.elapsed)}", 2),
            *([(self.note, 1)] if self.note else []),
        ]

    def action_axis(self) -> None:
        self.state.next_axis()  # the status line says which
        self.redraw(force=True)

    def action_metric(self) -> None:
        pane = self.active_pane()
        if isinstance(pane, LayersPane):
            pane.metric += 1
        else:
            pane = self.query_one(CurvesPane)
            pane.extra += 1
        self.redraw(force=True)

    def action_sort(self) -> None:
        self.tell(f"sorted by {self.state.next_sort()}")
        self.redraw(force=True)

    def action_reverse_sort(self) -> None:
        self.state.reverse_sort()
        self.redraw(force=True)

    def action_hide(self) -> None:
        """Hide the picked run (the table's cursor) from the charts, or show it again."""
        run = self.state.picked
        if run is None:
            self.tell("hide: pick a run first (up/down, or the table's cursor)")
            return
        hidden = self.state.toggle_hidden(run)
        self.tell(f"{'hidden' if hidden else 'shown'}: {self.state.labels()[run]}")
        self.redraw(force=True)

    def action_show_all(self) -> None:
        self.state.show_all()
        self.redraw(force=True)

    def action_pick(self, delta: int) -> None:
        self.pick_run(self.state.step_picked(delta))

    def pick_run(self, run: int) -> None:
        """Pick a compare's run (the charts draw it over the others): by key, or by the table's cursor."""
        if run != self.state.picked:
            self.state.pick(run)
            self.on_timer(lambda: self.redraw(force=True))()  # (the table's cursor moves while the app tears down too)

    def action_unpick(self) -> None:
        self.state.pick(None)
        self.redraw(force=True)

    def action_layer(self, delta: int) -> None:
        name = self.query_one(CurvesPane).change_layer(self.state, delta)
        self.tell(f"gradient norm of {name}" if name else "no run has per-layer gradients yet")
        self.redraw(force=True)

    def action_at_step(self, delta: int) -> None:
        self.tell(f"layers at {self.query_one(LayersPane).move(self.state, delta)}")
        self.redraw(force=True)
