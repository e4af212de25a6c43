"""Model: the profiler's per-layer table from RunStarted (type, output, params, MACs, share), by depth."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.screens.base import Pane, View
from tui.state import RunState
from tui.widgets import literal


def si(n: float) -> str:
    for prefix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {prefix}"
    return f"{n:,.0f}"


class ModelPane(Pane):
    TITLE = "Model"
    KEY = "3"
    depth = 2
    DEFAULT_CSS = "ModelPane #table { height: 1fr; }"  # the table scrolls inside the pane: its last rows can be reached

    def compose(self) -> ComposeResult:
        yield Static(id="totals")
        yield DataTable(id="table", zebra_stripes=True, cursor_type="row")

    def on_show(self) -> None:
        self.query_one("#table", DataTable).focus()  # up/down/page keys scroll it as soon as the pane shows

    def on_mount(self) -> None:
        self.query_one("#table", DataTable).add_columns("layer", "type", "output", "params", "MACs", "share")
        self._drawn: tuple | None = None

    def draw(self, state: RunState, view: View) -> None:
        s = state.started
        summary = {k: v for k, v in (s.model_summary if s else {}).items() if k == "layers" or _count(v) is not None}
        key = (state.last_seq if s is None else s.seq, self.depth)
        if key == self._drawn:
            return  # the model does not change during a run
        self._drawn = key
        macs = summary.get("macs") or 0
        self.query_one("#totals", Static).update(  # two lines at 80 columns
            f"{summary.get('params', 0):,} params ({summary.get('trainable_params', 0):,} trainable) · "
            f"{si(macs)}MACs = {si(2 * macs)}FLOPs per image forward · {si(summary.get('train_flops', 0))}FLOPs"
            f" training · a MAC (multiply-add) = 2 FLOPs · depth {self.depth} (<>)"
        )
        table = self.query_one("#table", DataTable)
        table.clear()
        if s is not None and "layers" not in summary:
            table.add_row("(this run was recorded without its per-layer table)", "", "", "", "", "")
        for row in summary.get("layers", []):
            if not _layer_row(row):
                continue  # a damaged or foreign row: left out rather than take the pane down
            name, kind, depth, shape, params, layer_macs = row
            if depth > self.depth:
                continue
            share = f"{100 * layer_macs / macs:.1f}%" if macs else "-"
            label = "  " * (depth - 1) + str(name).rsplit(".", 1)[-1]
            shown = "x".join(map(str, shape)) or "-"
            table.add_row(literal(label), literal(kind), literal(shown), f"{params:,}", si(layer_macs), share)


def _count(value: object) -> int | float | None:
    """A number of the model summary, or None (a store may hold anything)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _layer_row(row: object) -> bool:
    """A row as the profiler writes it: name, type, depth, output shape, params, MACs."""
    if not isinstance(row, (list, tuple)) or len(row) != 6:
        return False
    _, _, depth, shape, params, macs = row
    return (
        isinstance(depth, int)
        and isinstance(shape, (list, tuple))
        and all(_count(v) is not None for v in (params, macs))
    )
