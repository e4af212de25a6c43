"""System: CPU and GPU memory (and utilisation, where recorded) over time."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid

from tui.screens.base import Pane, View
from tui.state import RunState
from tui.widgets import Chart, Line

CHARTS = 4


class SystemPane(Pane):
    TITLE = "System"
    KEY = "6"

    def compose(self) -> ComposeResult:
        with Grid(id="system"):
            for i in range(CHARTS):
                yield Chart(id=f"sys{i}")

    def draw(self, state: RunState, view: View) -> None:
        names = sorted(state.system)[:CHARTS]
        for i in range(CHARTS):
            chart = self.query_one(f"#sys{i}", Chart)
            if i < len(names):
                steps, values = state.system[names[i]].arrays()
                chart.set_lines([Line(names[i], steps, values, "magenta")], title=names[i])
            else:
                chart.set_lines([], title="(no metric)" if i else "no System events yet")
