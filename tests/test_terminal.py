"""A real terminal: `mirante replay` inside tmux at 80x24, read back with capture-pane, quit with q."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
        tmux(socket, "send-keys", "q")
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
    finally:
        tmux(socket, "kill-server")
