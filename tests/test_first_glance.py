"""Issue 13, the first glance: the numbers a user looks for are on the first screen at 80x24, the clocks tick,
the keys say what they do."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import pytest

from engine import events as ev
from engine.export import printable
from engine.store import RunReader
from tests.apps import drive, text_of
from tests.runs import write_run
from tui.app import MiranteApp
from tui.sources import FollowSource, ReplaySource

ROOT = Path(__file__).resolve().parents[1]
SMALLCNN = ROOT / "sample_runs" / "smallcnn-shapes.mirante"


def visible(app, selector: str, size: tuple[int, int]) -> list[str]:
    """A widget's lines, after checking they are all on the screen and none is wider than it."""
    widget = app.query_one(selector)
    lines = text_of(widget).splitlines()
    region = widget.region
    assert region.bottom <= size[1] and region.height >= len(lines), (region, lines)
    assert all(len(line) <= size[0] for line in lines), lines
    return lines


def test_overview_leads_with_validation_accuracy_and_loss_at_80x24():
    summary = RunReader(SMALLCNN).summary()

    async def script(app, pilot):
        info = "\n".join(visible(app, "#info", (80, 24)))
        assert f"best {100 * summary.best_val_acc:.1f}%" in info
        best = max(app.state.epochs, key=lambda e: e.val_acc)
        last = app.state.epochs[-1]
        assert f"val acc {100 * last.val_acc:.1f}%" in info
        assert f"(epoch {best.epoch})" in info
        assert f"val loss {last.val_loss:.4g}" in info
        assert f"train acc {100 * last.train_acc:.1f}%" in info
        assert "epoch time" in info

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (80, 24), script)


