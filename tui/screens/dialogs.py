"""Modal dialogs: help, and what `q` asks while training runs in this terminal (stop or detach)."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """[b]mirante[/b] keys

 1-6      Overview, Gradients, Model, Activations, Diagnostics, System
 q        quit (Ctrl+C, Ctrl+Q too); while the run trains: stop it, or leave it going
 p        pause / resume training (a run on this machine), or the replay
 space    freeze / unfreeze the display
 s        smoothing on / off (EMA with bias correction);  [ ]  less / more
 l        log-scale y on the loss chart
 + -      replay faster / slower;  r  restart the replay
 left right  earlier / later activation capture;  < >  model table depth
 c        capture activations now (a run training on this machine)
 e        export the run to CSV next to its store
 g        the run's configuration, every key, grouped
 t        the per-epoch table: loss, accuracy (%), time
 ?        this help (esc closes)"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape,question_mark,q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(HELP)


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
