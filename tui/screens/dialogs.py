"""Modal dialogs: help, and what `q` asks while training runs in this terminal (stop or detach)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """[b]mirante[/b] keys

 1-6      Overview, Gradients, Model, Activations, Diagnostics, System
 q        quit (while training here: stop it, or detach and let it run)
 p        pause / resume training (live runs)
 space    freeze / unfreeze the display
 s        smoothing on / off (EMA with bias correction);  [ ]  less / more
 l        log-scale y on the loss chart
 + -      replay faster / slower;  r  restart the replay
 left right  earlier / later activation capture;  < >  model table depth
 c        capture activations now (a live run)
 e        export the run to CSV next to its store
 ?        this help (esc closes)"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape,question_mark,q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(HELP)


class QuitScreen(ModalScreen[str]):
    """Returns "stop", "detach" or "cancel"."""

    BINDINGS = [
        ("s", "choose('stop')", "stop training"),
        ("d", "choose('detach')", "detach"),
        ("escape,c", "choose('cancel')", "cancel"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(
                "Training is running in this terminal.\n\n"
                " [b]s[/b]  stop training (checkpoint, then end the run)\n"
                " [b]d[/b]  detach: leave the app, training goes on (mirante watch to come back)\n"
                " [b]esc[/b] cancel"
            )

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)