def tiny_run(
    path: Path,
    steps: int,
    *,
    end: str | None = None,
    epochs: int = 3,
    per_epoch: int = 10,
    extra: dict | None = None,
    name: str = "tiny",
) -> Path:
    """A run of `epochs` epochs of `per_epoch` steps, recorded up to `steps`, a second apart, ended or not."""
    seq = ev.Sequencer(clock=iter(1_700_000_000.0 + i for i in range(10**6)).__next__)
    config = {"epochs": epochs, "steps_per_epoch": per_epoch, "total_steps": epochs * per_epoch, "batch_size": 8}
    config |= extra or {}
    events: list[ev.Event] = [
        ev.RunStarted(**seq.header(0), name=name, model="smallcnn", dataset="shapes", config=config, layers=("fc",))
    ]
    for step in range(1, steps + 1):
        events.append(ev.Step(**seq.header(step), scalars={"train/loss": 1.0 / step, "lr": 0.1}))
        if step % per_epoch == 0:
            events.append(ev.Epoch(**seq.header(step), epoch=step // per_epoch, train_acc=0.5, val_acc=0.4))
    if end:
        events.append(ev.RunEnded(**seq.header(steps), status=end))
    write_run(path, events=events)
    return path


def test_epoch_counter_says_the_epoch_being_trained_as_the_headless_output_does(tmp_path):
    store = tiny_run(tmp_path / "tiny.mirante", 5)

    async def script(app, pilot):
        assert app.state.step == 5
        assert "epoch 1/3 · step 5/30" in text_of(app.query_one("#info"))

    drive(MiranteApp(FollowSource(store), store=store), (80, 24), script, wait_end=False)
    done = tiny_run(tmp_path / "done.mirante", 30, end="finished")

    async def ended(app, pilot):
        assert "epoch 3/3 · step 30/30" in text_of(app.query_one("#info"))

    drive(MiranteApp(FollowSource(done), store=done), (80, 24), ended)


class LiveFake:
    """A source that hands over its events once and then waits, as a live run between logging intervals does."""

    def __init__(self, events: list[ev.Event]) -> None:
        self.events, self.done = events, False

    def read(self, timeout: float = 0.1) -> list[ev.Event]:
        events, self.events = self.events, []
        if not events:
            time.sleep(timeout)
        return events


def running_events(steps: int = 5) -> list[ev.Event]:
    return RunReader(tiny_run(Path(tempfile.mkdtemp()) / "live.mirante", steps)).follow(0, limit=1000)


def clock_of(status: str, name: str) -> int:
    """The seconds of 'name H:MM:SS' in a status line."""
    h, m, s = re.search(rf"{name} (\d+):(\d\d):(\d\d)", status).groups()
    return 3600 * int(h) + 60 * int(m) + int(s)


def test_status_line_ticks_between_events_and_says_how_long_the_run_has_been_silent():
    events = running_events()
    now = [events[-1].wall_time + 1.0]

    async def script(app, pilot):
        app.state.clock = lambda: now[0]
        await pilot.pause(1.2)
        status = text_of(app.query_one("#status"))
        assert clock_of(status, "elapsed") == 6 and "ETA" in status and "ago" not in status
        now[0] += 3.0  # no event for 3 s: the clock goes on without one
        await pilot.pause(1.2)
        status = text_of(app.query_one("#status"))
        assert clock_of(status, "elapsed") == 9 and "ago" not in status
        now[0] += 60.0  # silent far longer than its logging interval (1 s here)
        await pilot.pause(1.2)
        assert "last event 64 s ago" in text_of(app.query_one("#status"))

    drive(MiranteApp(LiveFake(events)), (80, 24), script, wait_end=False)


def test_replay_shows_the_elapsed_time_of_the_run_own_clock():
    duration = RunReader(SMALLCNN).summary().duration

    async def script(app, pilot):
        await pilot.pause(1.5)
        assert app.state.ended is None and app.state.step > 0
        elapsed = clock_of(text_of(app.query_one("#status")), "elapsed")
        assert elapsed < duration

    drive(MiranteApp(ReplaySource(SMALLCNN, speed=1.0), store=SMALLCNN), (80, 24), script, wait_end=False)


def test_replay_eta_is_the_time_the_replay_has_left_at_its_speed():
    async def script(app, pilot):
        await pilot.pause(1.5)
        await pilot.press("p")  # the replay holds still: the status line and the state agree
        await pilot.pause(1.2)
        assert app.state.ended is None and app.state.step > 0
        status, own = text_of(app.query_one("#status")), app.state.eta  # the run's own time left, then
        assert abs(clock_of(status, "ETA") - own / 4) <= 1, (status, own)

    drive(MiranteApp(ReplaySource(SMALLCNN, speed=4.0), store=SMALLCNN), (80, 24), script, wait_end=False)


def test_train_accuracy_says_its_epoch_while_a_later_epoch_runs(tmp_path):
    store = tiny_run(tmp_path / "tiny.mirante", 15)  # epoch 1 ended at step 10, epoch 2 runs

    async def script(app, pilot):
        info = text_of(app.query_one("#info"))
        assert "epoch 2/3" in info and "train acc 50.0% (epoch 1)" in info, info

    drive(MiranteApp(FollowSource(store), store=store), (80, 24), script, wait_end=False)


def test_the_validation_numbers_keep_accuracy_and_loss_with_their_best_at_60_columns():
    async def script(app, pilot):
        line = visible(app, "#info", (60, 20))[2]
        assert re.fullmatch(r"val acc 96\.8% \(best\) · val loss 0\.\d+ \(best\)", line), line  # epoch 3, the last

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (60, 20), script)


class Commands(list):
    """The trainer's command queue, as the app sees it: it only puts."""

    def put(self, command: str) -> None:
        self.append(command)


def test_paused_run_reads_paused_on_the_overview():
    commands = Commands()

    async def script(app, pilot):
        assert text_of(app.query_one("#info")).splitlines()[1].startswith("running")
        await pilot.press("p")
        await pilot.pause()
        where = text_of(app.query_one("#info")).splitlines()[1]
        assert commands == ["pause"] and where.startswith("paused") and "running" not in where
        await pilot.press("p")
        await pilot.pause()
        assert text_of(app.query_one("#info")).splitlines()[1].startswith("running")

    drive(MiranteApp(LiveFake(running_events()), commands=commands), (80, 24), script, wait_end=False)


GROUPS = ("model", "data", "optimizer and schedule", "augmentation", "seed", "device and precision", "run")


def test_configuration_view_shows_every_key_grouped_from_every_screen():
    config = RunReader(SMALLCNN).started().config

    async def script(app, pilot):
        for pane in "13":
            await pilot.press(pane, "g")
            await pilot.pause()
            assert type(app.screen).__name__ == "ConfigScreen"
            shown = text_of(app.screen.query_one("#config"))
            for group in GROUPS:
                assert f"\n{group}\n" in f"\n{shown}\n", group
            lines = {line.split(None, 1)[0]: line for line in shown.splitlines() if line.startswith("  ")}
            for key, value in config.items():
                assert key in lines, key
                assert lines[key].split(None, 1)[1].startswith(printable(value)), key
            assert lines["image_size"].split(None, 1)[1] == "None  (32x32 fed to the model)"  # what None meant
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert type(app.screen).__name__ != "ConfigScreen"

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (80, 24), script)


def test_every_option_of_a_run_has_its_group():
    from engine.config import TrainConfig
    from tui.screens.config import grouped

    groups = dict(grouped(TrainConfig().to_dict()))
    assert "update_every" in groups["run"] and "other" not in groups, groups.get("other")


