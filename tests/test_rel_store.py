"""Run store reliability: truncation for --resume, bad events at write(), a full disk, foreign -wal, gaps."""

from __future__ import annotations

import contextlib
import errno
import re
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine import events as ev
from engine.store import CHUNK_ROWS, RunReader, RunWriter, StoreError
from tests.runs import make_events, same, write_run

# --- truncation: RunWriter(path, append=True, keep_upto_seq=S) -------------------------------

EVENTS = make_events(steps=2500)  # three step chunks, the last one partly filled
STEP_SEQS = [e.seq for e in EVENTS if type(e) is ev.Step]
N = len(EVENTS)


def appended(after: int, count: int = 40) -> list[ev.Event]:
    """Events a resumed run writes after seq `after`: steps (one scalar new), a LayerStats, an Epoch, the end."""
    step0 = max([e.step for e in EVENTS if e.seq <= after], default=0) + 1
    seq = ev.Sequencer(after, clock=iter(1_800_000_000.0 + 0.01 * i for i in range(10**6)).__next__)
    out: list[ev.Event] = []
    for i in range(count):
        out.append(ev.Step(**seq.header(step0 + i), scalars={"train/loss": 0.5 + i, "new/scalar": float(i)}))
        if i == 3:
            out.append(ev.LayerStats(**seq.header(step0 + i), grad_norm=[1.0, 2.0], weight_norm=[3.0], update_ratio=[]))
    out.append(ev.Epoch(**seq.header(step0 + count), epoch=9, train_loss=0.1, train_acc=0.9, val_acc=0.99))
    out.append(ev.RunEnded(**seq.header(step0 + count), status="finished"))
    return out


def observe(path) -> dict:
    """Everything a reader tells about a run, through every method the app, export and ls use."""
    out: dict = {}
    with RunReader(path) as run:
        out["follow"] = [ev.encode(e) for e in run.follow(0, limit=None)]
        out["last_seq"] = run.last_seq()
        out["names"] = run.scalar_names()
        for name, (steps, values) in run.scalars_many().items():
            out[f"scalars {name}"] = (steps.tolist(), values.tobytes())
        for kind in ev.EVENT_TYPES:
            if kind != "Step":
                out[f"events {kind}"] = [ev.encode(e) for e in run.events_of(kind)]
                out[f"last {kind}"] = [ev.encode(e) for e in run.events_of(kind, limit=1)]
                out[f"count {kind}"] = run.count_of(kind)
        out["index"] = run.activation_index()
        out["filters index"] = run.activation_index("Filters")
        act = run.activation("conv1")
        out["activation"] = act and ev.encode(act)
        out["extent"] = run.extent()
        last = out["last_seq"]
        for bound in (1, last // 3, last // 2, last - 1, last):
            out[f"extent {bound}"] = run.extent(bound)
            out[f"scalars <= {bound}"] = {
                k: (s.tolist(), v.tobytes()) for k, (s, v) in run.scalars_many(upto_seq=bound).items()
            }
        for step in (0, 5, 1500, 2600, 10**6):
            out[f"seq_at_step {step}"] = run.seq_at_step(step)
        summary = run.summary()
        out["summary"] = (summary.status, summary.steps, summary.best_val_acc, summary.started, summary.duration)
        out["ended"] = run.ended() and ev.encode(run.ended())
    return out


def cut_points() -> dict[str, int]:
    first_chunk_end = STEP_SEQS[CHUNK_ROWS - 1]
    return {
        "nothing": 0,
        "before any step": 1,
        "inside a chunk": STEP_SEQS[1500] + 1,  # a LayerStats or a Step right after one
        "inside a chunk, on a step": STEP_SEQS[1700],
        "at a chunk edge": first_chunk_end,
        "just past a chunk edge": first_chunk_end + 1,
        "inside the last chunk": STEP_SEQS[2400],
        "at the end": N,
        "beyond the end": N + 10,
    }


@pytest.mark.parametrize("where", list(cut_points()))
def test_truncate_then_append_reads_as_a_store_written_so(tmp_path, where):
    keep = cut_points()[where]
    write_run(tmp_path / "run.mirante", EVENTS)
    with RunWriter(tmp_path / "run.mirante", append=True, keep_upto_seq=keep) as writer:
        assert writer.discarded == max(0, N - keep)
        assert writer.last_seq == min(keep, N)
    prefix = [e for e in EVENTS if e.seq <= keep]
    with RunReader(tmp_path / "run.mirante") as run:  # the kept prefix, exactly, before anything is appended
        assert all(same(a, b) for a, b in zip(run.follow(0, limit=None), prefix, strict=True))
        assert run.last_seq() == len(prefix)
    more = appended(len(prefix))
    with RunWriter(tmp_path / "run.mirante", append=True) as writer:
        for event in more:
            writer.write(event)
    expected = prefix + more
    assert [e.seq for e in expected] == list(range(1, len(expected) + 1))
    write_run(tmp_path / "fresh.mirante", expected)
    got, want = observe(tmp_path / "run.mirante"), observe(tmp_path / "fresh.mirante")
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key


def test_truncate_in_an_open_chunk_then_write_in_the_same_session(tmp_path):
    path = tmp_path / "run.mirante"
    write_run(path, EVENTS[:-1])  # a crashed run: no RunEnded
    keep = STEP_SEQS[2100]
    with RunWriter(path, append=True, keep_upto_seq=keep, flush_interval=0.01) as writer:
        more = appended(keep, count=CHUNK_ROWS + 5)  # fills the rewritten chunk and starts another
        for event in more[:10]:
            writer.write(event)
        writer.flush()
        for event in more[10:]:
            writer.write(event)
    with RunReader(path) as run:
        back = run.follow(0, limit=None)
        assert [e.seq for e in back] == list(range(1, keep + len(more) + 1))
        assert all(same(a, b) for a, b in zip(back, EVENTS[:keep] + more, strict=True))
        steps, _ = run.scalars("new/scalar")
        assert len(steps) == CHUNK_ROWS + 5


def test_keep_upto_seq_needs_append_and_a_seq(tmp_path):
    path = tmp_path / "run.mirante"
    with pytest.raises(ValueError, match="keep_upto_seq"):
        RunWriter(path, keep_upto_seq=3)
    write_run(path, EVENTS[:10])
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match="keep_upto_seq"):
            RunWriter(path, append=True, keep_upto_seq=bad)
    with RunWriter(path, append=True, keep_upto_seq=None) as writer:
        assert writer.discarded == 0 and writer.last_seq == 10


