"""A trainer child that dies on its own: the parent notices at once, ends the run as failed, and never hangs.

Issue 12, items 1 and 4. The subprocess tests start `mirante train --headless` (or a script calling
`train_headless`) in a new session and kill its whole process group in a `finally`; the in-process
tests put half a message on a real multiprocessing queue, as a trainer killed in the middle of a put
leaves it, and check that nothing blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import events as ev
from engine.launch import LiveEvents, settle
from engine.store import RunReader, RunWriter, StoreError
from tests.runs import make_events
from tests.test_control import LONG_RUN, env, kill_group, steps, trainer_of, wait_for

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 60  # a parent that has not ended this long after its trainer died hangs


class Dead:
    """Stands in for a trainer process: alive until `kill`, then gone with `exitcode` (as multiprocessing says)."""

    def __init__(self, exitcode: int | None = None) -> None:
        self.exitcode = exitcode

    def kill(self, exitcode: int = -signal.SIGKILL) -> None:
        self.exitcode = exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        pass


def half_a_message(live) -> None:
    """What a trainer killed in the middle of putting a batch leaves on the pipe: a length, then too few bytes."""
    os.write(live._writer.fileno(), struct.pack("!i", 4096) + b"\x80\x05" + b"x" * 100)


def store_of_a_dead_trainer(path: Path, n_steps: int = 40) -> list[ev.Event]:
    """A store as a killed trainer leaves it: RunStarted and steps, no RunEnded, nobody writing."""
    events = [dataclasses.replace(e, wall_time=time.time()) for e in make_events(steps=n_steps, end=None)]
    with RunWriter(path) as writer:
        for event in events:
            writer.write(event)
    return events


# --- LiveEvents: the queue read so that no read blocks ----------------------------------------


def test_half_a_message_on_the_queue_blocks_nobody():
    live = mp.get_context("spawn").Queue()
    trainer = Dead()
    events = LiveEvents(live, trainer)
    batch = make_events(steps=5, end=None)
    live.put(batch)
    assert [e.seq for e in events.get(timeout=5)] == [e.seq for e in batch]
    live._writer.send_bytes(b"")  # flush nothing; then the torn message
    half_a_message(live)
    trainer.kill()
    started = time.monotonic()
    while not events.finished:
        with pytest.raises(queue.Empty):
            events.get(timeout=0.05)
        assert time.monotonic() - started < 5, "the reader waits for the rest of a message that never comes"
    assert trainer.exitcode == -signal.SIGKILL


def test_every_batch_a_trainer_put_before_it_exited_is_read():
    live = mp.get_context("spawn").Queue()
    trainer = Dead()
    events = LiveEvents(live, trainer)
    sent = make_events(steps=300, end="finished")
    for i in range(0, len(sent), 50):
        live.put(sent[i : i + 50])
    time.sleep(0.05)
    trainer.kill(0)  # a trainer that ended normally: its queue was flushed before it exited
    got: list[ev.Event] = []
    deadline = time.monotonic() + 10
    while not events.finished and time.monotonic() < deadline:
        try:
            got += events.get(timeout=0.05)
        except queue.Empty:
            pass
    assert [e.seq for e in got] == [e.seq for e in sent]


# --- settle: the run of a trainer that died ends as failed -----------------------------------


def test_the_run_of_a_killed_trainer_is_ended_as_failed_in_its_store(tmp_path):
    store = tmp_path / "k.mirante"
    events = store_of_a_dead_trainer(store)
    outcome = settle(store, -signal.SIGKILL, since=events[0].wall_time - 1)
    assert outcome.died == f"the trainer process died (killed by SIGKILL) at step {events[-1].step}"
    with RunReader(store) as run:
        ended = run.ended()
        assert run.status() == "failed" and ended.reason == outcome.died and ended.seq == events[-1].seq + 1
    assert settle(store, -signal.SIGKILL, since=events[0].wall_time - 1).died is None  # ended once, not twice


def test_a_trainer_killed_before_its_store_exists_is_said_in_one_line(tmp_path):
    outcome = settle(tmp_path / "never.mirante", -signal.SIGKILL, since=time.time())
    assert outcome.died == "the trainer process died (killed by SIGKILL) before the run started"
    assert outcome.ended is None and not (tmp_path / "never.mirante").exists()
    assert settle(tmp_path / "never.mirante", 2, since=time.time()).died is None  # it said why itself


def killed_while_creating(store: Path) -> None:
    """A store as SIGKILL leaves it in the middle of RunWriter's first transaction (the schema, before WAL mode):
    the main file and a hot rollback journal. (Copied while a real transaction is open.)"""
    making = store.with_name("making.db")
    db = sqlite3.connect(making, isolation_level=None)
    db.execute("PRAGMA page_size=16384")
    db.execute("BEGIN")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('store_id', 'x')")
    db.execute("PRAGMA cache_size=1")  # spill: the journal and the main file both get written before COMMIT
    db.executemany("INSERT INTO meta VALUES (?, ?)", [(str(i), "x" * 4000) for i in range(64)])
    shutil.copyfile(making, store)
    shutil.copyfile(making.with_name("making.db-journal"), store.with_name(store.name + "-journal"))
    db.execute("ROLLBACK")
    db.close()
    making.unlink()


@pytest.mark.parametrize("made", ["locked only", "schema, no event", "killed while creating"])
def test_a_store_cut_short_by_the_kill_is_removed_so_it_blocks_no_name(tmp_path, made):
    """The trainer was killed while creating its store: nothing was recorded, and the name stays free."""
    since = time.time() - 1
    store = tmp_path / "cut.mirante"
    if made == "locked only":  # the writer's lock file comes first: killed before SQLite wrote the schema
        store.write_bytes(b"")
    elif made == "killed while creating":
        killed_while_creating(store)
        with pytest.raises(StoreError):
            RunReader(store)  # a read-only reader cannot roll the hot journal back
    else:
        RunWriter(store).close()
    outcome = settle(store, -signal.SIGKILL, since=since)
    assert (
        outcome.ended is None and outcome.died == "the trainer process died (killed by SIGKILL) before the run started"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_store_older_than_the_trainer_is_never_removed(tmp_path):
    store = tmp_path / "old.mirante"
    RunWriter(store).close()  # an empty store, but not this trainer's
    os.utime(store, (time.time() - 60, time.time() - 60))
    settle(store, -signal.SIGKILL, since=time.time())
    assert store.exists()


def test_a_resumed_run_whose_trainer_died_before_starting_again_keeps_its_ending(tmp_path):
    store = tmp_path / "r.mirante"
    events = make_events(steps=20, end="interrupted")
    with RunWriter(store) as writer:
        for event in events:
            writer.write(event)
    outcome = settle(store, -signal.SIGKILL, since=time.time())
    assert outcome.died == "the trainer process died (killed by SIGKILL) before the run started"
    with RunReader(store) as run:
        assert run.status() == "interrupted" and run.last_seq() == events[-1].seq


# --- headless: `mirante train` ends at once, in one line, exit 1 ------------------------------


def headless(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "train", "--headless", *args],
        cwd=cwd,
        env=env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_headless_train_whose_trainer_dies_while_importing_torch_ends_in_one_line(tmp_path):
    proc = headless(*LONG_RUN, "--name", "early", cwd=tmp_path)
    try:
        os.kill(trainer_of(proc.pid), signal.SIGKILL)
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        kill_group(proc)
    assert proc.returncode == 1, (out, err)
    assert err == "mirante: error: the trainer process died (killed by SIGKILL) before the run started\n", err
    assert not (tmp_path / "runs" / "early.mirante").exists()


HEADLESS_PARENT = """
import sys, time
from engine.config import TrainConfig
from tui.headless import train_headless