def test_configuration_view_shows_a_store_value_literally(tmp_path):
    store = tiny_run(tmp_path / "odd.mirante", 3, end="finished", extra={"[b]odd": "[red]x\x1b]0;t\x07", "n": None})

    async def script(app, pilot):
        await pilot.press("g")
        await pilot.pause()
        shown = text_of(app.screen.query_one("#config"))
        assert "[b]odd" in shown and printable("[red]x\x1b]0;t\x07") in shown and "\x1b" not in shown

    drive(MiranteApp(FollowSource(store), store=store), (80, 24), script)


def test_epoch_table_lists_every_epoch_with_accuracy_in_percent():
    async def script(app, pilot):
        await pilot.press("t")
        await pilot.pause()
        table = app.screen.query_one("#epochs")
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert len(rows) == len(app.state.epochs) == 3
        last = app.state.epochs[-1]
        assert rows[-1][0].startswith("3")
        assert f"{100 * last.val_acc:.1f}%" in rows[-1] and f"{100 * last.train_acc:.1f}%" in rows[-1]
        assert any(cell.endswith(" s") for cell in rows[-1])

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (80, 24), script)


KEYS = 14  # the help's key column: " " and the keys of one action


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_footer_shows_help_and_help_lists_every_key_of_the_screen(size):
    from textual.widgets._footer import FooterKey

    async def script(app, pilot):
        for pane in "15":
            await pilot.press(pane)
            await pilot.pause()
            shown = [k for k in app.screen.query(FooterKey) if k.region.right <= size[0] and k.region.width]
            assert "?" in [k.key_display for k in shown]
            keys = {app.get_key_display(b.binding) for b in app.screen.active_bindings.values()}
            await pilot.press("question_mark")
            await pilot.pause()
            assert type(app.screen).__name__ == "HelpScreen"
            helped = text_of(app.screen.query_one("#help"))
            listed = {key for line in helped.splitlines() if line.startswith(" ") for key in line[:KEYS].split()}
            missing = {k for k in keys if k not in listed and "^p" not in k}
            assert not missing, (missing, helped)
            await pilot.press("escape")
            await pilot.pause(0.1)

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), size, script)


def test_overview_diagnostics_say_all_ok_in_one_line_when_nothing_is_wrong():
    async def script(app, pilot):
        states = app.state.check_states().values()
        assert states and all(f.level == "ok" for f in states)
        worst = text_of(app.query_one("#worst"))
        assert f"all {len(states)} checks ok" in worst
        assert "epoch 1" not in worst and len(worst.splitlines()) <= 3

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (80, 24), script)


def test_overview_diagnostics_show_what_is_wrong_first_and_count_the_rest():
    store = ROOT / "sample_runs" / "diverging-lr.mirante"

    async def script(app, pilot):
        states = app.state.check_states().values()
        bad = [f for f in states if f.level != "ok"]
        worst = " ".join(text_of(app.query_one("#worst")).split())
        assert bad and all(f"{f.level} {f.code}" in worst for f in bad[:2])
        oks = len(states) - len(bad)
        assert f"{oks} other checks ok" in worst or oks == 0

    drive(MiranteApp(FollowSource(store), store=store), (80, 24), script)


def test_restart_replays_again_once_the_replay_has_ended(tmp_path):
    store = tiny_run(tmp_path / "replay.mirante", 30, end="finished")

    async def script(app, pilot):
        assert app.state.ended is not None and app.state.step == 30
        app.source.speed = 0.001  # slow, so the restarted replay is seen at its start
        await pilot.press("r")
        await pilot.pause(0.5)
        assert app.state.ended is None and app.state.step < 30
        assert "replay restarted" in text_of(app.query_one("#status"))

    drive(MiranteApp(ReplaySource(store, speed=1e6), store=store), (80, 24), script)


def test_f_fills_the_screen_with_a_chart_and_w_shows_the_last_steps():
    from tui.widgets import Chart

    seen = {}

    async def script(app, pilot):
        loss = app.query_one("#loss", Chart)
        await pilot.press("f")
        await pilot.pause(0.2)
        seen["full"] = loss.is_maximized and loss.size.height > 15
        await pilot.press("f")
        await pilot.pause(0.2)
        seen["back"] = not loss.is_maximized
        await pilot.press("w")
        await pilot.pause()
        seen["window"] = text_of(loss).splitlines()[0]
        await pilot.press("w")
        await pilot.pause()
        seen["all"] = text_of(loss).splitlines()[0]
        seen["accuracy"] = text_of(app.query_one("#accuracy", Chart))
        await pilot.press("question_mark")
        await pilot.pause()
        seen["help"] = " ".join(text_of(w) for w in app.screen.query("Static"))

    drive(MiranteApp(ReplaySource(SMALLCNN, speed=1e6), store=SMALLCNN), (80, 24), script)
    assert seen["full"] and seen["back"], seen
    assert "last 500" in seen["window"] and "last" not in seen["all"], seen
    assert "75%" in seen["accuracy"] or "50%" in seen["accuracy"], seen["accuracy"]
    assert "full screen" in seen["help"] and "last 500 steps" in seen["help"], seen["help"]


