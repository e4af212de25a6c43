"""The app through Textual's Pilot: every pane shows its content, every key works, NaN runs render."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from textual.widgets import TabbedContent

from engine import events as ev
from tests.apps import drive, text_of, until
from tests.runs import LAYERS, make_events, write_run
from tui.app import MiranteApp
from tui.sources import FollowSource, ReplaySource

ROOT = Path(__file__).resolve().parents[1]

SIZES = [(80, 24), (160, 48)]


def at_each_size(panes):
    """A Pilot script: `panes(app, pilot)` at each of SIZES in one app, resized (each pane drawn again), then q."""

    async def script(app, pilot):
        for size in SIZES:
            await pilot.resize_terminal(*size)
            await pilot.pause()
            await panes(app, pilot)
        await pilot.press("q")

    return script


def diverging_events() -> list[ev.Event]:
    """A run whose loss grows to inf and NaN, and whose gradients explode."""
    events = make_events(steps=300, end=None)
    seq = ev.Sequencer(last_seq=events[-1].seq, clock=lambda: 1_700_000_010.0)
    for step in range(300, 320):
        loss = 10.0 ** (step - 300) if step < 310 else (math.inf if step == 310 else math.nan)
        events.append(ev.Step(**seq.header(step), scalars={"train/loss": loss, "lr": 10.0}))
        grads = [math.nan if step >= 310 else 10.0 ** (step - 300) * 1e3 for _ in LAYERS]
        events.append(ev.LayerStats(**seq.header(step), grad_norm=grads, weight_norm=[1.0] * 4, update_ratio=[1.0] * 4))
    events.append(ev.RunEnded(**seq.header(320), status="failed", reason="loss became NaN"))
    return events


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("app")
    write_run(d / "good.mirante", steps=2500)
    write_run(d / "nan.mirante", events=diverging_events())
    return {"good": d / "good.mirante", "nan": d / "nan.mirante"}


@pytest.mark.parametrize("run", ["good", "nan"])
def test_every_pane_shows_its_content(runs, run):
    async def panes(app, pilot):
        assert app.state.ended is not None
        await pilot.press("1")
        await pilot.pause()
        info = text_of(app.query_one("#info"))
        assert "synthetic" in info and "smallcnn on shapes" in info
        loss_chart = text_of(app.query_one("#loss"))
        assert "loss" in loss_chart and "no data yet" not in loss_chart
        if run == "nan":
            assert "failed" in info and "NaN" in info  # the latest loss is NaN, and says so
            assert "×" in loss_chart  # the NaN steps are marked on the chart
        await pilot.press("2")
        await pilot.pause()
        table = app.query_one("#layers")
        assert table.row_count == len(LAYERS)
        assert str(table.get_row_at(0)[0]) == LAYERS[0]
        if run == "nan":
            assert {str(table.get_row_at(i)[5]) for i in range(table.row_count)} == {"exploding"}
        assert "log10 gradient norm" in text_of(app.query_one("#heat-title"))
        await pilot.press("3")
        await pilot.pause()
        assert "params" in text_of(app.query_one("#totals"))
        await pilot.press("4")
        await pilot.pause()
        caption = text_of(app.query_one("#caption"))
        assert ("capture 1/1 · step 500" if run == "good" else "no capture yet") in caption, caption
        await pilot.press("5")
        await pilot.pause()
        checks = app.query_one("#checks")
        states = {key.value: str(checks.get_row(key)[0]) for key in checks.rows}
        assert states["divergence"] == "fail"  # the NaN loss at step 100, found by the app's own checks
        history = app.query_one("#diagnostics")
        codes = [str(history.get_row_at(i)[2]) for i in range(history.row_count)]
        if run == "good":  # the synthetic run stored one diagnostic, at step 500: the stored one is shown
            assert states["initial-loss"] == "warn" and "initial-loss" in codes
        else:
            assert states["exploding-gradients"] == "fail"  # past the NaN loss, the NaN norms are the gradients' own
            assert states["initial-loss"] == "not seen"  # the synthetic run does not say how many classes
        assert "NaN at step 100" in text_of(app.query_one("#detail"))  # the cursor starts on the worst check
        assert "overfit" not in states  # the mode checks are listed only in their modes
        assert "lr-find" not in states and not app.query_one("#range").display
        await pilot.press("6")
        await pilot.pause()
        system = text_of(app.query_one("#sys0"))
        assert ("cpu/rss_mb" if run == "good" else "no System events yet") in system, (app.size, system)

    drive(MiranteApp(FollowSource(runs[run]), store=runs[run]), SIZES[0], at_each_size(panes))


def test_keys(runs, tmp_path):
    store = tmp_path / "k.mirante"
    store.write_bytes(runs["good"].read_bytes())

    async def script(app, pilot):
        await pilot.press("space")
        assert app.frozen
        await pilot.press("space", "s")
        assert not app.frozen and app.view.smooth
        await pilot.press("right_square_bracket")
        assert app.view.smoothing == pytest.approx(0.7)
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert app.view.smoothing == pytest.approx(0.5)
        await pilot.press("l")
        assert app.view.log_y
        await pilot.press("4", "left")
        assert app.query_one("ActivationsPane").step == 500  # captures at 500 only: stays there
        await pilot.press("3", "greater_than_sign")
        assert app.query_one("ModelPane").depth == 3
        await pilot.press("e")
        for _ in range(50):
            await pilot.pause(0.1)
            if "exported" in app.note:
                break
        assert "exported" in app.note and store.with_suffix(".csv").exists()
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "HelpScreen"
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ != "HelpScreen"
        await pilot.press("q")

    drive(MiranteApp(FollowSource(store), store=store), (100, 30), script)


def test_replay_keys(runs):
    app = MiranteApp(ReplaySource(runs["good"], speed=1.0), store=runs["good"])

    async def script(app, pilot):
        await pilot.press("plus")
        assert app.source.speed == 2.0
        await pilot.press("minus", "minus")
        assert app.source.speed == 0.5
        await pilot.press("p")
        assert app.source.paused
        await pilot.press("p")
        assert not app.source.paused
        app.source.speed = 1e6
        for _ in range(100):
            await pilot.pause(0.05)
            if app.state.ended is not None:
                break
        assert app.state.ended is not None
        await pilot.press("r")
        for _ in range(40):
            await pilot.pause(0.05)
            if app.state.last_seq < 100:
                break
        assert app.state.last_seq < 3000  # started again from the beginning
        for _ in range(100):  # to the end again, and past it: the source is done, its reader has stopped
            await pilot.pause(0.05)
            if app.source.done and not app._reading:
                break
        assert app.source.done and app.state.ended is not None
        before = app.state
        await pilot.press("r")  # a replay that has ended restarts too
        for _ in range(100):
            await pilot.pause(0.05)
            if app.state is not before and app.state.ended is not None:
                break
        assert app.state is not before and app.state.ended is not None  # replayed afresh, to the end
        await pilot.press("q")

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.2)
            await script(app, pilot)

    asyncio.run(main())


def test_a_tiny_terminal_asks_to_be_enlarged(runs):
    async def script(app, pilot):
        assert app.screen.has_class("too-small")
        assert "enlarge the terminal" in text_of(app.query_one("#too-small"))
        await pilot.resize_terminal(100, 30)
        await until(pilot, lambda: not app.screen.has_class("too-small"))  # checked at the next redraw
        for size in [(40, 12), (120, 40), (50, 14), (80, 24)]:  # resized again and again
            await pilot.resize_terminal(*size)
            await pilot.pause(0.1)
        await pilot.press("q")

    drive(MiranteApp(FollowSource(runs["good"]), store=runs["good"]), (40, 12), script)


def test_an_empty_store_waits(tmp_path):
    path = tmp_path / "soon.mirante"
    path.touch()

    async def main():
        app = MiranteApp(FollowSource(path), store=path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.5)
            assert app.state.status() == "waiting"
            assert "waiting" in text_of(app.query_one("#status"))
            await pilot.press("q")

    asyncio.run(main())


def test_watch_shows_new_steps_within_a_second_of_their_commit(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from engine.store import RunReader, StoreError

    root = Path(__file__).resolve().parents[1]
    store = tmp_path / "runs" / "watched.mirante"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "train", "--headless", "--name", "watched", "--epochs", "1"]
        + ["--image-size", "16", "--log-every", "10"],  # a commit about every 0.2 s on 2 cores
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lags = []

    async def main():
        app = MiranteApp(FollowSource(store), store=store)
        async with app.run_test(size=(80, 24)) as pilot:
            deadline = time.monotonic() + 120
            reader = None
            while trainer.poll() is None and time.monotonic() < deadline and len(lags) < 10:
                await pilot.pause(0.05)
                try:
                    reader = reader or RunReader(store)
                except StoreError:
                    continue
                committed = reader.last_seq()
                seen_at = time.monotonic()
                if committed <= app.state.last_seq:
                    continue
                while app.state.last_seq < committed and time.monotonic() - seen_at < 5:
                    await pilot.pause(0.02)
                lags.append(time.monotonic() - seen_at)
            if reader is not None:
                reader.close()
            await pilot.press("q")

    try:
        asyncio.run(main())
    finally:
        trainer.kill()
        trainer.wait()
    assert len(lags) >= 5, trainer.stderr.read()
    print(f"watch lag after commit: max {max(lags):.3f} s over {len(lags)} commits")
    assert max(lags) < 1.0, lags


SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sample_runs").glob("*.mirante"))


@pytest.mark.parametrize("store", SAMPLES, ids=lambda p: p.stem)
def test_sample_runs_render_on_every_pane(store, tmp_path):
    copy = tmp_path / store.name  # readers never write, but keep the shipped files out of harm's way
    copy.write_bytes(store.read_bytes())

    async def panes(app, pilot):
        state = app.state
        assert state.ended is not None and state.name == store.stem
        await pilot.press("1")
        await pilot.pause()
        assert store.stem in text_of(app.query_one("#info"))
        loss = text_of(app.query_one("#loss"))
        assert set(loss) & set("▖▗▘▙▚▛▜▝▞▟▀▄▌▐█") and "no data yet" not in loss  # plotted points
        if store.stem == "diverging-lr":
            assert "×" in loss  # the NaN losses are marked
        await pilot.press("2")
        await pilot.pause()
        assert app.query_one("#layers").row_count == len(state.layer_names) > 0
        if store.stem == "plainnet-sigmoid":
            flags = {str(app.query_one("#layers").get_row_at(0)[5])}
            assert flags == {"vanishing"}  # the first layer's gradient has vanished
        await pilot.press("3")
        await pilot.pause()
        assert app.query_one("#table").row_count > 3
        await pilot.press("4")
        await pilot.pause()
        assert "· step" in text_of(app.query_one("#caption")) and state.captures
        view = text_of(app.query_one("#view"))
        assert "▀" in view.splitlines()[0]  # the validation image, drawn at the top left
        await pilot.press("5", "6")
        await pilot.pause()
        assert "rss" in text_of(app.query_one("#sys0")), app.size

    drive(MiranteApp(FollowSource(copy), store=copy), SIZES[0], at_each_size(panes))


def test_a_run_whose_writer_died_shows_as_crashed(tmp_path):
    store = tmp_path / "died.mirante"
    write_run(store, steps=200, end=None)  # closed without RunEnded: its writer is gone

    async def script(app, pilot):
        await pilot.pause()
        assert app.state.status() == "crashed"
        assert "crashed" in text_of(app.query_one("#status")) and "crashed" in text_of(app.query_one("#info"))
        await pilot.press("q")

    drive(MiranteApp(FollowSource(store), store=store), (80, 24), script)


def test_an_lr_find_run_opens_on_its_chart():
    store = ROOT / "sample_runs" / "lrfind-smallcnn.mirante"

    async def script(app, pilot):
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "DiagnosticsPane"
        chart = app.query_one("#range")
        assert chart.display and not app.query_one("#diagnostics").display
        text = text_of(chart)
        assert "suggested learning rate" in text and "1e-5" in text  # the verdict, and decades on the x axis
        assert "suggested learning rate" in text_of(app.query_one("#detail"))  # the cursor on the lr-find row

    drive(MiranteApp(FollowSource(store), store=store), (120, 36), script)


@pytest.mark.parametrize(
    ("run", "code", "level"),
    [("diverging-lr", "divergence", "fail"), ("plainnet-sigmoid", "vanishing-gradients", "warn")],
)
def test_sample_runs_replayed_show_their_diagnostics(run, code, level):
    store = ROOT / "sample_runs" / f"{run}.mirante"

    async def script(app, pilot):
        await pilot.press("5")
        await pilot.pause()
        checks = app.query_one("#checks")
        assert str(checks.get_row(code)[0]) == level
        assert str(checks.get_row_at(checks.cursor_row)[1]) == str(checks.get_row(code)[1])  # cursor on the worst
        await pilot.press("1")
        await pilot.pause()
        assert f"{level} {code}" in " ".join(text_of(app.query_one("#worst")).split())

    drive(MiranteApp(ReplaySource(store, speed=1e6), store=store), (120, 36), script)


def test_keys_that_talk_to_a_live_trainer(runs):
    import queue

    class Quiet:  # a live source with nothing to say yet
        done = False

        def read(self, timeout: float = 0.1) -> list:
            time.sleep(timeout)
            return []

    commands: queue.Queue = queue.Queue()
    app = MiranteApp(Quiet(), commands=commands)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("c", "p", "p")
            await pilot.pause(0.1)
            assert [commands.get_nowait() for _ in range(3)] == ["capture", "pause", "resume"]
            app.exit()

    asyncio.run(main())


def many_captures_run(path: Path, captures: int = 30) -> list[ev.Event]:
    """A run written by a checking writer, with more activation captures than the app keeps in memory."""
    from engine.diagnostics import VERSION
    from tests.runs import f16

    seq = ev.Sequencer(clock=iter(1_700_000_000.0 + 0.01 * i for i in range(10**9)).__next__)
    events: list[ev.Event] = [
        ev.RunStarted(
            **seq.header(0),
            name="captures",
            model="m",
            dataset="d",
            layers=LAYERS,
            config={"diagnostics": VERSION, "total_steps": 50 * captures},
        )
    ]
    for step in range(50 * captures):
        events.append(ev.Step(**seq.header(step), scalars={"train/loss": 2.0 + math.sin(step / 7), "lr": 0.1}))
        if step % 50 == 0:  # every map of capture k is k: which capture is shown can be read off it
            k = step // 50
            events.append(
                ev.Activation(**seq.header(step), layer="conv1", sample=0, shape=(2, 4, 4), data=f16([float(k)] * 32))
            )
    events.append(ev.RunEnded(**seq.header(50 * captures), status="finished", reason=""))
    write_run(path, events)
    return events


def test_older_captures_are_read_back_from_the_store_when_stepped_to(tmp_path):
    from tui.state import MAPS_KEPT

    store = tmp_path / "captures.mirante"
    many_captures_run(store, captures=30)

    async def script(app, pilot):
        await pilot.press("4")
        await pilot.pause(0.2)
        assert len(app.state.maps) <= MAPS_KEPT and len(app.state.capture_steps) == 30
        assert "capture 30/30 · step 1,450" in text_of(app.query_one("#caption"))
        for _ in range(29):
            await pilot.press("left")
        await pilot.pause(0.2)
        assert "capture 1/30 · step 0" in text_of(app.query_one("#caption"))
        assert app.state.latest_maps("conv1", 0).maps.max() == 0.0  # capture 0's maps, read back from the store
        assert app.state.latest_maps("conv1", 400).maps.max() == 8.0
        assert len(app.state.maps) <= MAPS_KEPT

    drive(MiranteApp(FollowSource(store), store=store), (100, 30), script)


def test_smoothing_a_long_run_again_reads_its_points_from_the_store(tmp_path):
    from tui.series import ema_points

    store = tmp_path / "captures.mirante"
    events = many_captures_run(store, captures=100)  # 5,000 steps: more than the series keep as points
    loss = [e.scalars["train/loss"] for e in events if isinstance(e, ev.Step)]

    async def script(app, pilot):
        assert not app.state.scalars["train/loss"].raw
        await pilot.press("right_square_bracket")  # smoothing 0.6 -> 0.7, and on
        await pilot.pause(0.2)
        b = app.state.series("train/loss")
        ema, _, _ = ema_points(loss, 0.7)
        assert b.smooth[-1] == pytest.approx(ema[-1], rel=1e-9) and b.count.sum() == len(loss)
        assert "smoothed 0.7" in str(app.query_one("#status").render())

    drive(MiranteApp(FollowSource(store), store=store), (100, 30), script)


class Quiet:
    """A live source that has said RunStarted and nothing since: the run is training."""

    done = False

    def __init__(self) -> None:
        self.sent = False

    def read(self, timeout: float = 0.1) -> list:
        if not self.sent:
            self.sent = True
            return [ev.RunStarted(seq=1, wall_time=time.time(), step=0, name="live", model="m", dataset="d")]
        time.sleep(timeout)
        return []


@pytest.mark.parametrize("key", ["q", "ctrl+c", "ctrl+q"])
def test_quitting_a_run_trained_here_asks_first_and_twice_stops_it(key):
    import queue

    from tui.screens.dialogs import QuitScreen

    commands: queue.Queue = queue.Queue()
    app = MiranteApp(Quiet(), commands=commands)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press(key)
            await pilot.pause(0.1)
            assert isinstance(app.screen, QuitScreen) and app.is_running  # asked, not gone
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert not isinstance(app.screen, QuitScreen) and commands.empty()
            await pilot.press(key, key)  # asked again, and answered with its default: stop
            await pilot.pause(0.1)
            assert commands.get_nowait() == "stop" and app.stopping and app.is_running  # leaves once it has ended
            app.exit()

    asyncio.run(main())


def test_keys_say_when_the_run_cannot_be_commanded(runs, tmp_path):
    """A finished run watched from here: p, c and q do not pretend."""
    store = tmp_path / "done.mirante"
    store.write_bytes(runs["good"].read_bytes())

    async def script(app, pilot):
        await pilot.press("p")
        assert not app.paused and app.note == "pause: the run has ended (finished)"
        await pilot.press("c")
        assert app.note == "capture: the run has ended (finished)"
        note = app.note
        await pilot.press("r", "plus")
        assert app.note == note  # r, + and - belong to replays: not offered here, and they do nothing
        await pilot.press("q")

    drive(MiranteApp(FollowSource(store), store=store), (100, 30), script)


def test_a_run_with_no_command_pipe_says_so(tmp_path):
    """A run that reads as running but cannot be reached (an older writer, another machine): p says why."""
    from engine.store import RunWriter

    store = tmp_path / "far.mirante"
    writer = RunWriter(store)  # holds the store's lock: the run reads as running; nobody made a command pipe
    try:
        writer.write(ev.RunStarted(seq=1, wall_time=time.time(), step=0, name="far", model="m", dataset="d"))
        writer.flush()

        async def main() -> None:
            app = MiranteApp(FollowSource(store), store=store)
            async with app.run_test(size=(100, 30)) as pilot:
                for _ in range(40):
                    await pilot.pause(0.05)
                    if app.state.started is not None:
                        break
                await pilot.press("p")
                assert not app.paused and app.note.startswith("pause: cannot reach the run: it has no command pipe")
                app.exit()

        asyncio.run(main())
    finally:
        writer.close()


class RecoveringSource:
    """A live source whose feed fell behind once: it read 150 events back from the store."""

    def __init__(self, events: list[ev.Event]) -> None:
        self.events, self.done, self.recovered = events, False, 0

    def read(self, timeout: float = 0.1) -> list[ev.Event]:
        if self.recovered:
            self.done = True
            return []
        self.recovered = 150
        return self.events


def test_the_status_line_says_when_the_live_feed_fell_behind():
    async def script(app, pilot):
        assert "the live feed fell behind: 150 events read from the store" in app.note

    drive(MiranteApp(RecoveringSource(make_events(steps=50))), (100, 30), script)
