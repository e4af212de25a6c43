"""The run store in one process: what is written is read back, whole and downsampled."""

from __future__ import annotations

import math
import sqlite3
import time

import numpy as np
import pytest

from engine import events as ev
from engine.store import CHUNK_ROWS, RunReader, RunWriter, StoreError, downsample, find_runs
from tests.runs import bits, make_events, same, write_run


@pytest.fixture
def run_path(tmp_path):
    return tmp_path / "run.mirante"


def test_everything_written_is_read_back_exactly(run_path):
    events = write_run(run_path, steps=3000)
    with RunReader(run_path) as run:
        back = run.follow(0, limit=None)
    assert len(back) == len(events)
    assert all(same(a, b) for a, b in zip(events, back, strict=True))


def test_follow_pages_through_the_run(run_path):
    events = write_run(run_path, steps=2500)
    seen, after = [], 0
    with RunReader(run_path) as run:
        while page := run.follow(after, limit=333):
            assert len(page) <= 333
            seen += page
            after = page[-1].seq
        assert [e.seq for e in run.iter_events(batch=1000)] == [e.seq for e in events]
    assert [e.seq for e in seen] == list(range(1, len(events) + 1))


def test_scalar_series_keep_nan_inf_and_sparse_names(run_path):
    write_run(run_path, steps=3000)
    with RunReader(run_path) as run:
        assert run.scalar_names() == ["train/loss", "lr", "throughput/img_s"]
        steps, loss = run.scalars("train/loss")
        assert steps.tolist() == list(range(3000))
        assert math.isnan(loss[100]) and loss[101] == math.inf
        assert bits(loss[999]) == bits(2.3026 * math.exp(-999 / 1000))
        steps, tput = run.scalars("throughput/img_s")
        assert steps.tolist() == list(range(0, 3000, 7))
        assert tput.tolist() == [1000.0 + s for s in range(0, 3000, 7)]
        assert run.scalars("no/such/name")[0].size == 0


def test_series_downsamples_with_min_max_last(run_path):
    write_run(run_path, steps=3000)
    with RunReader(run_path) as run:
        s = run.series("train/loss", points=30)
    assert len(s) == 30 and s.count.sum() == 3000
    assert s.step[-1] == 2999 and s.last[-1] == pytest.approx(2.3026 * math.exp(-2999 / 1000))
    bucket = int(np.searchsorted(s.step, 100))  # the bucket holding the NaN and the +inf
    assert s.nan[bucket] == 1 and s.max[bucket] == math.inf
    assert s.nan.sum() == 1


def test_downsample_of_a_million_points_keeps_a_single_spike():
    n = 1_000_000
    steps = np.arange(n)
    values = np.sin(steps / 5000.0)
    values[654_321] = 1e6
    values[-1] = -7.25
    s = downsample("loss", steps, values, 500)
    assert len(s) == 500
    assert s.max.max() == 1e6 and s.max.argmax() == 654_321 * 500 // n
    assert s.last[-1] == -7.25 and s.step[-1] == n - 1
    assert s.count.sum() == n
    assert np.all(s.min <= s.last) and np.all(s.last <= s.max)


def test_downsample_leaves_short_series_alone():
    s = downsample("x", np.arange(10), np.arange(10.0), 500)
    assert s.last.tolist() == list(range(10)) and len(s) == 10


def test_chunks_stay_full_when_events_trickle(run_path):
    """Commits every few ms must not leave thousands of tiny chunks behind."""
    seq = ev.Sequencer()
    with RunWriter(run_path, flush_interval=0.001) as writer:
        for step in range(CHUNK_ROWS + 300):
            writer.write(ev.Step(**seq.header(step), scalars={"x": float(step)}))
            if step % 100 == 0:
                time.sleep(0.005)  # let the writer commit a partial chunk
    db = sqlite3.connect(run_path)
    sizes = [n for (n,) in db.execute("SELECT n FROM step_chunks ORDER BY first_seq")]
    db.close()
    assert sizes == [CHUNK_ROWS, 300]
    with RunReader(run_path) as run:
        assert run.scalars("x")[1].tolist() == [float(s) for s in range(CHUNK_ROWS + 300)]


def test_status_follows_the_run_lifecycle(run_path):
    events = make_events(steps=50, end=None)
    writer = RunWriter(run_path)
    for event in events:
        writer.write(event)
    writer.flush()
    with RunReader(run_path) as run:
        assert run.status() == "running"
        assert run.last_seq() == events[-1].seq
    seq = ev.Sequencer(last_seq=events[-1].seq)
    writer.write(ev.RunEnded(**seq.header(50), status="interrupted", reason="ctrl-c"))
    writer.close()
    with RunReader(run_path) as run:
        assert run.status() == "interrupted"
        assert run.ended().reason == "ctrl-c"


def test_a_closed_run_without_run_ended_is_crashed(run_path):
    write_run(run_path, steps=20, end=None)
    with RunReader(run_path) as run:
        assert run.status() == "crashed"