def help_keys(app) -> set[str]:
    """The keys the screen takes for the app's own actions (the focused widget's, such as the tabs' arrows, aside)."""
    return {app.get_key_display(b.binding) for b in app.screen.active_bindings.values() if b.node is app}


def test_keys_of_another_pane_or_of_replays_are_neither_listed_nor_taken():
    """A watched run: + - r (replays) and the Model's < > are not offered on the Overview; ← → only on Activations."""

    async def script(app, pilot):
        await pilot.press("1")
        await pilot.pause(0.2)
        keys = help_keys(app)
        assert not keys & {"+", "-", "r", "<", ">", "←", "→"}, " ".join(sorted(keys))
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        helped = text_of(app.screen.query_one("#help"))
        assert "replay" not in helped.replace("or the replay", "") and "model table" not in helped, helped
        assert "activation capture" not in helped, helped
        await pilot.press("escape")
        note = app.note
        await pilot.press("r", "plus")
        await pilot.pause(0.2)
        assert app.note == note and app.query_one("TabbedContent").active == "OverviewPane"
        await pilot.press("4")
        await pilot.pause(0.2)
        assert {"←", "→"} <= help_keys(app)
        await pilot.press("3")
        await pilot.pause(0.2)
        assert {"<", ">"} <= help_keys(app) and not help_keys(app) & {"←", "→"}

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (80, 24), script)


def test_a_replay_offers_its_speed_and_restart_keys():
    async def script(app, pilot):
        assert {"+", "-", "r"} <= help_keys(app)

    drive(MiranteApp(ReplaySource(SMALLCNN, speed=1000.0), store=SMALLCNN), (80, 24), script)


def test_the_status_line_keeps_smoothing_and_log_y_in_view_at_80_columns(tmp_path):
    """The default run's name is 31 characters: the settings a user just toggled must still show, the seq gives way."""
    name = "smallcnn-shapes-20261204-213703"
    store = tiny_run(tmp_path / f"{name}.mirante", 30, end="finished", name=name)

    async def script(app, pilot):
        await pilot.press("s", "l")
        await pilot.pause()
        status = visible(app, "#status", (80, 24))[0]
        assert "smoothed 0.6" in status and "log y" in status and "finished" in status, status
        assert text_of(app.query_one("#loss")).startswith("loss (log y)")

    drive(MiranteApp(FollowSource(store), store=store), (80, 24), script)


def test_side_by_side_charts_keep_a_gutter_between_them():
    async def script(app, pilot):
        loss, accuracy = app.query_one("#loss").region, app.query_one("#accuracy").region
        assert accuracy.x - loss.right >= 2, (loss, accuracy)
        await pilot.press("6")
        await pilot.pause(0.2)
        left, right = app.query_one("#sys0").region, app.query_one("#sys1").region
        assert right.x - left.right >= 2, (left, right)

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (80, 24), script)


def test_a_key_answer_gives_way_to_the_run_note_after_a_while(tmp_path, monkeypatch):
    import tui.app

    monkeypatch.setattr(tui.app, "NOTE_S", 0.5)
    store = tmp_path / "done.mirante"
    store.write_bytes(SMALLCNN.read_bytes())

    async def script(app, pilot):
        await pilot.press("p")
        await pilot.pause(0.1)
        assert "pause: the run has ended" in text_of(app.query_one("#status"))
        await pilot.pause(1.6)  # a clock tick after the answer's time
        status = text_of(app.query_one("#status"))
        assert "pause:" not in status and "end of run" in status, status

    drive(MiranteApp(FollowSource(store), store=store), (100, 24), script)


def test_the_help_lists_the_pane_own_keys_first_so_they_show_at_80x24():
    async def script(app, pilot):
        for pane, keys in (("4", ("←", "→")), ("3", ("<", ">"))):
            await pilot.press(pane)
            await pilot.pause(0.2)
            await pilot.press("question_mark")
            await pilot.pause()
            rows = text_of(app.screen.query_one("#help")).splitlines()[1:]
            assert [row.split()[0] for row in rows[:2]] == list(keys), rows[:4]
            await pilot.press("escape")
            await pilot.pause(0.1)

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (80, 24), script)


def test_the_clocks_skip_a_tab_pane_emptied_during_teardown():
    """A redraw or a clock tick while Textual removes the panes (seen in CI: IndexError in active_pane)."""

    async def script(app, pilot):
        await app.active_pane().remove()
        assert app.active_pane() is None
        app.redraw(force=True)
        app.tick()

    drive(MiranteApp(FollowSource(SMALLCNN), store=SMALLCNN), (80, 24), script)
