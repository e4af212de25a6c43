"""The compare panes: the runs' curves overlaid, the table of runs, their layers side by side, and what their
filters respond to.

Each draws from a `CompareState` (one RunState per run) and the view options, as the single-run panes
draw from a RunState. The runs are named by what differs in their configs (`lr=0.5`); runs that
differ only by seed are one line with a band (`lr=0.5 x3 seeds`).
"""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.widgets import DataTable, Static

from engine.compare import FIGURES, cell, table
from engine.visualize_images import images_of
from tui.compare import AXIS_SCALE, AXIS_TITLE, LAYER_METRICS, CompareState
from tui.screens.base import Pane, View
from tui.widgets import Chart, Heatmap, literal
from tui.widgets.base import CachedLines
from tui.widgets.chart import swatch
from tui.widgets.heatmap import colour_scale

SHORT = {"best val acc": "val acc", "best epoch": "epoch", "final train loss": "train loss", "wall s": "wall"}
EXTRA = ("learning rate", "img/s", "grad norm")  # the fourth chart's metric, m to change


LEGEND_LINES = 2


def legend(state: CompareState, width: int, color: bool) -> Text:
    """`━ lr=0.01  ━ lr=0.5 x2 seeds` for the shown runs in the table's order, the picked one in reverse, as many as
    fit whole in LEGEND_LINES lines of `width`; then how many more there are, hidden, unreadable."""
    groups = state.groups()
    pieces = []
    for group in groups:
        piece = swatch(*state.color(group[0]), color)
        piece.append(" ")
        piece.append_text(literal(state.group_label(group), "reverse" if state.picked in group else ""))
        pieces.append(piece)
    hidden = sum(m.hidden for m in state.members)
    unreadable = sum(m.error is not None for m in state.members)

    def tail(left: int) -> str:
        said = [f"+{left} more (2: runs)"] if left else []
        said += [f"{hidden} hidden (h)"] if hidden else []
        said += [f"{unreadable} unreadable"] if unreadable else []
        if not groups and not hidden:
            said.append("no run has data yet" if state.members else "no runs")
        return ", ".join(said)

    lines: list[Text] = [Text()]
    placed = 0
    for piece in pieces:
        line = lines[-1]
        last = len(lines) == LEGEND_LINES
        after = tail(len(pieces) - placed - 1)
        need = line.cell_len + (2 if line.plain else 0) + piece.cell_len + (len(after) + 2 if last and after else 0)
        if need > width and line.plain:
            if last:
                break
            lines.append(Text())
            line = lines[-1]
        if line.plain:
            line.append("  ")
        line.append_text(piece)
        placed += 1
    said = tail(len(pieces) - placed)
    if said:
        lines[-1].append(("  " if lines[-1].plain else "") + said, style="dim")
    out = Text("\n").join(lines)
    out.no_wrap, out.overflow = True, "ellipsis"
    return out


class CurvesPane(Pane):
    """Train and validation loss, validation accuracy, and one of learning rate, images/s and a layer's gradient
    norm (m), each run a colour, on the x axis the user picked (x)."""

    TITLE = "Curves"
    KEY = "1"

    extra = 0  # which of EXTRA the fourth chart shows
    layer = 0  # which layer's gradient norm, in the order of CompareState.layer_names

    def compose(self) -> ComposeResult:
        yield Static(id="legend")
        with Grid(id="compare-charts"):
            yield Chart(id="c-train")
            yield Chart(id="c-vloss")
            yield Chart(id="c-vacc")
            yield Chart(id="c-extra")

    def draw(self, state: CompareState, view: View) -> None:
        bar = self.query_one("#legend", Static)
        bar.update(legend(state, bar.size.width or self.app.size.width, view.color))
        layers = state.layer_names()
        layer = layers[self.layer % len(layers)] if layers else ""
        metric = EXTRA[self.extra % len(EXTRA)]
        charts = (
            ("#c-train", "train loss", "train loss"),
            ("#c-vloss", "val loss", "val loss"),
            ("#c-vacc", "val acc", "val acc"),
            ("#c-extra", metric, f"grad norm {layer}" if metric == "grad norm" else metric),
        )
        for selector, name, title in charts:
            lines, lacking = state.curves(name, view.smooth, layer)
            if lacking and lines:  # some runs have it, some not (yet): say so; none has: the chart says "no data"
                title += f" ({len(lacking)} without)"
            chart = self.query_one(selector, Chart)
            chart.set_x(AXIS_TITLE[state.axis], AXIS_SCALE[state.axis])
            chart.set_lines(lines, title=title, log_y=view.log_y and name != "val acc", percent=name == "val acc")

    def change_layer(self, state: CompareState, delta: int) -> str:
        """The next layer for the gradient norm chart (which then shows it); its name."""
        layers = state.layer_names()
        self.extra = EXTRA.index("grad norm")
        if not layers:
            return ""
        self.layer = (self.layer + delta) % len(layers)
        return layers[self.layer]