config = TrainConfig(name="live", runs_dir="runs", model="smallcnn", dataset="shapes", device="cpu", steps=100000,
                     batch_size=8, log_every=5, probe_every=5, capture_every=20).validate()
code = train_headless(config.to_dict(), "runs/live.mirante")
print("torch imported:", "torch" in sys.modules, flush=True)
sys.exit(code)
"""


def test_headless_progress_arrives_live_without_torch_and_a_killed_trainer_ends_the_run(tmp_path):
    """Item 4: the parent unpickles every event without torch, and prints as the run goes (not 5-15 s late).
    Item 1: the trainer SIGKILLed mid-run: the parent ends the run as failed and exits 1 at once."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HEADLESS_PARENT],
        cwd=tmp_path,
        env=env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    store = tmp_path / "runs" / "live.mirante"
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.time(), line) for line in proc.stdout), daemon=True)
    reader.start()
    try:
        trainer = trainer_of(proc.pid)
        wait_for(lambda: len(lines) >= 2, DEADLINE_S, "the first progress lines")
        wait_for(lambda: steps(store) >= 25, DEADLINE_S, "an activation capture (at step 20)")
        before = list(lines)  # printed while the run went on
        os.kill(trainer, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=DEADLINE_S)
        took = time.monotonic() - killed
        reader.join(timeout=10)
        err = proc.stderr.read()
    finally:
        kill_group(proc)
    with RunReader(store) as run:
        started, ended, last = run.started(), run.ended(), run.summary().steps
    # the first lines were printed as the run went: RunStarted's line within seconds of the event, not at the end
    arrived, first = lines[0]
    assert first.startswith("live: smallcnn on shapes"), lines
    assert arrived - started.wall_time < 3.0, f"the first line came {arrived - started.wall_time:.1f} s late"
    assert any(line.startswith("step ") for _, line in before), before
    assert lines[-1][1] == "torch imported: False\n", lines
    # the run of the killed trainer: failed, with the reason, said once on stderr, exit 1, at once
    assert proc.returncode == 1 and took < 15, (proc.returncode, took, err)
    reason = f"the trainer process died (killed by SIGKILL) at step {last}"
    assert ended.status == "failed" and ended.reason == reason, ended
    assert err == f"mirante: error: {reason}\n", err
    assert lines[-2][1].startswith("failed: ") and reason in lines[-2][1], lines


