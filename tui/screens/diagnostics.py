"""Diagnostics: the lecture's checks with their state, the evidence of the highlighted one, and their history.

A learning-rate range test (`mirante lr-find`) shows its loss-against-learning-rate chart in place of the history.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from engine.diagnostics import Finding, g
from tui.lrfind import range_lines
from tui.screens.base import Pane, View
from tui.state import RunState
from tui.widgets import Chart, literal

STYLES = {"fail": "bold red", "warn": "bold yellow", "ok": "green", "waiting": "dim", "not seen": "dim"}


def level_text(level: str) -> Text:
    return literal(level, STYLES.get(level, ""))


def value_text(value: Any, limit: int = 8) -> str:
    """An evidence value in a few characters: numbers as people write them, long lists cut."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return g(value)
    if isinstance(value, (list, tuple)):
        items = [value_text(v) for v in value[:limit]]
        return "[" + ", ".join(items) + (f", … {len(value) - limit} more" if len(value) > limit else "") + "]"
    if isinstance(value, dict):
        items = [f"{k}={value_text(v)}" for k, v in list(value.items())[:limit]]
        return ", ".join(items) + (f", … {len(value) - limit} more" if len(value) > limit else "")
    return str(value)


def detail_text(title: str, finding: Finding | None) -> Text:
    """The highlighted check: its state, what was seen, and the evidence (a store's strings, shown as written)."""
    if finding is None:
        return literal(f"{title}: waiting for what it needs to see", "dim")
    out = Text()
    out.append_text(literal(f"{finding.level} ", STYLES.get(finding.level, "")))
    out.append_text(literal(f"{title} (step {finding.step}): ", "bold"))
    out.append_text(literal(finding.message))
    for key, value in finding.evidence.items():
        if key != "traceback":
            out.append("\n")
            out.append_text(literal(f"  {key}: ", "dim"))
            out.append_text(literal(value_text(value)))
    return out


class DiagnosticsPane(Pane):
    TITLE = "Diagnostics"
    KEY = "5"

    def compose(self) -> ComposeResult:
        yield DataTable(id="checks", zebra_stripes=True, cursor_type="row")
        yield Static(id="detail")
        yield DataTable(id="diagnostics", zebra_stripes=True, cursor_type="row")
        yield Chart(id="range", x_label="learning rate", log_x=True)

    def on_show(self) -> None:
        self.query_one("#checks", DataTable).focus()  # up/down move in the list as soon as the pane shows

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if not self.parent.display:  # Textual moves the focus to the next list of a pane being hidden, whose tab
            event.stop()  # would then come back to the front: a pane key would not leave this pane
            self.screen.set_focus(None)

    def on_mount(self) -> None:
        self.query_one("#checks", DataTable).add_columns("state", "check", "step", "what was seen")
        self.query_one("#diagnostics", DataTable).add_columns("step", "level", "check", "what was seen")
        self._version = -1
        self._rows: list[tuple[str, str, Finding | None]] = []

    def draw(self, state: RunState, view: View) -> None:
        range_test = state.is_range_test
        self.query_one("#diagnostics").display = not range_test
        self.query_one("#range").display = range_test
        if range_test:
            found = state.check_states().get("lr-find")
            test = state.range_test()
            over = state.ended is not None or state.writer_gone
            # mid-sweep the lowest loss so far is no suggestion: only the check's verdict, or the finished sweep's
            suggestion = found.evidence if found else (test.suggestion() if over else None)
            if found:
                title = f"learning-rate range test: {found.message}"  # the chart escapes it
            else:
                title = "learning-rate range test" + ("" if over else ": sweeping, no suggestion yet")
            self.query_one("#range", Chart).set_lines(range_lines(test, suggestion), title=title)
        if state.diagnostics_version == self._version:
            return
        self._version = state.diagnostics_version
        self._rows = state.check_rows()
        table = self.query_one("#checks", DataTable)
        cursor = table.cursor_row if table.has_focus else self.first_row(state)  # the user's, or the worst check
        table.clear()
        # a check that has not spoken is waiting for what it needs; once the run is over, it never saw it
        idle = "waiting" if state.ended is None and not state.writer_gone else "not seen"
        for code, title, f in self._rows:
            if f is None:
                table.add_row(level_text(idle), literal(title), "", Text(idle, style="dim"), key=code)
            else:  # Text cells: a str cell would be read as markup
                table.add_row(level_text(f.level), literal(title), str(f.step), literal(f.message), key=code)
        if self._rows:
            table.move_cursor(row=min(max(cursor, 0), len(self._rows) - 1))
        self.show_detail(table.cursor_row)
        log = self.query_one("#diagnostics", DataTable)
        log.clear()
        for f in state.diagnostic_history():
            log.add_row(str(f.step), level_text(f.level), literal(f.code), literal(f.message))

    def first_row(self, state: RunState) -> int:
        """Where the cursor starts: on the worst check, or on the mode's own (lr-find, overfit)."""
        worst = state.worst_diagnostics(1)
        codes = [code for code, _, _ in self._rows]
        for code in ("lr-find", "overfit") if state.is_range_test or "overfit" in codes else ():
            if code in codes:
                return codes.index(code)
        if worst and worst[0].level != "ok" and worst[0].code in codes:
            return codes.index(worst[0].code)
        return 0

    def show_detail(self, row: int) -> None:
        if 0 <= row < len(self._rows):
            _, title, finding = self._rows[row]
            self.query_one("#detail", Static).update(detail_text(title, finding))

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        if message.data_table.id == "checks":
            self.show_detail(message.cursor_row)
