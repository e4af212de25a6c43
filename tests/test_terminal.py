"""A real terminal: `mirante replay` inside tmux at 80x24, read back with capture-pane, quit with q."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.store import RunReader, StoreError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")


def tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=30).stdout


@pytest.mark.parametrize("no_color", [False, True], ids=["color", "no-color"])
def test_replay_in_tmux(tmp_path, no_color):
    sample = ROOT / "sample_runs" / "smallcnn-shapes.mirante"
    store = tmp_path / sample.name  # a copy: the test must not leave -wal/-shm files in sample_runs
    store.write_bytes(sample.read_bytes())
    done = tmp_path / "exit-code"
    socket = f"mirante-test-{os.getpid()}-{int(no_color)}"
    env = f"TERM=xterm-256color PYTHONPATH={ROOT}" + (" NO_COLOR=1" if no_color else "")
    command = f"env {env} {sys.executable} -m tui.cli replay {store} --speed 1000; echo $? > {done}"
    tmux(socket, "new-session", "-d", "-x", "80", "-y", "24", command)
    try:
        screen = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = tmux(socket, "capture-pane", "-p")
            if "smallcnn-shapes" in screen and "┤" in screen and "finished" in screen:
                break
            time.sleep(0.3)
        assert "smallcnn-shapes" in screen, screen  # the run's name
        assert "┤" in screen and "loss" in screen, screen  # a chart's y axis
        assert "Traceback" not in screen
        with RunReader(store) as run:  # the numbers a user looks for, on the first screen
            best = run.summary().best_val_acc
        assert f"val acc {100 * best:.1f}% best {100 * best:.1f}%" in screen, screen
        assert len(loss_y_labels(screen)) >= 3, screen
        tmux(socket, "send-keys", "q")
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
    finally:
        tmux(socket, "kill-server")


def loss_y_labels(screen: str) -> list[str]:
    """The y labels of the Overview's loss chart (top left): from its title row down to its x axis."""
    rows = screen.splitlines()
    top = next(i for i, row in enumerate(rows) if row.startswith("loss"))
    labels = []
    for row in rows[top + 1 :]:
        left = row[:40]
        if "└" in left:
            break
        match = re.match(r"\s*(\S+)┤", left)
        if match:
            labels.append(match.group(1))
    return labels


