"""The mirante app: wiring. Mounts the panes, runs the source in a worker, folds events, redraws at 5 Hz."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import Footer, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from engine import events as ev
from engine.store import RunReader, StoreError
from tui import graphics
from tui.compare import CompareState
from tui.compare_keys import CompareKeys
from tui.messages import EventsArrived, SourceDone, SourceFailed
from tui.remote import Remote
from tui.screens import PANES
from tui.screens.base import Pane, View, duration, status_line
from tui.screens.compare import COMPARE_PANES
from tui.screens.config import ConfigScreen, resolved
from tui.screens.dialogs import HelpScreen, QuitScreen, help_rows
from tui.screens.epochs import EpochsScreen
from tui.snapshot import Snapshot, raw_series
from tui.state import MapCapture, RunState, maps_of
from tui.widgets import Chart, literal

EXIT_CODES = {"finished": 0, "interrupted": 130}  # the app's exit code after the user stopped the run; else 1
MIN_SIZE = (60, 16)  # below this the app asks for a larger terminal instead of drawing
REDRAW_S = 0.2  # 5 redraws a second: smooth enough for curves, and half the bytes over SSH
TICK_S = 1.0  # the clocks (elapsed, ETA, silence) move this often, though no event came
FOLD_SLICE_S = 0.015  # longest the app folds events before it lets keys and redraws in
INBOX_MAX = 100_000  # events read but not folded yet, beyond which the reader waits
WINDOW_STEPS = 500  # w: the charts show only this many last steps
NOTE_S = 10.0  # a key's answer stays this long in the status line, then gives way to the run's own note


class MiranteApp(CompareKeys, App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "mirante"
    BINDINGS = [  # the footer shows them in this order, as many as fit: help first, so it always shows
        ("question_mark", "help", "help"),
        ("g", "config", "config"),
        ("t", "epochs", "epochs"),
        ("q", "quit_run", "quit"),
        # a compare's (check_action keeps each mode's keys to it; a key bound twice goes to the first that applies)
        ("x", "axis", "x axis"),
        ("m", "metric", "metric"),
        ("o", "sort", "sort"),
        ("O", "reverse_sort", "reverse"),
        ("h", "hide", "hide/show"),
        ("a", "show_all", "show all"),
        Binding("ctrl+c", "quit_run", "quit", show=False, priority=True),  # as q: never leave a trainer orphaned
        Binding("ctrl+q", "quit_run", "quit", show=False, priority=True),
        ("p", "pause", "pause"),
        ("space", "freeze", "freeze"),
        ("s", "smooth", "smooth"),
        ("left_square_bracket", "smoothing(-0.1)", "less"),
        ("right_square_bracket", "smoothing(0.1)", "more"),
        ("l", "log_y", "log y"),
        ("f", "full_screen", "full screen"),
        ("w", "window", "last 500 steps"),
        ("plus", "speed(2.0)", "faster"),
        ("minus", "speed(0.5)", "slower"),
        ("r", "restart", "restart"),
        # before the tab bar takes them; not in the footer (they are the Activations pane's), in the help
        Binding("left", "capture(-1)", "earlier", show=False, priority=True),
        Binding("right", "capture(1)", "later", show=False, priority=True),
        ("less_than_sign", "depth(-1)", "shallower"),
        ("greater_than_sign", "depth(1)", "deeper"),
        ("e", "export", "export"),
        ("c", "capture_now", "capture"),
        Binding("down", "pick(1)", "next run", show=False),  # after the table's own: it moves its cursor itself
        Binding("up", "pick(-1)", "previous run", show=False),
        Binding("escape", "unpick", "no run picked", show=False),
        Binding("less_than_sign", "layer(-1)", "previous layer", show=False),
        Binding("greater_than_sign", "layer(1)", "next layer", show=False),
        Binding("left", "at_step(-1)", "earlier", show=False, priority=True),
        Binding("right", "at_step(1)", "later", show=False, priority=True),
        *[Binding(p.KEY, f"show('{p.__name__}')", p.TITLE, show=False) for p in PANES + COMPARE_PANES],  # the tabs say
    ]

    def __init__(
        self, source: Any, *, store: str | Path | None = None, commands: Any = None, images: str | None = None
    ) -> None:
        super().__init__()
        self.source = source
        self.store = Path(store) if store else None
        # how keys reach the run: its trainer's queue (trained in this app), its command pipe, or nothing (a replay)
        self.replay = hasattr(source, "restart")
        self.compare = getattr(source, "compare", False)  # several runs: the compare panes, no commands
        # the textual-image widget for the Activations screen's pictures where the terminal speaks Sixel or Kitty's
        # protocol, else None (and always for compare, which has no such screen); asked before the app reads keys
        self.graphics = None if self.compare else graphics.image_widget(images)
        self.panes = COMPARE_PANES if self.compare else PANES
        self.remote = None if self.replay or self.compare else Remote(self.store, commands)
        self.stopping = False  # the user chose to stop the run: the app leaves once it has ended
        self.view = View(color="NO_COLOR" not in os.environ)
        self._reader: RunReader | None = None  # the UI thread's own reader of the store (captures, smoothing)
        self._folded_at = time.monotonic()  # when events were last folded: a replay's clock runs on from there
        self.state = self._new_state()
        self.frozen = False
        self._lasting = ""  # the status line's note until something replaces it ("end of run")
        self._told, self._told_until = "", 0.0  # a key's answer, shown for NOTE_S seconds
        self.detached = False  # the user left a live run going: the caller must not wait for it
        self._inbox: list = []  # events read by the worker, not folded yet
        self._snapshot: Snapshot | None = None  # the run as read from its store, to take in before the inbox
        self._inbox_lock = threading.Lock()
        self._nudged = False  # an EventsArrived is on its way: the worker need not post another
        self._drawn = -1
        self._range_shown = False  # an lr-find run opens on its chart, once
        self._reading = False  # the source worker runs (it ends when the source is done)
        self._recovered = 0  # events the source has read back from the store after the live feed dropped them

    def compose(self) -> ComposeResult:
        yield Static("enlarge the terminal (at least 60x16)", id="too-small")
        with TabbedContent(id="tabs"):
            for pane in self.panes:
                with TabPane(f"{pane.KEY} {pane.TITLE}", id=pane.__name__):
                    yield pane()
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.read_source()
        self.set_interval(REDRAW_S, self.on_timer(self.redraw))
        self.set_interval(TICK_S, self.on_timer(self.tick))

    @work(thread=True, exclusive=True)
    def read_source(self) -> None:
        """Read the source into the inbox; one nudge message at a time; wait while the inbox is full."""
        worker = get_current_worker()
        self._reading = True
        try:
            while not worker.is_cancelled:
                events = self.source.read()
                recovered = getattr(self.source, "recovered", 0)
                if recovered > self._recovered:
                    gap, self._recovered = recovered - self._recovered, recovered
                    self.call_from_thread(self.tell, f"the live feed fell behind: {gap:,} events read from the store")
                if getattr(self.source, "restarted", False):
                    self.source.restarted = False
                    self.call_from_thread(self._reset)
                if events:
                    with self._inbox_lock:
                        if isinstance(events[0], Snapshot):  # it holds everything before it: what waits is stale
                            self._snapshot, self._inbox = events[0], []
                            events = events[1:]
                        self._inbox.extend(events)
                        nudge = not self._nudged
                        self._nudged = True
                    if nudge:
                        self.post_message(EventsArrived())
                while len(self._inbox) > INBOX_MAX and not worker.is_cancelled:
                    time.sleep(0.01)  # the app is behind: let the source wait (a live trainer then drops, never blocks)
                if self.source.done:
                    self.post_message(SourceDone())
                    return
        except StoreError as exc:
            self.post_message(SourceFailed(str(exc)))
        finally:
            self._reading = False

    def _reset(self) -> None:
        with self._inbox_lock:
            self._inbox, self._snapshot = [], None
        self.state = self._new_state()
        self._drawn = -1

    def _new_state(self, state: RunState | None = None) -> RunState | CompareState:
        """A state (new, or one read from the store) wired to this app's store and smoothing."""
        if self.compare:
            return CompareState(self.source.paths, smoothing=self.view.smoothing)
        state = state or RunState(smoothing=self.view.smoothing)
        state.load_maps = self._load_maps if self.store is not None else None
        state.load_capture = self._load_capture if self.store is not None else None
        if self.replay:
            state.clock = self._replay_clock
        if state.smoothing != self.view.smoothing:
            self._smooth(state)
        return state

    @property
    def note(self) -> str:
        """What the status line says last: a key's answer for NOTE_S seconds, else the run's lasting note."""
        if self._told and time.monotonic() < self._told_until:
            return self._told
        return self._lasting

    @note.setter
    def note(self, text: str) -> None:
        self._lasting = text

    def tell(self, text: str) -> None:
        """Answer a key in the status line for NOTE_S seconds ("pause asked: ...")."""
        self._told, self._told_until = text, time.monotonic() + NOTE_S

    @property
    def paused(self) -> bool:
        """Whether the user paused the run or the replay (the view holds it: the screens say so)."""
        return self.view.paused

    def _replay_clock(self) -> float:
        """Now, by the replayed run's own clock: the recorded time of its last event, run on at the replay's speed
        (never wall-clock now, which is years after the recording)."""
        last = self.state.last_wall or 0.0
        if self.paused:
            return last
        speed = getattr(self.source, "speed", 1.0)
        return last + speed * min(time.monotonic() - self._folded_at, getattr(self.source, "max_gap", 1.0))

    def _store_reader(self) -> RunReader | None:
        if self._reader is None and self.store is not None:
            try:
                self._reader = RunReader(self.store)
            except StoreError:
                return None
        return self._reader

    def _load_maps(self, layer: str, step: int) -> MapCapture | None:
        """A capture the state no longer keeps, read back from the store."""
        reader = self._store_reader()
        try:
            event = reader.activation(layer, step) if reader is not None else None
        except StoreError:
            return None
        return maps_of(event) if event is not None else None

    def _load_capture(self, step: int) -> ev.Capture | None:
        """A capture's images, probabilities and Grad-CAM the state no longer keeps, read back from the store."""
        reader = self._store_reader()
        try:
            return reader.capture_at(step) if reader is not None else None
        except StoreError:
            return None

    def _smooth(self, state: RunState | CompareState) -> None:
        """Smooth every series at the view's weight, reading the points the state no longer holds from the store."""
        if isinstance(state, CompareState):
            state.smoothing = self.view.smoothing
            for member in state.members:
                try:
                    with RunReader(member.path) as reader:
                        member.state.set_smoothing(self.view.smoothing, raw_series(reader, member.state.last_seq))
                except StoreError:
                    member.state.set_smoothing(self.view.smoothing, None)
            return
        reader = self._store_reader()
        kept = state.set_smoothing(self.view.smoothing, raw_series(reader, state.last_seq) if reader else None)
        if kept:
            self.tell(f"smoothing: {len(kept)} series keep the old weight (no store to read them from)")

    async def on_events_arrived(self, message: EventsArrived) -> None:
        self.fold()
        with self._inbox_lock:
            self._nudged = False  # only now may the worker post again: one nudge queued at most
        await asyncio.sleep(0)  # let the loop run input and timers between folds

    def fold(self) -> None:
        """Fold inbox events for at most FOLD_SLICE_S and leave the rest for the next nudge or tick.

        Never re-posts itself: a message queue that is never empty would starve timers and input.
        """
        with self._inbox_lock:
            pending, self._inbox = self._inbox, []
            snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None:
            self.state = self._new_state(snapshot.state)
            self._drawn = -1
        if pending or snapshot is not None:
            self._folded_at = time.monotonic()
        start = time.perf_counter()
        done = 0
        while done < len(pending) and time.perf_counter() - start < FOLD_SLICE_S:
            self.state.apply_many(pending[done : done + 500])
            done += 500
        if done < len(pending):
            with self._inbox_lock:
                self._inbox[:0] = pending[done:]

    def on_source_done(self, message: SourceDone) -> None:
        self.fold()
        if self.compare:
            self.note = "every run has ended"
            self.redraw(force=True)
            return
        ended = self.state.ended
        self.state.writer_gone = ended is None  # nothing more will come: without RunEnded, crashed
        if ended is None:
            self.note = "the writer has gone"
        elif ended.status != "finished" and ended.reason:
            self.note = f"{ended.status}: {ended.reason}"
        else:
            self.note = "end of run"
        self.redraw(force=True)
        if self.stopping:
            self.exit(EXIT_CODES.get(self.state.status(), 1))
        elif isinstance(self.screen, QuitScreen):  # asked stop or detach while it ran: there is nothing to ask now
            self.screen.run_ended(self.state.status(), ended.reason if ended else "")

    def on_source_failed(self, message: SourceFailed) -> None:
        self.note = f"error: {message.error}"
        self.redraw(force=True)

    def redraw(self, force: bool = False) -> None:
        if self._inbox or self._snapshot is not None:
            self.fold()  # what the worker left while it waited for room
        small = self.size.width < MIN_SIZE[0] or self.size.height < MIN_SIZE[1]
        self.screen.set_class(small, "too-small")  # checked each tick: resizes come in bursts
        if (self.frozen or self.state.version == self._drawn) and not force:
            return
        self._drawn = self.state.version
        if self.state.is_range_test and not self._range_shown:
            self._range_shown = True
            self.query_one(TabbedContent).active = "DiagnosticsPane"
        pane = self.active_pane()
        if pane is not None:
            pane.draw(self.state, self.view)
        self.show_status()

    def active_pane(self) -> Pane | None:
        if not self.screen_stack:  # the app is tearing its screens down
            raise ScreenStackError("no screen")
        main = self.screen_stack[0]  # the panes' screen, though a dialog may be open over it
        active = main.query_one(TabbedContent).active
        children = main.query_one(f"#{active}", TabPane).children if active else []
        return children[0] if children else None  # (a tab pane emptied while the app tears its screens down)

    # keys that act on one pane only
    PANE_ACTIONS = {"capture": "ActivationsPane", "depth": "ModelPane", "layer": "CurvesPane", "at_step": "LayersPane"}
    COMPARE_ACTIONS = {"axis", "metric", "sort", "reverse_sort", "hide", "show_all", "pick", "unpick", "layer"}
    COMPARE_ACTIONS |= {"at_step"}
    RUN_ACTIONS = {"pause", "window", "export", "capture_now", "capture", "depth", "speed", "restart"}  # one run's

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Whether a key applies here: a replay's keys only in a replay, a compare's only in a compare, a pane's keys
        only on that pane. Keys that do not apply are neither in the footer nor in the help, and pass on to the
        widgets (the arrows, to the tabs)."""
        if action in (self.RUN_ACTIONS if self.compare else self.COMPARE_ACTIONS):
            return False
        if action == "show":
            return any(pane.__name__ == parameters[0] for pane in self.panes)
        if action in ("speed", "restart"):
            return self.replay
        if action in self.PANE_ACTIONS:
            try:
                pane = self.active_pane()
            except (NoMatches, ScreenStackError):
                return False
            return type(pane).__name__ == self.PANE_ACTIONS[action]
        return True

    def on_timer(self, callback):
        """`callback`, skipped once the app is closing: a timer may still fire after its screens are gone."""

        def guarded() -> None:
            try:
                callback()
            except (NoMatches, ScreenStackError):  # only while the app tears its screens down
                return

        return guarded

    def tick(self) -> None:
        """Once a second: the clocks move between events (a slow model's screen must not look hung)."""
        if self.frozen:
            return
        pane = self.active_pane()
        if pane is not None:
            pane.tick(self.state, self.view)
        self.show_status()

    def show_status(self) -> None:
        state = self.state
        parts = self.compare_status(state) if isinstance(state, CompareState) else self.run_status(state)
        status = self.query_one("#status", Static)
        # literal: the run's name and an ending's reason come from a store
        status.update(literal(status_line(parts, status.size.width or self.size.width)))

    def run_status(self, state: RunState) -> list[tuple[str, int]]:
        """The status line's parts for one run: (text, rank), the higher ranks left out first where room is short."""
        settings = (
            ("frozen", self.frozen),
            ("paused", self.paused and state.status() != "running"),  # else the status says it
            (f"smoothed {self.view.smoothing:g}", self.view.smooth),
            ("log y", self.view.log_y),
        )
        speed = getattr(self.source, "speed", None)
        silent = None if self.replay or self.paused else state.silent_for
        eta = state.eta
        if eta is not None and speed:  # a replay: the time it has left at its speed, not the run's own
            eta /= speed
        return [  # (text, rank): at 80 columns the higher ranks give way first, so the settings just toggled show
            (state.name, 0),
            (self.view.status(state), 0),
            *[(name, 1) for name, on in settings if on],
            (f"elapsed {duration(state.elapsed)}", 2),
            *([(f"ETA {duration(eta)}", 2)] if state.live else []),
            *([(f"last event {ago(silent)} ago", 1)] if silent is not None else []),
            *([(f"replay {speed:g}x", 3)] if speed else []),
            (f"seq {state.last_seq:,}", 4),
            *([(self.note, 1)] if self.note else []),
        ]

    # -- actions: each changes a setting and asks for a redraw

    def action_show(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane
        self.redraw(force=True)

    def on_tabbed_content_tab_activated(self) -> None:
        self.refresh_bindings()  # by key or by mouse: the footer and the help offer the new pane's keys

    def action_freeze(self) -> None:
        self.frozen = not self.frozen
        self.redraw(force=True)

    def action_smooth(self) -> None:
        self.view.smooth = not self.view.smooth
        self.redraw(force=True)

    def action_smoothing(self, delta: float) -> None:
        self.view.smoothing = min(0.99, max(0.0, round(self.view.smoothing + delta, 2)))
        self.view.smooth = True
        self._smooth(self.state)
        self.redraw(force=True)

    def action_log_y(self) -> None:
        self.view.log_y = not self.view.log_y
        self.redraw(force=True)

    def action_full_screen(self) -> None:
        """The focused chart, or the current pane's first, fills the screen; pressed again, gives it back."""
        if self.screen.maximized is not None:
            self.screen.minimize()
            return
        focused = self.focused if isinstance(self.focused, Chart) else None
        pane = self.active_pane()
        charts = [] if pane is None else [c for c in pane.query(Chart) if c.display]
        chart = focused or (charts[0] if charts else None)
        if chart is not None:
            chart.toggle_full_screen()

    def action_window(self) -> None:
        """Every chart shows only the last WINDOW_STEPS steps, or all of them again."""
        self.view.window = None if self.view.window else WINDOW_STEPS
        for chart in self.query(Chart):
            chart.set_window(self.view.window)
        self.redraw(force=True)

    def action_speed(self, factor: float) -> None:  # a replay's only (check_action)
        self.source.speed = min(1e6, max(0.01, self.source.speed * factor))
        self.redraw(force=True)

    def action_restart(self) -> None:  # a replay's only (check_action)
        self.source.restart()
        self.tell("replay restarted")
        if not self._reading:  # the replay had ended, and its worker with it
            self.read_source()
        self.redraw(force=True)

    def action_pause(self) -> None:
        if self.remote is None:  # a replay: pause the replay
            self.view.paused = not self.view.paused
            (self.source.pause if self.paused else self.source.resume)()
        else:
            command = "resume" if self.paused else "pause"
            error = self.command(command)
            if error is None:
                self.view.paused = not self.view.paused
                self.tell(f"{command} asked: the trainer answers at its next logging interval")
            else:
                self.tell(f"{command}: {error}")
        self.redraw(force=True)

    @property
    def ended(self) -> bool:
        """The run will take no more commands: it has ended, its source is done, or its trainer process is gone."""
        return self.state.ended is not None or self.source.done or getattr(self.source, "exited", False)

    def command(self, command: str) -> str | None:
        """Send a command to the run; None when sent, else why it could not be."""
        if self.remote is None:
            return "a replay cannot be commanded"
        if self.ended:
            status = self.state.status() if self.state.ended or self.source.done else "its trainer is gone"
            return f"the run has ended ({status})"
        return self.remote.send(command)

    def action_capture(self, delta: int) -> None:
        pane = self.query_one("ActivationsPane")
        pane.move(self.state, delta)
        self.redraw(force=True)

    def action_depth(self, delta: int) -> None:
        pane = self.query_one("ModelPane")
        pane.depth = max(1, min(8, pane.depth + delta))
        self.redraw(force=True)

    def action_capture_now(self) -> None:
        """Ask the trainer for activation maps and filters now (it answers at its next logging interval)."""
        pane = self.active_pane()
        layer = getattr(pane, "picked", None) if pane is not None and pane.TITLE == "Activations" else None
        error = self.command(f"capture {layer}" if layer and layer != "input" else "capture")  # that layer whole
        self.tell(f"capture: {error}" if error else "capture asked: maps arrive at the trainer's next logging interval")
        self.redraw(force=True)

    def action_export(self) -> None:
        if self.store is None:
            self.tell("nothing to export: no store")
        else:
            self.export_csv(self.store)
        self.redraw(force=True)

    @work(thread=True)
    def export_csv(self, store: Path) -> None:
        from engine.export import export
        from engine.store import RunReader

        target = store.with_suffix(".csv")
        try:
            with RunReader(store) as run, open(target, "w", newline="") as out:
                rows = export(run, "csv", out)
            self.tell(f"exported {rows:,} rows to {target}")
        except (StoreError, OSError) as exc:
            self.tell(f"export failed: {exc}")

    def action_help(self) -> None:
        pane = self.active_pane()
        where = f"the {pane.TITLE}" if pane is not None and self.screen is self.screen_stack[0] else "this screen"

        def own(action: str) -> bool:  # the pane's own keys come first: its actions, and the app's meant for it
            name = action.split("(")[0]
            return name in self.PANE_ACTIONS or f"action_{name}" in vars(type(pane))

        rows = help_rows(self.screen.active_bindings, self.get_key_display, own)
        self.push_screen(HelpScreen(rows, where))

    @property
    def run_state(self) -> RunState:
        """The run the config and epochs screens show: the run itself, or a compare's picked run (else its first)."""
        if isinstance(self.state, CompareState):
            states = self.state.states
            return states[self.state.picked if self.state.picked is not None else 0] if states else RunState()
        return self.state

    def action_config(self) -> None:
        if not isinstance(self.screen, ConfigScreen):
            state = self.run_state
            started = state.started
            notes = resolved(state.config, dict(started.model_summary) if started else {})
            self.push_screen(ConfigScreen(state.name, state.config, notes))

    def action_epochs(self) -> None:
        if not isinstance(self.screen, EpochsScreen):
            self.push_screen(EpochsScreen(self.run_state))

    def action_quit_run(self) -> None:
        """q, Ctrl+C, Ctrl+Q: leave; while the run trains, first ask whether to stop it or leave it going."""
        if isinstance(self.screen, QuitScreen):  # pressed again in the question: its default answer
            self.screen.action_choose_default()
            return
        if self.remote is None or self.ended or self.stopping:
            self.exit(0)
            return
        if not self.remote.owned and self.state.status() != "running":
            self.exit(0)  # watching a run that is not training (yet): nothing to ask
            return

        def chosen(choice: str | None) -> None:
            if choice in ("stop", "detach") and self.ended:  # its trainer went while asked: nothing to stop or leave
                self.exit(EXIT_CODES.get(self.state.status(), 1))
            elif choice == "stop":
                error = self.command("stop")
                self.note = (
                    f"stop: {error}" if error else "stopping: a checkpoint, then the run ends and the app leaves"
                )
                self.stopping = error is None
                self.redraw(force=True)
            elif choice == "detach":
                self.remote.send("detach")
                self.detached = True
                self.exit(0)
            elif choice == "leave":
                self.exit(0)

        self.push_screen(QuitScreen(owned=self.remote.owned, paused=self.paused), chosen)


def ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else duration(seconds)