def test_truncate_writes_nothing_when_nothing_is_removed(tmp_path):
    path = tmp_path / "run.mirante"
    write_run(path, EVENTS[:50])
    before = observe(path)
    with RunWriter(path, append=True, keep_upto_seq=50) as writer:
        assert writer.discarded == 0
    assert observe(path) == before


def test_a_damaged_straddling_chunk_is_a_one_line_error_and_releases_the_file(tmp_path):
    path = tmp_path / "run.mirante"
    write_run(path, EVENTS)
    db = sqlite3.connect(path)
    db.execute("UPDATE step_chunks SET crc = crc + 1 WHERE first_seq = ?", (STEP_SEQS[CHUNK_ROWS],))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="checksum mismatch") as info:
        RunWriter(path, append=True, keep_upto_seq=STEP_SEQS[1500])
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with RunWriter(path, append=True, keep_upto_seq=STEP_SEQS[CHUNK_ROWS] - 1) as writer:  # the file was let go
        assert writer.discarded == N - STEP_SEQS[CHUNK_ROWS] + 1
    with RunReader(path) as run:
        assert run.last_seq() == STEP_SEQS[CHUNK_ROWS] - 1
        assert np.array_equal(run.scalars("lr")[0], np.arange(CHUNK_ROWS))


# --- write() checks each event in the caller's thread -----------------------------------------


class NotANumber:
    def __float__(self) -> float:
        raise RuntimeError("no")


