"""Model: the profiler's per-layer table from RunStarted (type, output, params, MACs, share), by depth."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.screens.base import Pane, View
from tui.state import RunState


def si(n: float) -> str:
    for prefix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {prefix}"
    return f"{n:,.0f}"


class ModelPane(Pane):
    TITLE = "Model"
    KEY = "3"
    depth = 2

    def compose(self) -> ComposeResult:
        yield Static(id="totals")
        yield DataTable(id="table", zebra_stripes=True, cursor_type="row")

    def on_mount(self) -> None:
        self.query_one("#table", DataTable).add_columns("layer", "type", "output", "params", "MACs", "share")
        self._drawn: tuple | None = None

    def draw(self, state: RunState, view: View) -> None:
        s = state.started
        summary = dict(s.model_summary) if s else {}
        key = (state.last_seq if s is None else s.seq, self.depth)
        if key == self._drawn:
            return  # the model does not change during a run
        self._drawn = key
        macs = summary.get("macs") or 0
        self.query_one("#totals", Static).update(
            f"{summary.get('params', 0):,} params ({summary.get('trainable_params', 0):,} trainable) · "
            f"{si(macs)}MACs = {si(2 * macs)}FLOPs per image forward · {si(summary.get('train_flops', 0))}FLOPs"
            f" training · depth {self.depth} (< > to change) · MACs are multiply-accumulates, FLOPs = 2 x MACs"
        )
        table = self.query_one("#table", DataTable)
        table.clear()
        if s is not None and "layers" not in summary:
            table.add_row("(this run was recorded without its per-layer table)", "", "", "", "", "")
        for name, kind, depth, shape, params, layer_macs in summary.get("layers", []):
            if depth > self.depth:
                continue
            share = f"{100 * layer_macs / macs:.1f}%" if macs else "-"
            label = "  " * (depth - 1) + name.rsplit(".", 1)[-1]
            table.add_row(label, kind, "x".join(map(str, shape)) or "-", f"{params:,}", si(layer_macs), share)
