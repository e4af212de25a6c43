"""Overview: who and where, progress, loss/accuracy/learning-rate charts, speed, the worst diagnostics."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import ProgressBar, Static

from engine.diagnostics import Finding
from tui.screens.base import Pane, View, duration, fmt
from tui.screens.diagnostics import STYLES
from tui.state import RunState
from tui.widgets import Chart, Line, literal


def worst_text(worst: list[Finding]) -> Text:
    """The worst checks, one line each: their level in colour, the check, what was seen."""
    out = Text("diagnostics (5: all)", style="bold")
    if not worst:
        out.append("\nno check has spoken yet", style="dim")
    for f in worst:
        out.append("\n")
        out.append_text(literal(f"{f.level:4} ", STYLES.get(f.level, "")))
        out.append_text(literal(f"{f.code}: ", "bold"))
        out.append_text(literal(f.message))
    return out


def info_text(state: RunState) -> Text:
    """Who and where, progress, speed: three lines, the store's strings shown as written (Text, not markup)."""
    s = state.started
    device = s.device.get("name", s.device.get("type", "?")) if s else "?"
    epochs = state.planned_epochs
    mfu = state.latest("perf/mfu")
    world = state.world_size
    ranks = f" x {world} ranks ({state.config.get('backend')})" if world > 1 else ""
    out = Text()
    out.append_text(literal(state.name, "bold"))
    out.append_text(literal(f"  {s.model if s else '?'} on {s.dataset if s else '?'}  ·  {device}{ranks}"))
    out.append("\n")
    out.append_text(literal(f"{state.status()}  ·  epoch {state.epoch}/{epochs or '?'}  ·  step {state.step:,}/"))
    out.append(f"{state.total_steps or '?'}  ·  elapsed {duration(state.elapsed)}  ·  ETA {duration(state.eta)}\n")
    out.append(
        f"{fmt(state.latest('throughput/img_s'), ',.0f')} img/s  ·  MFU "
        f"{'-' if mfu is None else fmt(100 * mfu, '.1f') + '%'}  ·  lr {fmt(state.latest('lr'), '.3g')}"
        f"  ·  loss {fmt(state.latest('train/loss'))}"
    )
    return out


class OverviewPane(Pane):
    TITLE = "Overview"
    KEY = "1"

    def compose(self) -> ComposeResult:
        yield Static(id="info")
        yield ProgressBar(total=100, show_eta=False, id="progress")
        with Grid(id="charts"):
            yield Chart(id="loss")
            yield Chart(id="accuracy")
            yield Chart(id="lr")
            yield Static(id="worst")

    def draw(self, state: RunState, view: View) -> None:
        self.query_one("#info", Static).update(info_text(state))
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=100, progress=100 * (state.progress or 0.0))

        smooth = view.smooth
        vsteps, vloss = state.epoch_series("val_loss")
        self.query_one("#loss", Chart).set_lines(
            [Line.of("train", state.series("train/loss"), "cyan", smooth), Line("val", vsteps, vloss, "orange")],
            title="loss",
            log_y=view.log_y,
        )
        vsteps, vacc = state.epoch_series("val_acc")
        self.query_one("#accuracy", Chart).set_lines(
            [Line.of("train", state.series("train/acc"), "cyan", smooth), Line("val", vsteps, vacc, "orange")],
            title="accuracy",
        )
        self.query_one("#lr", Chart).set_lines([Line.of("lr", state.series("lr"), "green")], title="learning rate")
        worst = state.worst_diagnostics(3)
        self.query_one("#worst", Static).update(worst_text(worst))
