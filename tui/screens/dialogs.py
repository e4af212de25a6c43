"""Modal dialogs: help (every key of the screen it is opened on), and what `q` asks while training runs here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = {  # what a key does, by its action, where its footer word is not enough
    "help": "this help (esc closes)",
    "config": "the run's configuration, every key, grouped (a compare: the picked run's)",
    "epochs": "the per-epoch table: loss, accuracy (%), time (a compare: the picked run's)",
    "quit_run": "quit; while the run trains: stop it, or leave it going",
    "pause": "pause / resume the training (on this machine) or the replay",
    "freeze": "freeze / unfreeze the display",
    "smooth": "smoothing on / off (EMA with bias correction)",
    "smoothing(-0.1)": "less smoothing",
    "smoothing(0.1)": "more smoothing",
    "log_y": "log-scale y on the loss chart",
    "speed(2.0)": "replay faster",
    "speed(0.5)": "replay slower",
    "restart": "restart the replay (also once it has ended)",
    "capture(-1)": "earlier activation capture",
    "capture(1)": "later activation capture",
    "depth(-1)": "model table: shallower",
    "depth(1)": "model table: deeper",
    "export": "export the run to CSV next to its store",
    "capture_now": "capture activations now (a run training on this machine)",
    "axis": "x axis: step, epoch, samples seen, wall time (batch sizes compare by samples or epochs)",
    "metric": "the fourth chart: learning rate, images/s, a layer's gradient norm; the layers' metric",
    "sort": "sort the runs by the next column",
    "reverse_sort": "sort the other way",
    "hide": "hide the picked run from the charts, or show it again",
    "show_all": "show every run",
    "pick(1)": "pick the next run: drawn over the others",
    "pick(-1)": "pick the previous run",
    "unpick": "pick no run: all drawn alike",
    "layer(-1)": "gradient norm chart: the previous layer",
    "layer(1)": "gradient norm chart: the next layer",
    "at_step(-1)": "layers at an earlier probe step",
    "at_step(1)": "layers at a later probe step (past the last: each run's latest)",
}


def help_rows(
    bindings: Any, key_display: Callable[[Any], str], first: Callable[[str], bool] = lambda action: False
) -> list[tuple[str, str]]:
    """(keys, what they do) for every key active on a screen (Screen.active_bindings), the keys of one action on
    one line, in the order the screen checks them but the actions `first` picks (the pane's own) ahead: in a help
    taller than the terminal they are the ones to see without scrolling."""
    rows: dict[tuple[int, str], tuple[list[str], str]] = {}
    for active in bindings.values():
        binding = active.binding
        keys, _ = rows.setdefault(
            (id(active.node), binding.action), ([], HELP.get(binding.action) or binding.description or binding.action)
        )
        key = key_display(binding)
        if key not in keys:
            keys.append(key)
    ordered = sorted(rows.items(), key=lambda item: not first(item[0][1]))  # stable: the rest keep their order
    return [(" ".join(keys), said) for _, (keys, said) in ordered]


def help_text(rows: list[tuple[str, str]], screen: str) -> Text:
    out = Text(f"mirante keys on {screen}", style="bold")
    for keys, said in rows:
        out.append(f"\n {keys:<{KEYS}} ")
        out.append(said)
    return out


KEYS = 12  # the width of the keys' column


class HelpScreen(ModalScreen[None]):
    """Every key of the screen it was opened on, from that screen's bindings: the help cannot fall behind them."""

    BINDINGS = [("escape,question_mark,q", "dismiss", "close")]

    def __init__(self, rows: list[tuple[str, str]], screen: str = "this screen") -> None:
        super().__init__()
        self.rows, self.where = rows, screen

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full"), VerticalScroll():
            yield Static(help_text(self.rows, self.where), id="help")


class QuitScreen(ModalScreen[str]):
    """What q asks while the run trains: "stop", "detach" (a run trained in this app) or "leave" (one watched), or
    "cancel". Asked again (q, Ctrl+C or Ctrl+Q once more), it takes its `default`: stop a run trained here, as
    Ctrl-C does headless; leave a watched one, which goes on."""

    BINDINGS = [
        ("s", "choose('stop')", "stop training"),
        ("d", "choose('detach')", "detach"),
        ("l", "choose('leave')", "leave"),
        ("escape,c", "choose('cancel')", "cancel"),
        ("q", "choose_default", "default"),  # Ctrl+C and Ctrl+Q come here through the app's own binding
    ]

    def __init__(self, owned: bool = True, paused: bool = False) -> None:
        super().__init__()
        self.owned = owned
        self.paused = paused
        self.default = "stop" if owned else "leave"
        self.gone = False  # the run ended while this was asked: see `run_ended`

    def compose(self) -> ComposeResult:
        if self.owned:
            text = (
                "Training is running in this terminal.\n\n"
                " [b]s[/b]  stop training (checkpoint, then end the run)\n"
                " [b]d[/b]  detach: leave the app, training goes on (mirante watch to come back)\n"
                " [b]esc[/b] cancel      (q or Ctrl+C again: stop)"
            )
        else:
            text = (
                "This run is training; you are watching it.\n\n"
                " [b]s[/b]  stop training (checkpoint, then end the run)\n"
                " [b]l[/b]  leave: training goes on" + (" [b]paused[/b] (p resumes it)" if self.paused else "") + "\n"
                " [b]esc[/b] cancel      (q or Ctrl+C again: leave)"
            )
        with Vertical(classes="dialog"):
            yield Static(text)

    def run_ended(self, status: str, reason: str = "") -> None:
        """The run ended while asked (its trainer may have died): nothing is left to stop; every answer leaves."""
        self.gone = True
        self.default = "leave"
        said = escape(f"{status}: {reason}" if reason else status)
        self.query_one(Static).update(
            f"The run has ended ({said}).\n\n [b]q[/b]  leave (s, d and l too)\n [b]esc[/b] stay and look at it"
        )

    def action_choose_default(self) -> None:
        self.dismiss(self.default)

    def action_choose(self, choice: str) -> None:
        if self.gone:
            self.dismiss("cancel" if choice == "cancel" else "leave")
            return
        if choice == "detach" and not self.owned or choice == "leave" and self.owned:
            return  # not an answer to this question
        self.dismiss(choice)
