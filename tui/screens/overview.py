"""Overview: who and where, progress, the validation numbers, loss/accuracy/lr charts, the worst diagnostics."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static

from tui.screens.base import Pane, View, fmt
from tui.screens.diagnostics import STYLES
from tui.state import RunState
from tui.widgets import Chart, Line, literal


def worst_text(state: RunState, n: int = 3) -> Text:
    """The checks that are not ok, worst first, one line each (their level in colour, the check, what was seen),
    then one line for the rest: "all N checks ok" when nothing is wrong. Each check's latest state, never an ok's
    old evidence (a check speaks when its state changes: its ok may date from epoch 1)."""
    out = Text("diagnostics (5: all)", style="bold")
    rows = state.check_rows()
    found = [f for _, _, f in rows if f is not None]
    waiting = len(rows) - len(found)
    if not found:
        out.append("\nno check has spoken yet", style="dim")
        return out
    bad = [f for f in state.worst_diagnostics(len(found)) if f.level != "ok"]
    for f in bad[:n]:
        out.append("\n")
        out.append_text(literal(f"{f.level:4} ", STYLES.get(f.level, "")))
        out.append_text(literal(f"{f.code}: ", "bold"))
        out.append_text(literal(f.message))
    oks = len(found) - len(bad)
    rest = [f"all {oks} checks ok" if not bad else f"{oks} other checks ok"]
    if len(bad) > n:
        rest.append(f"{len(bad) - n} more not ok")
    if waiting:
        rest.append(f"{waiting} waiting")
    out.append("\n")
    out.append(", ".join(rest), style="green" if not bad else "dim")
    return out


SEP = " · "
BAR_MIN = 10  # the progress bar's least width; narrower, it is left out


def pct(value: float | None) -> str:
    return "-" if value is None else fmt(100 * value, ".1f") + "%"


def fit(parts: list[Text], width: int) -> Text:
    """Parts joined by SEP, the first always, the others while they fit in `width`: the first ones matter most."""
    out = Text()
    for i, part in enumerate(parts):
        if i and out.cell_len + len(SEP) + part.cell_len > width:
            break
        if i:
            out.append(SEP)
        out.append_text(part)
    return out


def numbers(state: RunState, width: int) -> Text:
    """Validation accuracy and loss, latest and best with the epoch of the best: the line a user looks for first.
    Where both do not fit in `width`, the best is said shorter ("best 96.8% ep 3", or "(best)" when it is the
    latest) before the loss is left out."""
    last = state.epochs[-1] if state.epochs else None
    if last is None:
        return Text("validation: no epoch has ended yet", style="dim")
    if last.val_acc is None and last.val_loss is None:
        return Text("validation: none (the run has no validation split)", style="dim")
    for short in (False, True):
        parts = []
        for name, field, show, lowest in (("val acc", "val_acc", pct, False), ("val loss", "val_loss", fmt, True)):
            best = state.best_epoch(field, lowest)
            part = Text(f"{name} ")
            part.append(show(getattr(last, field)), style="bold")
            if best is not None:
                value = show(getattr(best, field))
                if not short:
                    part.append(f" best {value} (epoch {best.epoch})")
                else:
                    part.append(" (best)" if best is last else f" best {value} ep {best.epoch}")
            parts.append(part)
        if sum(p.cell_len for p in parts) + len(SEP) * (len(parts) - 1) <= width:
            break
    return fit(parts, width)


def training(state: RunState, width: int) -> Text:
    """Train accuracy, the last loss, the epoch's time, speed, learning rate: as many as fit."""
    last = state.epochs[-1] if state.epochs else None
    mfu = state.latest("perf/mfu")
    seconds = state.epoch_seconds
    behind = last is not None and last.epoch < state.current_epoch  # an earlier epoch's: say which
    parts = [
        Text(f"train acc {pct(last.train_acc if last else None)}" + (f" (epoch {last.epoch})" if behind else "")),
        Text(f"loss {fmt(state.latest('train/loss'))}"),
        Text(f"epoch time {'-' if seconds is None else fmt(seconds, '.1f') + ' s'}"),
        Text(f"{fmt(state.latest('throughput/img_s'), ',.0f')} img/s"),
        Text(f"lr {fmt(state.latest('lr'), '.3g')}"),
    ]
    if mfu is not None:
        parts.append(Text(f"MFU {pct(mfu)}"))
    return fit(parts, width)


def where(state: RunState, width: int, status: str) -> Text:
    """Status, epoch and step, then a progress bar in what is left of the line."""
    parts = [
        literal(status, "bold"),
        Text(f"epoch {state.current_epoch}/{state.planned_epochs or '?'}"),
        Text(f"step {state.step:,}/{state.total_steps or '?'}"),
    ]
    out = fit(parts, width)
    room = width - out.cell_len - 6  # " " + bar + " 100%"
    if state.progress is not None and room >= BAR_MIN:
        done = round(room * state.progress)
        out.append(" ")
        out.append("━" * done, style="bold cyan")
        out.append("━" * (room - done), style="grey37")
        out.append(f" {100 * state.progress:3.0f}%")
    return out


def info_text(state: RunState, width: int = 80, status: str | None = None) -> Text:
    """Who and where, progress, the validation numbers, training speed: four lines, each of at most `width` cells
    but the first (a name too long is cut there), the store's strings shown as written (Text, not markup)."""
    s = state.started
    device = s.device.get("name", s.device.get("type", "?")) if s else "?"
    world = state.world_size
    ranks = f" x {world} ranks ({state.config.get('backend')})" if world > 1 else ""
    head = literal(state.name, "bold")
    head.append_text(literal(f"{SEP}{s.model if s else '?'} on {s.dataset if s else '?'}{SEP}{device}{ranks}"))
    out = Text("\n").join(
        [head, where(state, width, status or state.status()), numbers(state, width), training(state, width)]
    )
    out.no_wrap, out.overflow = True, "ellipsis"  # a long name is cut on its own line, never pushes the others
    return out


class OverviewPane(Pane):
    TITLE = "Overview"
    KEY = "1"

    def compose(self) -> ComposeResult:
        yield Static(id="info")
        with Grid(id="charts"):
            yield Chart(id="loss")
            yield Chart(id="accuracy")
            yield Chart(id="lr")
            yield Static(id="worst")

    def draw(self, state: RunState, view: View) -> None:
        self.tick(state, view)

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
            percent=True,
        )
        self.query_one("#lr", Chart).set_lines([Line.of("lr", state.series("lr"), "green")], title="learning rate")
        self.query_one("#worst", Static).update(worst_text(state))

    def tick(self, state: RunState, view: View) -> None:
        info = self.query_one("#info", Static)
        info.update(info_text(state, info.size.width or self.app.size.width, view.status(state)))