def test_summary_for_ls(run_path):
    write_run(run_path, steps=3000)
    with RunReader(run_path) as run:
        s = run.summary()
    assert (s.name, s.model, s.dataset, s.status, s.steps) == ("synthetic", "smallcnn", "shapes", "finished", 3000)
    assert s.best_val_acc == pytest.approx(0.65)
    assert s.started == 1_700_000_000.0 and s.duration > 0


def test_append_continues_seq_and_the_open_chunk(run_path):
    first = write_run(run_path, steps=100, end=None)
    with RunWriter(run_path, append=True) as writer:
        assert writer.last_seq == first[-1].seq
        seq = ev.Sequencer(last_seq=writer.last_seq)
        for step in range(100, 150):
            writer.write(ev.Step(**seq.header(step), scalars={"train/loss": 1.0}))
        writer.write(ev.RunEnded(**seq.header(150), status="finished"))
    with RunReader(run_path) as run:
        seqs = [e.seq for e in run.follow(0, limit=None)]
        assert seqs == list(range(1, seq.last_seq + 1))
        assert run.scalars("train/loss")[0].tolist() == list(range(150))
        assert run.status() == "finished"


def test_writer_refuses_what_would_lose_data(run_path):
    write_run(run_path, steps=10)
    with pytest.raises(StoreError, match="already exists"):
        RunWriter(run_path)
    with pytest.raises(StoreError, match="no such run store"):
        RunWriter(run_path.with_name("other.mirante"), append=True)


def test_one_writer_at_a_time(run_path):
    with RunWriter(run_path), pytest.raises(StoreError, match="another process is writing"):
        RunWriter(run_path, append=True)


def test_seq_must_follow_on(run_path):
    with RunWriter(run_path) as writer:
        writer.write(ev.Step(seq=1, wall_time=0.0, step=0))
        with pytest.raises(ValueError, match="does not follow"):
            writer.write(ev.Step(seq=3, wall_time=0.0, step=0))


def test_unknown_kinds_in_the_store_are_skipped(run_path):
    class Future(ev.Event):
        kind = "Future"

    events = make_events(steps=10)
    future = Future(seq=len(events) + 1, wall_time=0.0, step=10)
    write_run(run_path, events=[*events, future])
    with RunReader(run_path) as run, pytest.warns(UserWarning, match="unknown kind 'Future'"):
        back = run.follow(0, limit=None)
    assert [e.seq for e in back] == [e.seq for e in events]


def test_readers_leave_a_finished_run_byte_for_byte_alone(run_path):
    write_run(run_path, steps=2000)
    before = run_path.read_bytes()
    with RunReader(run_path) as run:
        run.summary(), run.follow(0, limit=None), run.series("train/loss"), run.epochs()
    assert run_path.read_bytes() == before
    assert sorted(p.name for p in run_path.parent.iterdir()) == ["run.mirante"]


def test_find_runs(tmp_path):
    write_run(tmp_path / "a.mirante", steps=5)
    (tmp_path / "notes.txt").write_text("hi")
    assert [p.name for p in find_runs(tmp_path)] == ["a.mirante"]
    with pytest.raises(StoreError, match="no such directory"):
        find_runs(tmp_path / "nope")


def test_a_forgotten_close_still_stores_the_last_events(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "forgot.mirante"
    code = (
        "from engine import events as ev; from engine.store import RunWriter\n"
        f"w = RunWriter({str(path)!r}, flush_interval=60)\n"
        "w.write(ev.Step(seq=1, wall_time=0.0, step=1, scalars={'x': 1.0}))\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
    with RunReader(path) as run:
        assert run.scalars("x")[1].tolist() == [1.0]


def test_activation_maps_are_listed_and_fetched_by_layer_and_step(run_path):
    seq = ev.Sequencer()
    with RunWriter(run_path) as writer:
        for step in (0, 100, 200):
            for layer in ("conv1", "layer3.1.conv2"):
                data = bytes([step // 100]) * 2 * 4 * 2 * 2  # float16 (4, 2, 2), bytes tell the step apart
                writer.write(ev.Activation(**seq.header(step), layer=layer, sample=3, shape=(4, 2, 2), data=data))
        writer.write(ev.Filters(**seq.header(200), layer="conv1", shape=(4, 3, 1, 1), data=b"\x00" * 24))
    with RunReader(run_path) as run:
        index = run.activation_index()
        assert [(step, layer) for _, step, layer in index] == [
            (s, layer) for s in (0, 100, 200) for layer in ("conv1", "layer3.1.conv2")
        ]
        assert run.activation("conv1").step == 200
        found = run.activation("layer3.1.conv2", step=150)
        assert (found.step, found.layer, found.shape, found.data[:1]) == (100, "layer3.1.conv2", (4, 2, 2), b"\x01")
        assert run.activation("conv1", step=-1) is None
        assert run.activation("nope") is None
        assert [layer for _, _, layer in run.activation_index("Filters")] == ["conv1"]
        assert run.activation("conv1", kind="Filters").shape == (4, 3, 1, 1)