def wait_for(predicate, timeout: float, what: str, screen=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{screen()}")


def last_step(store: Path) -> int:
    """The last step in the store; 0 while the trainer is still creating it (the file exists, its schema not yet:
    seen under a busy machine as 'empty file, not a run store')."""
    try:
        with RunReader(store) as run:
            return run.extent()[1]
    except StoreError:
        return 0


def test_train_detach_then_watch_pause_and_stop_in_tmux(tmp_path):
    """As a user over SSH: train in the app, q then d (detach), watch from a second window, p pauses the
    trainer (steps stop advancing in the store), q then s stops it, and watch exits 130 (interrupted)."""

    name = f"tmux-{os.getpid()}"
    store = tmp_path / "runs" / f"{name}.mirante"
    socket = f"mirante-test-{os.getpid()}-interactive"
    env = f"TERM=xterm-256color PYTHONPATH={ROOT} OMP_NUM_THREADS=1"
    train = (
        f"cd {tmp_path} && env {env} {sys.executable} -m tui.cli train --name {name} --steps 1000000 "
        f"--log-every 5 --batch-size 16; echo TRAIN-EXIT=$?; sleep 60"
    )
    watch = f"cd {tmp_path} && env {env} {sys.executable} -m tui.cli watch {name}; echo WATCH-EXIT=$?; sleep 60"
    tmux(socket, "new-session", "-d", "-s", "main", "-x", "80", "-y", "24", train)
    first = lambda: tmux(socket, "capture-pane", "-p", "-t", "main:0")  # noqa: E731
    try:
        wait_for(lambda: store.exists() and last_step(store) > 20, 90, "training to start", first)
        wait_for(lambda: name in first() and "running" in first(), 30, "the app to show the run", first)
        tmux(socket, "send-keys", "-t", "main:0", "q")
        wait_for(lambda: "Training is running in this terminal" in first(), 10, "the quit question", first)
        tmux(socket, "send-keys", "-t", "main:0", "d")
        wait_for(lambda: "TRAIN-EXIT=0" in first(), 20, "train to exit after detaching", first)
        assert "mirante stop" in first()  # the detach message says how to stop it
        before = last_step(store)
        time.sleep(1.5)
        assert last_step(store) > before  # still training, with nobody attached

        tmux(socket, "new-window", "-t", "main", watch)
        second = lambda: tmux(socket, "capture-pane", "-p", "-t", "main:1")  # noqa: E731
        wait_for(lambda: name in second() and "running" in second(), 30, "watch to show the run", second)
        tmux(socket, "send-keys", "-t", "main:1", "p")
        wait_for(lambda: "pause asked" in second(), 10, "the pause to be sent", second)
        time.sleep(1.5)  # the trainer pauses at its next logging interval; the store commits every 250 ms
        paused_at = last_step(store)
        time.sleep(2.0)
        assert last_step(store) == paused_at, "steps still advance after p"
        with RunReader(store) as run:
            assert run.status() == "running"

        tmux(socket, "send-keys", "-t", "main:1", "q")
        wait_for(lambda: "you are watching it" in second(), 10, "the quit question in watch", second)
        tmux(socket, "send-keys", "-t", "main:1", "s")
        wait_for(lambda: "WATCH-EXIT=130" in second(), 60, "watch to exit after stopping the run", second)
        with RunReader(store) as run:
            assert run.status() == "interrupted"
        assert "Traceback" not in first() + second()
    finally:
        tmux(socket, "kill-server")
        stop_if_running(store)  # a detached trainer outlives tmux: never leave one behind


def stop_if_running(store: Path) -> None:
    from engine import control
    from engine.store import StoreError

    try:
        with RunReader(store) as run:
            if run.status() != "running":
                return
        control.stop(store, timeout=30)
    except (StoreError, control.ControlError):
        pass


def test_compare_in_tmux(tmp_path):
    """`mirante compare` of three sample runs at 80x24: the legend names them by what differs, the charts and the
    table of runs are on screen, keys answer, q leaves with 0."""
    from engine import compare

    names = ("smallcnn-shapes", "plainnet-sigmoid", "diverging-lr")
    for name in names:  # copies: the test must not leave -wal/-shm files in sample_runs
        (tmp_path / f"{name}.mirante").write_bytes((ROOT / "sample_runs" / f"{name}.mirante").read_bytes())
    rows = [compare.read_row(tmp_path / f"{name}.mirante") for name in names]
    labels = compare.labels(rows, compare.differing_keys(rows))
    done = tmp_path / "exit-code"
    socket = f"mirante-compare-{os.getpid()}"
    stores = " ".join(str(tmp_path / f"{name}.mirante") for name in names)
    env = f"TERM=xterm-256color PYTHONPATH={ROOT}"
    command = f"env {env} {sys.executable} -m tui.cli compare {stores}; echo $? > {done}"
    tmux(socket, "new-session", "-d", "-x", "80", "-y", "24", command)
    screen = lambda: tmux(socket, "capture-pane", "-p")  # noqa: E731
    try:
        wait_for(lambda: "compare of 3 runs" in screen() and "2 finished, 1 failed" in screen(), 60, "the view", screen)
        first = screen()
        for label in labels:
            assert f"━ {label}" in first, first
        assert "train loss" in first and "val acc" in first and "┤" in first, first
        assert "Traceback" not in first
        tmux(socket, "send-keys", "x")
        wait_for(lambda: "x: epoch" in screen() and screen().count("epoch") >= 3, 10, "the epoch axis", screen)
        tmux(socket, "send-keys", "2")
        wait_for(lambda: all(name in screen() for name in names) and "val acc" in screen(), 10, "the table", screen)
        table = screen()
        row = next(line for line in table.splitlines() if "smallcnn-shapes" in line)
        assert f"{100 * rows[0].best_val_acc:.2f}%" in row, table
        tmux(socket, "send-keys", "3")
        wait_for(lambda: "layers x 3 runs" in screen(), 10, "the layers", screen)
        tmux(socket, "send-keys", "q")
        wait_for(done.exists, 20, "the app to leave", screen)
        assert done.read_text().strip() == "0"
    finally:
        tmux(socket, "kill-server")