@pytest.mark.usefixtures("one_thread")
def test_nothing_the_trainer_sends_needs_torch_to_unpickle(tmp_path, monkeypatch):
    """Every event kind a run puts on the live queue unpickles from engine.events alone: no torch, no numpy."""
    import engine.data
    from engine import train
    from engine.config import TrainConfig

    original = engine.data.build_data
    monkeypatch.setattr(train, "build_data", lambda *a, **k: original(*a, **{**k, "shapes_count": 256}))
    sent: list[list[ev.Event]] = []

    class Live:
        def put_nowait(self, batch: list[ev.Event]) -> None:
            sent.append(batch)

    config = TrainConfig(
        model="smallcnn", dataset="shapes", epochs=1, batch_size=32, runs_dir=str(tmp_path), name="pickled",
        log_every=2, probe_every=2, capture_every=4, device="cpu",
    ).validate()  # fmt: skip
    assert train.run(config, live=Live()) == 0
    kinds = {e.kind for batch in sent for e in batch}
    assert kinds >= {"RunStarted", "Step", "LayerStats", "Epoch", "Capture", "Maps", "Filters", "System", "RunEnded"}
    modules: set[str] = set()

    class Unpickler(pickle.Unpickler):  # what the parent's unpickling of each batch imports
        def find_class(self, module: str, name: str):
            modules.add(module)
            return super().find_class(module, name)

    for batch in sent:
        Unpickler(io.BytesIO(pickle.dumps(batch))).load()
    assert "engine.events" in modules and modules <= {"engine.events", "array", "builtins", "copyreg"}, modules


# --- the app: the screen says the run failed and why; every key leaves ---------------------


def run_app(source, store: Path, script) -> int | None:
    from tui.app import MiranteApp

    app = MiranteApp(source, store=store, commands=queue.Queue())

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await script(app, pilot)

    asyncio.run(asyncio.wait_for(main(), timeout=30))
    return app.return_code


async def until(pilot, what, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


def live_source_of_a_dying_trainer(tmp_path: Path):
    """A LiveSource on a real multiprocessing queue whose trainer sent its first events, then died mid-put."""
    from tui.sources import LiveSource

    store = tmp_path / "app.mirante"
    events = store_of_a_dead_trainer(store)
    live = mp.get_context("spawn").Queue()
    trainer = Dead()
    live.put(events[:10])
    source = LiveSource(live, store, trainer, since=events[0].wall_time - 1)
    return source, live, trainer, events


@pytest.mark.parametrize("keys", [(), ("q",), ("ctrl+c", "ctrl+c")], ids=["shown", "dialog-open", "ctrl-c-twice"])
def test_the_app_says_the_run_failed_when_its_trainer_dies(tmp_path, keys):
    from tui.screens.dialogs import QuitScreen

    source, live, trainer, events = live_source_of_a_dying_trainer(tmp_path)

    async def script(app, pilot):
        await until(pilot, lambda: app.state.last_seq >= 10)
        assert app.state.status() == "running"
        await pilot.press(*keys)  # q asks stop or detach, a second Ctrl+C answers it with stop
        half_a_message(live)
        trainer.kill()
        await until(pilot, lambda: app.state.status() == "failed")
        reason = f"the trainer process died (killed by SIGKILL) at step {events[-1].step}"
        assert app.state.ended.reason == reason and app.state.last_seq == events[-1].seq + 1
        await pilot.pause(0.3)
        status = str(app.query_one("#status").render())
        assert "failed" in status and "killed by SIGKILL" in status, status
        if keys == ("q",):  # the question asked while it trained now says it ended, and offers no stop
            assert isinstance(app.screen, QuitScreen) and "ended" in str(app.screen.query_one("Static").render())
            await pilot.press("s")  # every answer now leaves
        elif keys:
            await until(pilot, lambda: not app.is_running)  # it asked the trainer to stop: it leaves once ended
        else:
            await pilot.press("ctrl+c")  # nothing is left to stop: no question
        await until(pilot, lambda: not app.is_running)

    run_app(source, source.store, script)
    with RunReader(source.store) as run:
        assert run.status() == "failed"


def test_the_status_line_shows_a_run_name_and_a_reason_as_written(tmp_path):
    """The status line carries the store's run name and, once it ends, its reason: text, never markup."""
    from tui.app import MiranteApp
    from tui.sources import FollowSource

    store = tmp_path / "marked.mirante"
    events = make_events(steps=20, end=None)
    events[0] = dataclasses.replace(events[0], name="a[/]b[bold]")
    seq = events[-1].seq
    events.append(ev.RunEnded(seq=seq + 1, wall_time=events[-1].wall_time, step=20, status="failed", reason="x[/]y"))
    with RunWriter(store) as writer:
        for event in events:
            writer.write(event)
    app = MiranteApp(FollowSource(store), store=store)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.source.done and app.state.ended is not None)
            await pilot.pause(0.3)
            status = str(app.query_one("#status").render())
            assert "a[/]b[bold]" in status and "failed: x[/]y" in status, status
            app.exit()

    asyncio.run(asyncio.wait_for(main(), timeout=30))