def bad_events(seq: int) -> list[ev.Event]:
    """Events that cannot be stored, each with the seq the writer expects next."""
    h = {"seq": seq, "wall_time": 1.0, "step": 3}
    return [
        ev.Step(**h, scalars={"train/loss": [1.0, 2.0]}),  # a vector loss
        ev.Step(**h, scalars={"train/loss": "0.5"}),
        ev.Step(**h, scalars={"train/loss": None}),
        ev.Step(**h, scalars={"train/loss": NotANumber()}),
        ev.Step(**h, scalars={"train/loss": 10**400}),  # no float holds it
        ev.Step(**h, scalars={7: 1.0}),
        ev.Step(**h, scalars=[("train/loss", 1.0)]),
        ev.Step(seq=seq, wall_time=1.0, step=2.5, scalars={"lr": 0.1}),
        ev.Step(seq=seq, wall_time="now", step=3, scalars={"lr": 0.1}),
        ev.System(**h, metrics={"cpu": object()}),
        ev.System(seq=seq, wall_time=1.0, step=None, metrics={}),
        ev.Diagnostic(**h, level="warn", code=5, message="m", evidence={}),
        ev.Epoch(**h, epoch=0, train_loss=1.0, train_acc=1j),
    ]


def test_a_bad_event_raises_in_write_and_the_run_goes_on(tmp_path):
    path = tmp_path / "run.mirante"
    good = make_events(steps=30)
    with RunWriter(path, flush_interval=0.01) as writer:
        writer.write(good[0])
        for bad in bad_events(2) * 3:  # three rounds of misuse: the writer thread survives them all
            with pytest.raises((ValueError, TypeError)) as info:
                writer.write(bad)
            assert "\n" not in str(info.value), bad
            assert writer.last_seq == 1
        writer.flush()
        assert writer.committed_seq == 1
        for event in good[1:]:
            writer.write(event)
        for bad in bad_events(len(good) + 1):
            with pytest.raises((ValueError, TypeError)):
                writer.write(bad)
    with RunReader(path) as run:
        back = run.follow(0, limit=None)
    assert len(back) == len(good) and all(same(a, b) for a, b in zip(back, good, strict=True))


def test_write_takes_numpy_and_int_scalars(tmp_path):
    path = tmp_path / "run.mirante"
    with RunWriter(path) as writer:
        writer.write(ev.Step(seq=1, wall_time=1.0, step=np.int64(0), scalars={"a": np.float32(0.5), "b": 3, "c": True}))
    with RunReader(path) as run:
        assert [run.scalars(n)[1].tolist() for n in "abc"] == [[0.5], [3.0], [1.0]]


