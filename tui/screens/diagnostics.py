"""Diagnostics: every Diagnostic event, with its evidence."""

from __future__ import annotations

import json

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable

from tui.screens.base import Pane, View
from tui.state import RunState

STYLES = {"fail": "bold red", "warn": "bold yellow", "ok": "green"}


class DiagnosticsPane(Pane):
    TITLE = "Diagnostics"
    KEY = "5"

    def compose(self) -> ComposeResult:
        yield DataTable(id="diagnostics", zebra_stripes=True, cursor_type="row")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("step", "level", "check", "what was seen", "evidence")
        self._shown = 0

    def draw(self, state: RunState, view: View) -> None:
        table = self.query_one(DataTable)
        for d in state.diagnostics[self._shown :]:
            evidence = {k: v for k, v in d.evidence.items() if k != "traceback"}
            table.add_row(
                str(d.step),
                Text(d.level, style=STYLES.get(d.level, "")),
                d.code,
                d.message,
                json.dumps(evidence, default=str)[:200],
            )
        self._shown = len(state.diagnostics)
