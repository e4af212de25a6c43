"""The run's epochs as a table: train loss and accuracy, validation loss and accuracy (in %), each epoch's time."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui.screens.base import fmt
from tui.state import RunState

COLUMNS = ("epoch", "train loss", "train acc", "val loss", "val acc", "time")


def pct(value: float | None) -> str:
    return "-" if value is None else fmt(100 * value, ".1f") + "%"


def epoch_rows(state: RunState) -> list[tuple[str, ...]]:
    """One row per epoch; the epoch with the best validation accuracy is marked."""
    best = state.best_epoch("val_acc")
    rows = []
    for e, seconds in zip(state.epochs, state.epoch_durations(), strict=True):
        mark = " best" if e is best else ""
        time = "-" if seconds is None else fmt(seconds, ".1f") + " s"
        rows.append((f"{e.epoch}{mark}", fmt(e.train_loss), pct(e.train_acc), fmt(e.val_loss), pct(e.val_acc), time))
    return rows


class EpochsScreen(ModalScreen[None]):
    """The per-epoch table over the current screen, kept up to date while it shows; t or esc closes it."""

    BINDINGS = [("escape,t,q", "dismiss", "close")]

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state
        self.shown = -1  # epochs in the table

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full"):
            yield Static(id="epochs-title")
            yield DataTable(id="epochs", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        self.fill()
        self.set_interval(1.0, self.fill)

    def fill(self) -> None:
        state = getattr(self.app, "state", self.state)  # the app starts a new state on restart
        if len(state.epochs) == self.shown and state is self.state:
            return
        self.state, self.shown = state, len(state.epochs)
        table = self.query_one(DataTable)
        table.clear()
        table.add_rows(epoch_rows(state))
        title = f"{len(state.epochs)} epochs" if state.epochs else "no epoch has ended yet"
        self.query_one("#epochs-title", Static).update(f"[b]epochs[/b]  {title}  (t or esc closes)")