# --- a full disk ------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(where: Path, size_kb: int):
    """A tmpfs of `size_kb` mounted at `where`, a real disk that fills up (root only; skips elsewhere)."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Fill the disk of `directory` to the last byte with one file; remove it to free the space."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(path.name + "*"))


def run_events(count: int, after: int = 0) -> list[ev.Event]:
    seq = ev.Sequencer(after, clock=iter(1_700_000_000.0 + i for i in range(10**6)).__next__)
    out: list[ev.Event] = []
    for i in range(count):
        if i % 5 == 4:
            out.append(ev.LayerStats(**seq.header(i), grad_norm=list(range(200)), weight_norm=[1.0], update_ratio=[]))
        else:
            out.append(ev.Step(**seq.header(i), scalars={"train/loss": 1.0 / (i + 1), "lr": 0.1}))
    return out


def test_a_full_disk_keeps_the_events_until_space_is_freed(tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        path = disk / "run.mirante"
        first = make_events(steps=1)[:1]
        with RunWriter(path, flush_interval=0.01) as writer:
            for event in first:
                writer.write(event)
            writer.flush()
            filler = fill(disk)
            events = run_events(400, after=1)
            with pytest.raises(StoreError) as info:  # the first write after the failure says so, or flush does
                for event in events:
                    writer.write(event)
                writer.flush()
            message = str(info.value)
            assert "disk full" in message and str(path) in message and "\n" not in message
            assert "rollback" not in message
            assert writer.last_seq > 1  # the event that raised was kept
            kept = writer.last_seq - 1
            with pytest.raises(StoreError, match="disk full"):
                writer.flush(timeout=10)
            filler.unlink()  # as the trainer removing a partial checkpoint
            for event in events[kept:]:
                writer.write(event)
            writer.flush(timeout=10)
        with RunReader(path) as run:
            back = run.follow(0, limit=None)
        assert len(back) == 401 and all(same(a, b) for a, b in zip(back, first + events, strict=True))


def test_a_disk_that_stays_full_says_at_close_how_many_events_were_lost(tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        path = disk / "run.mirante"
        writer = RunWriter(path, flush_interval=0.01)
        for event in make_events(steps=1)[:1]:
            writer.write(event)
        writer.flush()
        filler = fill(disk)
        events = run_events(400, after=1)
        with contextlib.suppress(StoreError):
            for event in events:
                writer.write(event)
        for event in events[writer.last_seq - 1 :]:
            writer.write(event)
        with pytest.raises(StoreError) as info:
            writer.close()
        message = str(info.value)
        assert "disk full" in message and str(path) in message and "\n" not in message
        lost = int(re.search(r"(\d+) events? could not be written", message).group(1))
        assert 0 < lost <= 400
        filler.unlink()
        with RunReader(path) as run:
            assert run.last_seq() == 401 - lost
            assert [e.seq for e in run.follow(0, limit=None)] == list(range(1, 402 - lost))


def test_a_store_that_cannot_be_created_leaves_nothing_behind(tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        path = disk / "run.mirante"
        filler = fill(disk)
        with pytest.raises(StoreError) as info:
            RunWriter(path)
        assert "disk full" in str(info.value) and "\n" not in str(info.value)
        assert leftovers(path) == []
        filler.unlink()
        with RunWriter(path) as writer:  # the name is free
            for event in make_events(steps=1)[:1]:
                writer.write(event)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for target in (disk / "other.mirante", disk / "sub" / "other.mirante"):
            with pytest.raises(StoreError) as info:
                RunWriter(target)
            assert "\n" not in str(info.value) and str(target) in str(info.value)
            assert leftovers(target) == []


class FullDisk:
    """A connection whose COMMIT fails as SQLite's does on a full disk, while `full` is set."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.full = False

    def execute(self, sql: str, *args):
        if self.full and sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def test_a_full_disk_faked(tmp_path):
    """The same as on a real full disk, where a tmpfs cannot be mounted."""
    path = tmp_path / "run.mirante"
    writer = RunWriter(path, flush_interval=0.01)
    fake = writer._db = FullDisk(writer._db)
    events = make_events(steps=2000)
    for event in events[:100]:
        writer.write(event)
    writer.flush()
    fake.full = True
    for event in events[100:1500]:  # more than a chunk held while the disk is full
        writer.write(event)
    with pytest.raises(StoreError, match="disk full") as info:
        writer.flush(timeout=10)
    assert str(path) in str(info.value) and "rollback" not in str(info.value)
    fake.full = False
    writer.flush(timeout=10)
    for event in events[1500:1900]:
        writer.write(event)
    fake.full = True
    with pytest.raises(StoreError, match=r"disk full.* 400 events could not be written"):
        writer.close()
    with RunReader(path) as run:
        back = run.follow(0, limit=None)
    assert len(back) == 1500 and all(same(a, b) for a, b in zip(back, events[:1500], strict=True))


# --- a -wal beside a store: foreign, or the store's own in a read-only directory -------------


def crashed_copy(
    src_dir: Path, events: list[ev.Event], dst: Path, *, shm: bool = False, strip_id: bool = False
) -> None:
    """At `dst`, a store as a killed writer leaves it: its -wal (and -shm if `shm`) beside it, holding `events`."""
    path = src_dir / dst.name
    with RunWriter(path, flush_interval=0.01) as writer:
        for event in events[:1]:
            writer.write(event)
    if strip_id:  # as stores written before store ids
        db = sqlite3.connect(path)
        db.execute("DELETE FROM meta WHERE key = 'store_id'")
        db.commit()
        db.close()
    writer = RunWriter(path, append=True, flush_interval=0.01)
    for event in events[1:]:
        writer.write(event)
    writer.flush()
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal") + (("-shm",) if shm else ()):
        dst.with_name(dst.name + suffix).write_bytes(path.with_name(path.name + suffix).read_bytes())
    writer.close()