class RunsPane(Pane):
    """The table of runs: what differs, status, best validation accuracy and its epoch, final train loss, images/s,
    wall time, worst finding. Sorted by o (O reverses), a run hidden or shown with h; the cursor picks the run the
    charts draw over the others."""

    TITLE = "Runs"
    KEY = "2"

    _shown: tuple | None = None  # what the table holds now

    def compose(self) -> ComposeResult:
        yield Static(id="runs-head")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)

    def draw(self, state: CompareState, view: View) -> None:
        rows = state.rows()
        names, body = table(rows)
        keys = len(names) - len(FIGURES) - 1  # the differing keys, between the run's name and its figures
        # the figures first, then the keys: at 80 columns the figures are what shows
        columns = [0, *range(keys + 1, len(names)), *range(1, keys + 1)]
        order = state.order()
        grid = self.query_one("#runs", DataTable)
        cells = [[cell(names[i], body[run][i]) for i in columns] for run in order]
        column, descending = state.sort
        arrow = {column: " ↓" if descending else " ↑"} if column else {}
        header = [SHORT.get(names[i], names[i]) + arrow.get(names[i], "") for i in columns]
        hidden = [state.members[run].hidden for run in order]
        shown = (header, cells, hidden, order, view.color)
        if shown != self._shown:  # rebuilt only when what it says changed: a rebuild loses the table's scroll
            self._shown = shown
            grid.clear(columns=True)
            grid.add_columns("", *header)
            for run, values, off in zip(order, cells, hidden, strict=True):
                style = "dim strike" if off else ""
                mark = swatch(*state.color(run), view.color)
                grid.add_row(mark, *(literal(v, style) for v in values), key=str(run))
        if state.picked in order and grid.cursor_row != order.index(state.picked):
            grid.move_cursor(row=order.index(state.picked), animate=False)
        said = f"sorted by {column} {'↓' if descending else '↑'}" if column else "in the order given"
        shown = len(state.members) - sum(m.hidden for m in state.members)
        head = f"{len(rows)} runs, {shown} shown · {said} · o sort  O reverse  h hide/show  a show all"
        self.query_one("#runs-head", Static).update(literal(head, "dim"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The user moved the cursor: pick its run. A stale event (a rebuild put the cursor on row 0, then `draw` moved
        it to the picked run) is left alone, or the two would pick in turn for ever."""
        if event.cursor_row != event.data_table.cursor_row or event.row_key.value is None:
            return
        self.app.pick_run(int(event.row_key.value))

    def cursor_run(self) -> int | None:
        grid = self.query_one("#runs", DataTable)
        if not grid.row_count:
            return None
        key = grid.coordinate_to_cell_key(grid.cursor_coordinate).row_key
        return int(key.value) if key.value is not None else None


class LayersPane(Pane):
    """One metric (m: gradient norm, update/weight ratio, dead-ReLU share) of every layer (rows) of every shown run
    (columns) at one step (left/right; each run's latest by default): sigmoid against ReLU at a glance."""

    TITLE = "Layers"
    KEY = "3"

    metric = 0
    at: int | None = None  # index into the probe steps; None: each run's latest

    def compose(self) -> ComposeResult:
        yield Static(id="layers-head")
        yield Heatmap(id="layers-heat")
        yield Static(id="layers-legend")

    def draw(self, state: CompareState, view: View) -> None:
        metric = LAYER_METRICS[self.metric % len(LAYER_METRICS)]
        steps = state.probe_steps()
        step = steps[min(self.at, len(steps) - 1)] if self.at is not None and steps else None
        picture = state.layers(metric, step)
        log = metric != "dead-ReLU share"
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log10(picture.matrix) if log else picture.matrix
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        labels = [Text(str(j + 1), "reverse" if run == state.picked else "") for j, run in enumerate(picture.columns)]
        self.query_one("#layers-heat", Heatmap).set_matrix(values, lo=lo, hi=hi, rows=picture.rows, columns=labels)
        where = f"at step {step:,}" if step is not None else "latest probes"
        name = f"log10 {metric}" if log else metric
        head = Text(f"{name} · {len(picture.rows)} layers x {len(picture.columns)} runs · {where} ")
        if finite.size:
            head.append_text(Text.assemble(f"{lo:.2g} ", colour_scale(view.color), f" {hi:.2g}"))
        elif picture.columns:
            head.append("no run has this metric", style="dim")
        self.query_one("#layers-head", Static).update(head)
        key = Text()
        for j, run in enumerate(picture.columns):
            key.append(f"{'  ' if j else ''}{j + 1} ")
            key.append_text(swatch(*state.color(run), view.color))
            key.append_text(literal(" " + state.group_label([run])))
            if run in picture.missing:
                key.append(" (none)", style="dim")
        self.query_one("#layers-legend", Static).update(key)

    def move(self, state: CompareState, delta: int) -> str:
        """An earlier or later probe step (past the last: each run's latest again); what is shown now."""
        steps = state.probe_steps()
        if not steps:
            return "no probes yet"
        at = len(steps) - 1 if self.at is None else self.at
        at += delta
        self.at = None if at >= len(steps) else max(0, at)
        return "each run's latest probe" if self.at is None else f"step {steps[self.at]:,}"


class FiltersPane(Pane):
    """What each run's filters respond to (`mirante visualize`), layer by layer: the runs one under another."""

    TITLE = "Filters"
    KEY = "4"

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield FilterRows(id="filter-rows")

    def draw(self, state: CompareState, view: View) -> None:
        shown = [i for i in state.order() if not state.members[i].hidden and state.members[i].error is None]
        layers = list(dict.fromkeys(name for i in shown for name in state.members[i].state.visualized))
        blocks = []
        for layer in layers:
            runs = []
            for i in shown:
                seen = state.members[i].state.visualized.get(layer)
                if seen is not None:
                    runs.append((swatch(*state.color(i), view.color), state.group_label([i]), seen))
            blocks.append((layer, runs))
        self.query_one("#filter-rows", FilterRows).set_blocks(blocks)


class FilterRows(CachedLines):
    """Per layer, a heading; per run, its name and as many of its visualized filters as fit one row."""

    blocks: list = []

    def set_blocks(self, blocks: list) -> None:
        self.blocks = blocks
        self.styles.height = max(1, sum(1 + 10 * len(runs) for _, runs in blocks))  # (a row: a name, 9 lines)
        self.changed()

    def draw(self, width: int, height: int, color: bool) -> list[Text]:
        from tui.visual import draw

        if not self.blocks:
            return [Text("no run has visualized filters: mirante visualize RUN --layer NAME (or V on a run's "
                         "Activations screen) stores them in the run")]  # fmt: skip
        out: list[Text] = []
        for layer, runs in self.blocks:
            out.append(literal(f"{layer}: what each filter responds to most", "bold" if color else ""))
            for mark, name, seen in runs:
                out.append(Text.assemble(mark, " ", literal(f"{name} · step {seen.checkpoint_step:,}")))
                images = images_of(seen)
                per_row = max(1, (width + 1) // 17)  # images 16 pixels wide, a column between
                out += draw(images[:per_row], list(seen.filters[:per_row]), width, color)
        return out


COMPARE_PANES = (CurvesPane, RunsPane, LayersPane, FiltersPane)
