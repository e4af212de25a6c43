"""Gradients: per-layer norms now, their history, flags, and the layers x time heatmap of log10 gradient norm."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.screens.base import Pane, View, fmt
from tui.state import RunState
from tui.widgets import Heatmap, literal, sparkline
from tui.widgets.heatmap import colour_scale

COLUMNS = ("layer", "grad norm", "history", "weight norm", "update/weight", "")


class GradientsPane(Pane):
    TITLE = "Gradients"
    KEY = "2"

    def compose(self) -> ComposeResult:
        yield DataTable(id="layers", zebra_stripes=True, cursor_type="row")
        yield Static("log10 gradient norm, layers (rows) x steps (columns)", id="heat-title")
        yield Heatmap(id="heat")

    def on_mount(self) -> None:
        self.query_one("#layers", DataTable).add_columns(*COLUMNS)

    def draw(self, state: RunState, view: View) -> None:
        table = self.query_one("#layers", DataTable)
        history = state.layers.matrix()
        names = state.layer_names
        flags = state.layer_flags()
        cursor = table.cursor_row
        spark = 20 if self.size.width > 90 else 12  # at 80 columns the flag column must show whole
        table.clear()
        if history.size:
            latest = history[-1]
            for i, name in enumerate(names[: history.shape[1]]):
                flag = flags.get(name, "")
                style = "bold red" if flag == "exploding" else ("bold yellow" if flag == "vanishing" else "")
                table.add_row(
                    literal(name, style),
                    fmt(float(latest[i]), ".3g"),
                    sparkline(history[-40:, i], width=spark, log=True),
                    fmt(_at(state.layers.weight, i), ".3g"),
                    fmt(_at(state.layers.ratio, i), ".2g"),
                    Text(flag, style=style),
                )
            if 0 <= cursor < table.row_count:
                table.move_cursor(row=cursor)
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.log10(history.T.astype(np.float64))
            finite = logs[np.isfinite(logs)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            self.query_one("#heat", Heatmap).set_matrix(
                logs, lo=lo, hi=hi, rows=list(names[: logs.shape[0]]), steps=list(state.layers.steps)
            )
            self.query_one("#heat-title", Static).update(
                Text.assemble(
                    f"log10 gradient norm, {len(names)} layers x {history.shape[0]:,} of {state.layers.count:,} probes"
                    + (f" (every {state.layers.stride})" if state.layers.stride > 1 else "")
                    + f": {lo:.1f} ",
                    colour_scale(view.color),
                    f" {hi:.1f}; flagged: {len(flags)}",
                )
            )


def _at(values: np.ndarray | None, i: int) -> float | None:
    return float(values[i]) if values is not None and i < len(values) else None
