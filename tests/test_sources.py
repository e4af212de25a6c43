"""Event sources without an App: following a store as it is written, replaying, and the live queue."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from engine import events as ev
from engine.store import RunWriter, StoreError
from tests.runs import make_events, same, write_run
from tui.sources import FollowSource, LiveSource, ReplaySource


def drain(source, limit: int = 10_000) -> list[ev.Event]:
    out = []
    for _ in range(limit):
        out += source.read(timeout=0.01)
        if source.done:
            return out
    raise AssertionError("source never finished")


def test_follow_reads_a_finished_run_then_stops(tmp_path):
    events = write_run(tmp_path / "r.mirante", steps=3000)
    source = FollowSource(tmp_path / "r.mirante", page=1000, sleep=lambda s: None)
    got = drain(source)
    assert len(got) == len(events) and all(map(same, got, events))
    assert source.writer_alive is False


def test_follow_waits_for_a_store_that_is_not_there_yet_and_sees_new_events(tmp_path):
    path = tmp_path / "later.mirante"
    source = FollowSource(path, sleep=lambda s: time.sleep(0.01))
    assert source.read() == [] and not source.done  # no file yet: wait
    events = make_events(steps=500)
    writer = RunWriter(path, flush_interval=0.01)
    got: list[ev.Event] = []

    def write():
        for i, e in enumerate(events):
            writer.write(e)
            if i % 100 == 0:
                time.sleep(0.01)
        writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    deadline = time.monotonic() + 30
    while not source.done:
        got += source.read(timeout=0.01)
        assert time.monotonic() < deadline
    thread.join()
    assert [e.seq for e in got] == [e.seq for e in events]


def test_follow_refuses_a_file_that_is_not_a_store(tmp_path):
    path = tmp_path / "junk.mirante"
    path.write_text("not a run")
    import os

    os.utime(path, (time.time() - 60, time.time() - 60))
    with pytest.raises(StoreError, match="not a mirante run store"):
        FollowSource(path).read()


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_replay_releases_events_at_the_recorded_pace(tmp_path):
    events = write_run(tmp_path / "r.mirante", steps=1000)  # 0.01 s between events as recorded
    clock = FakeClock()
    source = ReplaySource(tmp_path / "r.mirante", speed=10.0, clock=clock, sleep=lambda s: None)
    first = source.read()
    assert len(first) == 1  # the first event at once, the next 0.01 s later in recorded time
    clock.t = 0.1  # 0.1 s of replay at 10x = 1 s recorded = 100 more events
    assert len(source.read()) == 100
    source.pause()
    clock.t = 10.0
    assert source.read() == []
    source.resume()
    clock.t = 10.05
    assert len(source.read()) == 50
    jumped = source.jump(800)
    assert jumped[-1].step == 800 and jumped[0].seq == 152  # 1 + 100 + 50 released before
    source.speed = 1e9
    clock.t = 11.0
    rest = drain(source)
    assert rest[0].seq == jumped[-1].seq + 1  # the replay goes on from the jump to the end
    assert rest[-1].seq == events[-1].seq and source.done
    source.restart()
    assert source.restarted and source.read()[0].seq == 1


def test_live_source_fills_dropped_batches_from_the_store(tmp_path):
    path = tmp_path / "live.mirante"
    events = make_events(steps=300)
    with RunWriter(path) as writer:
        for event in events:
            writer.write(event)
    q: queue.Queue = queue.Queue()
    q.put(events[:50])
    # batches 50..199 were dropped (the queue was full); the next one arrives
    q.put(events[200:250])
    q.put(events[250:])
    source = LiveSource(q, path)
    got = source.read() + source.read() + source.read()
    assert [e.seq for e in got] == [e.seq for e in events]
    assert source.recovered == 150


def test_live_source_is_done_when_the_trainer_has_exited(tmp_path):
    class Exited:
        def is_alive(self) -> bool:
            return False

    source = LiveSource(queue.Queue(), tmp_path / "none.mirante", process=Exited())
    assert source.read(timeout=0.01) == [] and source.done


def test_replay_can_start_at_a_step(tmp_path):
    write_run(tmp_path / "r.mirante", steps=1000)
    source = ReplaySource(tmp_path / "r.mirante", speed=1.0, clock=FakeClock(), sleep=lambda s: None, start=600)
    first = source.read()
    assert first[0].seq == 1 and first[-1].step == 600  # everything up to the step at once
    assert source.read() == []  # then the recorded pace again


def test_live_source_holds_events_after_a_gap_until_the_store_has_committed_it(tmp_path):
    """The store lags the queue (it commits every 250 ms): nothing after a gap is delivered before the gap."""
    path = tmp_path / "lagging.mirante"
    events = make_events(steps=300)
    writer = RunWriter(path, flush_interval=3600)  # commits only when told to
    try:
        for event in events[:120]:
            writer.write(event)
        writer.flush()
        q: queue.Queue = queue.Queue()
        q.put(events[:50])
        q.put(events[200:250])  # 50..199 were dropped; the store has committed up to 120 only
        q.put(events[250:])
        source = LiveSource(q, path)
        got = source.read(timeout=0.01)
        assert [e.seq for e in got] == [e.seq for e in events[:50]]
        assert source.read(timeout=0.01) == [] and source.read(timeout=0.01) == []  # held, not delivered
        for event in events[120:]:
            writer.write(event)
        writer.flush()
        got += source.read(timeout=0.01)
    finally:
        writer.close()
    assert [e.seq for e in got] == [e.seq for e in events]  # in order, none lost, none twice
    assert source.recovered == 150


def test_live_source_opens_a_resumed_run_from_its_store(tmp_path):
    """The queue starts after events the app never saw (a resumed run): the run comes as a Snapshot first."""
    from tui.snapshot import Snapshot

    path = tmp_path / "resumed.mirante"
    events = checked(make_events(steps=3000))
    write_run(path, events)
    q: queue.Queue = queue.Queue()
    q.put(events[-10:])
    got = LiveSource(q, path).read(timeout=0.01)
    assert isinstance(got[0], Snapshot) and got[0].last_seq == events[-11].seq
    assert [e.seq for e in got[1:]] == [e.seq for e in events[-10:]]


def checked(events: list[ev.Event]) -> list[ev.Event]:
    """As mirante's trainer writes them: its RunStarted says the lecture's checks ran live (so a snapshot will do)."""
    from engine.diagnostics import VERSION

    events[0].config["diagnostics"] = VERSION
    return events


def test_follow_opens_a_run_from_its_store_then_follows(tmp_path):
    from tui.snapshot import Snapshot
    from tui.state import RunState

    path = tmp_path / "r.mirante"
    events = checked(make_events(steps=3000, end=None))
    writer = RunWriter(path, flush_interval=3600)
    try:
        for event in events[:-100]:
            writer.write(event)
        writer.flush()
        source = FollowSource(path, sleep=lambda s: None)
        first = source.read()
        assert len(first) == 1 and isinstance(first[0], Snapshot) and first[0].last_seq == events[-101].seq
        for event in events[-100:]:
            writer.write(event)
        writer.flush()
        after = source.read()
        assert [e.seq for e in after] == [e.seq for e in events[-100:]]  # only what came after the snapshot
    finally:
        writer.close()
    opened = first[0].state
    opened.apply_many(after)
    folded = RunState(clock=opened.clock)
    folded.apply_many(events)
    same_state(opened, folded)


def same_state(a, b) -> None:
    """What the screens read is the same whether the run was opened from the store or folded event by event."""
    import numpy as np

    for attr in ("name", "last_seq", "step", "first_wall", "last_wall", "epoch", "capture_steps"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert a.status() == b.status() and a.layers.count == b.layers.count
    assert set(a.scalars) == set(b.scalars)
    for name in a.scalars:
        x, y = a.series(name), b.series(name)
        for field in ("step", "min", "max", "last", "smooth", "count", "nan"):
            np.testing.assert_allclose(getattr(x, field), getattr(y, field), rtol=1e-9, err_msg=f"{name} {field}")
    np.testing.assert_array_equal(a.layers.matrix(), b.layers.matrix())
    for x, y in zip(a.step_clock(), b.step_clock(), strict=True):  # the wall-time axis of a compare
        np.testing.assert_array_equal(x, y)
    assert len(a.step_clock()[0])
    assert [e.seq for e in a.epochs] == [e.seq for e in b.epochs]
    assert a.check_rows() == b.check_rows()
    assert (a.latest_maps("conv1").maps == b.latest_maps("conv1").maps).all()


def test_replay_start_opens_the_run_as_of_that_step_then_goes_on_at_its_pace(tmp_path):
    from tui.snapshot import Snapshot

    events = checked(make_events(steps=1000))
    write_run(tmp_path / "r.mirante", events)
    clock = FakeClock()
    source = ReplaySource(tmp_path / "r.mirante", speed=1.0, clock=clock, sleep=lambda s: None, start=600)
    first = source.read()
    upto = [e for e in events if e.step <= 600]
    assert len(first) == 1 and isinstance(first[0], Snapshot) and first[0].last_seq == upto[-1].seq
    assert first[0].state.step == 600 and len(first[0].state.scalars["train/loss"]) == 601
    assert source.read() == []  # then the recorded pace again
    clock.t = 0.05
    more = source.read()
    assert more and more[0].seq == upto[-1].seq + 1


def test_a_run_opened_in_a_forked_reader_is_the_same_as_one_read_here(tmp_path):
    from tui.snapshot import Opening, open_at

    events = checked(make_events(steps=3000))
    write_run(tmp_path / "r.mirante", events)
    for step in (None, 1500):
        there, here = Opening(tmp_path / "r.mirante", step).result(), open_at(tmp_path / "r.mirante", step)
        assert there.last_seq == here.last_seq
        same_state(there.state, here.state)
    junk = tmp_path / "junk.mirante"
    junk.write_text("not a run")
    with pytest.raises(StoreError, match="not a mirante run store"):
        Opening(junk).result()  # the child failed: read here, and say why