def test_a_foreign_wal_is_refused(tmp_path):
    ours = tmp_path / "runs" / "ours.mirante"
    write_run(ours, make_events(steps=50))
    crashed_copy(tmp_path / "other", make_events(steps=200, end=None), tmp_path / "theirs" / "ours.mirante")
    (tmp_path / "theirs" / "ours.mirante-wal").rename(tmp_path / "runs" / "ours.mirante-wal")
    with pytest.raises(StoreError) as info:
        RunReader(ours)
    assert str(info.value) == f"{ours}-wal belongs to another store: move it away to read {ours.name}"
    with pytest.raises(StoreError, match="belongs to another store"):
        RunWriter(ours, append=True)


def test_a_crashed_store_with_its_own_wal_reads_whole(tmp_path):
    events = make_events(steps=1500, end=None)
    for strip_id in (False, True):
        dst = tmp_path / f"copy{strip_id}" / "run.mirante"
        crashed_copy(tmp_path / f"src{strip_id}", events, dst, strip_id=strip_id)
        with RunReader(dst) as run:
            back = run.follow(0, limit=None)
            assert run.summary().status == "crashed"
        assert len(back) == len(events) and all(same(a, b) for a, b in zip(back, events, strict=True))


@pytest.mark.parametrize("shm", [False, True])
def test_a_crashed_store_in_a_read_only_directory_reads_whole(tmp_path, shm):
    events = make_events(steps=1500, end=None)
    with small_disk(tmp_path / "disk", 4096) as disk:
        path = disk / "run.mirante"
        crashed_copy(tmp_path / "src", events, path, shm=shm)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with RunReader(path) as run:
            back = run.follow(0, limit=None)
            assert run.summary().status == "crashed"
            assert run.last_seq() == len(events) and run.missing_events() == 0
        assert len(back) == len(events) and all(same(a, b) for a, b in zip(back, events, strict=True))
        names = sorted(p.name for p in disk.iterdir())
        assert names == sorted(["run.mirante", "run.mirante-wal"] + ["run.mirante-shm"] * shm)


# --- a gap in the sequence ----------------------------------------------------------------------


def test_a_deleted_row_is_reported_and_the_rest_still_reads(tmp_path):
    path = tmp_path / "run.mirante"
    events = write_run(path, make_events(steps=2500))
    with RunReader(path) as run:
        assert run.missing_events() == 0 and run.summary().status == "finished"
    db = sqlite3.connect(path)
    gone = db.execute("SELECT seq FROM events WHERE kind = 'LayerStats' LIMIT 1 OFFSET 7").fetchone()[0]
    db.execute("DELETE FROM events WHERE seq = ?", (gone,))
    db.commit()
    with RunReader(path) as run:
        assert run.missing_events() == 1
        summary = run.summary()
        assert summary.status == "damaged" and summary.missing == 1 and summary.steps == 2500
        assert [e.seq for e in run.follow(0, limit=None)] == [e.seq for e in events if e.seq != gone]
    db.execute("DELETE FROM step_chunks WHERE first_seq = (SELECT min(first_seq) FROM step_chunks)")
    db.commit()
    db.close()
    with RunReader(path) as run:
        assert run.missing_events() == 1 + CHUNK_ROWS
        assert run.summary().status == "damaged"


def test_a_failure_at_interpreter_exit_is_one_line(tmp_path, capsys):
    writer = RunWriter(tmp_path / "run.mirante", flush_interval=0.01)
    fake = writer._db = FullDisk(writer._db)
    fake.full = True
    for event in make_events(steps=3)[:3]:
        writer.write(event)
    writer._close_at_exit()  # what atexit calls for a script that did not close its writer
    err = capsys.readouterr().err
    assert err.startswith("mirante: error: ") and "disk full" in err and err.count("\n") == 1


def test_a_runs_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    with pytest.raises(StoreError) as info:
        RunWriter(tmp_path / "runs" / "x.mirante")
    assert str(info.value) == f"{tmp_path}/runs/x.mirante: cannot create run store: {tmp_path}/runs is not a directory"
