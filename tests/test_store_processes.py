"""The run store across processes: following a live writer, and a writer killed mid-run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from engine import events as ev
from engine.store import RunReader, StoreError
from tests.runs import same
from tests.writer_child import event_for

ROOT = Path(__file__).resolve().parents[1]


def start_child(mode: str, path: Path, n: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.writer_child", mode, str(path), str(n)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def open_when_ready(path: Path, deadline: float) -> RunReader:
    while True:
        try:
            return RunReader(path)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_reader_follows_a_writer_in_another_process(tmp_path):
    path, n = tmp_path / "live.mirante", 50_000
    child = start_child("write", path, n)
    deadline = time.monotonic() + 120
    try:
        run = open_when_ready(path, deadline)
        seen: list[ev.Event] = []
        polls_while_running = 0
        after = 0
        while not (seen and isinstance(seen[-1], ev.RunEnded)):
            assert time.monotonic() < deadline, f"only {len(seen)} events after 120 s"
            page = run.follow(after, limit=5000)
            if page:
                seen += page
                after = page[-1].seq
                polls_while_running += child.poll() is None
            else:
                time.sleep(0.005)
        status = run.status()
        run.close()
    finally:
        child.wait(timeout=60)
    assert child.returncode == 0, child.stderr.read()
    assert polls_while_running > 1, "the reader never saw the run while it was being written"
    assert [e.seq for e in seen] == list(range(1, n + 2))  # no gap, no duplicate, in order
    assert all(same(e, event_for(e.seq)) for e in seen[:-1])
    assert status == "finished"


def test_sigkill_loses_nothing_committed(tmp_path):
    path = tmp_path / "killed.mirante"
    child = start_child("forever", path, 0)
    committed = 0
    deadline = time.monotonic() + 60
    try:
        while committed < 20_000:
            line = child.stdout.readline()
            assert line, f"writer exited early: {child.stderr.read()}"
            committed = int(line)
            assert time.monotonic() < deadline
        with RunReader(path) as run:
            assert run.status() == "running"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    with RunReader(path) as run:
        assert run.status() == "crashed"
        events = run.follow(0, limit=None)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= committed, f"{committed} were committed before the kill, {len(seqs)} survived"
    assert all(same(e, event_for(e.seq)) for e in events)
