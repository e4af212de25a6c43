"""Reading a run store: `RunReader` (snapshots, follow, downsampled series) and `find_runs`."""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np

from engine import events as ev
from engine.store.schema import (
    APPLICATION_ID,
    EVENT_COLUMNS,
    HEARTBEAT_STALE,
    SUFFIX,
    StoreError,
    chunk_crc,
    event_crc,
    unpack_f64,
    unpack_i64,
)

try:
    import fcntl
except ImportError:  # Windows: liveness falls back to the writer's heartbeat
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Series:
    """A scalar series cut into buckets of consecutive steps, keeping each bucket's extremes.

    One bucket per screen column: min and max keep a single spike visible, `last` is the
    value a tooltip or a "now" label shows. min/max ignore NaN; `nan` counts them so a
    chart can mark the bucket.
    """

    name: str
    step: np.ndarray  # last step in the bucket
    min: np.ndarray
    max: np.ndarray
    last: np.ndarray
    count: np.ndarray  # points in the bucket
    nan: np.ndarray  # NaN points in the bucket

    def __len__(self) -> int:
        return len(self.step)


def downsample(
    name: str,
    steps: np.ndarray,
    values: np.ndarray,
    points: int,
    *,
    low: np.ndarray | None = None,
    high: np.ndarray | None = None,
    nan: np.ndarray | None = None,
) -> Series:
    """Cut (steps, values) into at most `points` buckets of equal step width.

    `low`, `high` and `nan`, when given, are each point's own extremes and NaN count (the
    points are buckets already, as a bounded series keeps them); by default a point is its own
    min and max.
    """
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    low = values if low is None else np.asarray(low, dtype=np.float64)
    high = values if high is None else np.asarray(high, dtype=np.float64)
    nans = np.isnan(values).astype(np.int64) if nan is None else np.asarray(nan, dtype=np.int64)
    if len(steps) and np.any(np.diff(steps) < 0):
        order = np.argsort(steps, kind="stable")
        steps, values, low, high, nans = steps[order], values[order], low[order], high[order], nans[order]
    if len(steps) <= points:
        return Series(name, steps, low, high, values, np.ones(len(steps), np.int64), nans)
    lo, hi = int(steps[0]), int(steps[-1])
    bucket = (steps - lo) * points // (hi - lo + 1)
    starts = np.flatnonzero(np.diff(bucket, prepend=-1))
    ends = np.append(starts[1:], len(steps))
    with np.errstate(invalid="ignore"):
        return Series(
            name,
            step=steps[ends - 1],
            min=np.fmin.reduceat(low, starts),
            max=np.fmax.reduceat(high, starts),
            last=values[ends - 1],
            count=ends - starts,
            nan=np.add.reduceat(nans, starts),
        )


@dataclass(frozen=True)
class RunSummary:
    """One line of `mirante ls`."""

    path: Path
    name: str
    model: str
    dataset: str
    status: str
    steps: int
    best_val_acc: float | None
    started: float | None  # wall time of the first event
    duration: float | None  # seconds from the first event to the last
    missing: int = 0  # events missing from the sequence (deleted rows): status is then "damaged"


T = TypeVar("T")


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Turn any failure to read the file into a one-line StoreError naming it."""

    @functools.wraps(method)
    def wrapper(self: RunReader, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except StoreError as exc:
            msg = str(exc)
            raise StoreError(msg if msg.startswith(str(self.path)) else f"{self.path}: {msg}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: corrupted or unreadable run store ({exc})") from None
        except (zlib.error, ev.EventDecodeError, ValueError, TypeError, KeyError, IndexError, struct.error) as exc:
            raise StoreError(f"{self.path}: corrupted run store ({exc})") from None

    return wrapper


class RunReader:
    """Reads a run store, finished or being written; never writes to it.

    Each call reads one consistent snapshot in a short transaction. One reader is meant for
    one thread at a time.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a run store")
        if self.path.stat().st_size == 0:
            raise StoreError(f"{self.path}: empty file, not a run store")
        self._copy: tempfile.TemporaryDirectory | None = None  # where a store is read when its own place cannot be
        self._names: dict[int, str] = {}
        try:
            self._open(self.path)
        except StoreError:
            if not (_wal(self.path).exists() and not os.access(self.path.parent, os.W_OK)):
                raise
            # A crashed store (its -wal left) in a read-only directory: SQLite needs a -shm beside
            # the -wal and cannot make one there. Read a copy of the two, the WAL's events included.
            self._open(self._copied())

    def _open(self, source: Path) -> None:
        self._db = self._connect(source)
        try:
            self._check()
            if _wal(source).exists():
                self._check_wal(source)
        except BaseException:
            self.close()
            raise

    def _connect(self, source: Path) -> sqlite3.Connection:
        try:
            uri = f"file:{quote(str(source.resolve()))}?mode=ro"
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open ({exc})") from None

    def _copied(self) -> Path:
        self._copy = tempfile.TemporaryDirectory(prefix="mirante-")
        copy = Path(self._copy.name) / self.path.name
        try:
            shutil.copyfile(self.path, copy)
            shutil.copyfile(_wal(self.path), _wal(copy))
        except OSError as exc:
            self._copy.cleanup()
            raise StoreError(f"{self.path}: cannot read a crashed run store in a read-only directory ({exc})") from None
        return copy

    @_guarded
    def _check_wal(self, source: Path) -> None:
        """Refuse a -wal that is another store's: the store id with the WAL applied must be the main file's.

        A -wal is applied to whatever file bears its name; one left from another run makes this
        store read as that run. Stores made before store ids had none: nothing to compare.
        """
        row = self._db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        ours = row[0] if row else None
        for _ in range(3):  # the main file is read without locks: a checkpoint may be writing the page
            main = _main_file_id(source)
            if main is _UNKNOWN or main == ours:
                return
            time.sleep(0.01)
        raise StoreError(f"{_wal(self.path)} belongs to another store: move it away to read {self.path.name}")

    @_guarded
    def _check(self) -> None:
        try:
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise StoreError("not a mirante run store (not an SQLite database)") from None
            raise
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise StoreError("not a mirante run store")
        if version > ev.SCHEMA_VERSION:
            raise StoreError(
                f"written by a newer mirante (store schema {version}; this version reads up to "
                f"{ev.SCHEMA_VERSION}): upgrade mirante"
            )
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = {"meta", "names", "events", "step_chunks", "series_chunks"} - tables
        if missing:
            raise StoreError(f"damaged run store: tables {sorted(missing)} are missing")

    def close(self) -> None:
        self._db.close()
        if self._copy is not None:
            self._copy.cleanup()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> _Snapshot:
        """`with reader.snapshot():` every call inside reads the same committed state (one read transaction)."""
        return _Snapshot(self._db)

    # -- metadata

    @_guarded
    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    @_guarded
    def started(self) -> ev.RunStarted | None:
        """The run's (last) RunStarted event."""
        return self._last_of("RunStarted")  # type: ignore[return-value]

    @_guarded
    def ended(self) -> ev.RunEnded | None:
        """The RunEnded that closes the last RunStarted, if any."""
        with self.snapshot():
            start = self._db.execute("SELECT max(seq) FROM events WHERE kind='RunStarted'").fetchone()[0] or 0
            row = self._db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE kind='RunEnded' AND seq > ? ORDER BY seq DESC LIMIT 1",
                (start,),
            ).fetchone()
        return self._decode_row(row) if row else None  # type: ignore[return-value]

    def writer_alive(self) -> bool:
        """Whether a process is writing this run now."""
        if fcntl is not None:
            with open(self.path, "rb") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                return False
        heartbeat = float(self.meta().get("heartbeat", 0))
        return time.time() - heartbeat < HEARTBEAT_STALE

    @_guarded
    def status(self) -> str:
        """running, finished, failed, interrupted, or crashed (no RunEnded and no writer)."""
        end = self.ended()
        if end is not None:
            return end.status if end.status in ev.RUN_STATUSES else "failed"
        return "running" if self.writer_alive() else "crashed"

    @_guarded
    def last_seq(self) -> int:
        with self.snapshot():
            a = self._db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
            b = self._db.execute("SELECT max(last_seq) FROM step_chunks").fetchone()[0] or 0
        return max(a, b)

    @_guarded
    def missing_events(self) -> int:
        """How many seqs from 1 to the last are missing (rows deleted from the store); 0 for an undamaged run.

        Every event has its seq and the seqs run 1, 2, 3, ... without gaps, so the rows held
        must number the last seq. Negative if rows overlap, which is damage too.
        """
        with self.snapshot():
            count, last = self._db.execute("SELECT count(*), max(seq) FROM events").fetchone()
            steps, last_step = self._db.execute("SELECT sum(n), max(last_seq) FROM step_chunks").fetchone()
        return max(last or 0, last_step or 0) - count - (steps or 0)

    @_guarded
    def summary(self) -> RunSummary:
        start = self.started()
        with self.snapshot():
            q = self._db.execute
            steps_ev = q("SELECT max(step), min(wall_time), max(wall_time) FROM events").fetchone()
            last_chunk = q("SELECT last_step, walls, n FROM step_chunks ORDER BY first_seq DESC LIMIT 1").fetchone()
            first_chunk = q("SELECT walls, n FROM step_chunks ORDER BY first_seq LIMIT 1").fetchone()
            epochs = [self._decode_row(r) for r in q(f"SELECT {EVENT_COLUMNS} FROM events WHERE kind='Epoch'")]
        last_step = steps_ev[0] if steps_ev[0] is not None else 0
        walls = [w for w in steps_ev[1:] if w is not None]
        if last_chunk:
            last_step = max(last_step, last_chunk[0])
            walls.append(float(unpack_f64(last_chunk[1], last_chunk[2])[-1]))
            walls.append(float(unpack_f64(first_chunk[0], first_chunk[1])[0]))
        accs = [e.val_acc for e in epochs if e is not None and e.val_acc is not None]
        missing = self.missing_events()
        return RunSummary(
            path=self.path,
            name=start.name if start else self.path.stem,
            model=start.model if start else "?",
            dataset=start.dataset if start else "?",
            status="damaged" if missing else self.status(),
            steps=int(last_step),
            best_val_acc=max(accs) if accs else None,
            started=min(walls) if walls else None,
            duration=max(walls) - min(walls) if walls else None,
            missing=missing,
        )

    # -- scalars

    @_guarded
    def scalar_names(self) -> list[str]:
        """Names of the Step scalars, in the order they first appeared."""
        return [r[0] for r in self._db.execute("SELECT name FROM names ORDER BY id")]

    @_guarded
    def scalars(self, name: str, upto_seq: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every (step, value) of one Step scalar, as two arrays; only events with seq <= `upto_seq` if given."""
        return self.scalars_many([name], upto_seq)[name]

    @_guarded
    def scalars_many(
        self, names: list[str] | None = None, upto_seq: int | None = None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`scalars` of several names (all if None) in one pass: each step chunk is read and checked once."""
        return self._read_steps(names, upto_seq, clock=False)[0]

    @_guarded
    def step_walls(self, upto_seq: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every Step event's (step, wall time) up to `upto_seq`, in order: a run drawn against the clock."""
        return self._read_steps([], upto_seq, clock=True)[1]

    @_guarded
    def scalars_and_walls(
        self, upto_seq: int | None = None
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
        """`scalars_many()` of every name and `step_walls()`, from one pass over the step chunks (opening a run)."""
        return self._read_steps(None, upto_seq, clock=True)

    def _read_steps(
        self, names: list[str] | None, upto_seq: int | None, clock: bool
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
        """The named scalars (all if None) and, with `clock`, every Step's (step, wall time), up to `upto_seq`."""
        ids = dict(self._db.execute("SELECT name, id FROM names").fetchall())
        names = list(ids) if names is None else names
        bound = _NO_LIMIT if upto_seq is None else upto_seq
        out = {name: (np.empty(0, np.int64), np.empty(0, np.float64)) for name in names}
        steps, walls = [np.empty(0, np.int64)], [np.empty(0, np.float64)]
        with self.snapshot():
            chunks: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # first_seq -> (steps, seqs if cut)
            for first, last, n, seqs_blob, steps_blob, walls_blob in self._step_chunks(bound):
                seqs = unpack_i64(seqs_blob, n) if last > bound else None  # the chunk the bound cuts through
                chunks[first] = (unpack_i64(steps_blob, n), seqs)
                if clock:
                    keep = slice(None) if seqs is None else seqs <= bound
                    steps.append(chunks[first][0][keep])
                    walls.append(unpack_f64(walls_blob, n)[keep])
            for name in names:
                if name in ids:
                    out[name] = self._series_values(name, ids[name], chunks, bound)
        return out, (np.concatenate(steps), np.concatenate(walls))

    def _step_chunks(self, bound: int) -> Iterator[tuple[int, int, int, bytes, bytes, bytes]]:
        """The step chunks that start at or before seq `bound`, in seq order, each checked against its CRC:
        (first_seq, last_seq, n, seqs, steps, walls), the blobs still packed."""
        for first, last, s0, s1, n, seqs, steps, walls, crc in self._db.execute(
            "SELECT first_seq, last_seq, first_step, last_step, n, seqs, steps, walls, crc FROM step_chunks"
            " WHERE first_seq <= ? ORDER BY first_seq",
            (bound,),
        ):
            if crc != chunk_crc(seqs, steps, walls, ints=(first, last, s0, s1, n)):
                raise StoreError(f"checksum mismatch in step chunk {first}")
            yield first, last, n, seqs, steps, walls

    def _series_values(
        self, name: str, nid: int, chunks: dict[int, tuple[np.ndarray, np.ndarray | None]], bound: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """One scalar's (steps, values) over the step chunks given (read, checked and decoded once by the caller)."""
        steps, values = [], []
        for first, rows, vals, vcrc in self._db.execute(
            "SELECT first_seq, rows, vals, crc FROM series_chunks WHERE name_id = ? AND first_seq <= ?"
            " ORDER BY first_seq",
            (nid, bound),
        ):
            if first not in chunks:
                raise StoreError(f"step chunk {first} is missing")
            chunk_steps, chunk_seqs = chunks[first]
            n = len(chunk_steps)
            if rows is None:
                m = n
                chunk_values = unpack_f64(vals, n)
            else:
                m = len(zlib.decompress(rows)) // 8
                idx = unpack_i64(rows, m)
                if len(idx) and (idx.min() < 0 or idx.max() >= n):
                    raise StoreError(f"row index out of range in chunk {first}")
                chunk_steps = chunk_steps[idx]
                chunk_seqs = None if chunk_seqs is None else chunk_seqs[idx]
                chunk_values = unpack_f64(vals, m)
            if vcrc != chunk_crc(rows, vals, ints=(nid, first, m)):
                raise StoreError(f"checksum mismatch in series chunk {first} of {name!r}")
            if chunk_seqs is not None:
                keep = chunk_seqs <= bound
                chunk_steps, chunk_values = chunk_steps[keep], chunk_values[keep]
            steps.append(chunk_steps)
            values.append(chunk_values)
        if not steps:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        return np.concatenate(steps), np.concatenate(values)

    def series(self, name: str, points: int = 500) -> Series:
        """A Step scalar downsampled to at most `points` buckets (min, max and last of each)."""
        steps, values = self.scalars(name)
        return downsample(name, steps, values, points)

    @_guarded
    def epochs(self) -> list[ev.Epoch]:
        return self.events_of("Epoch")  # type: ignore[return-value]

    # -- other events

    @_guarded
    def events_of(self, kind: str, limit: int | None = None, upto_seq: int | None = None) -> list[ev.Event]:
        """All events of one kind (not Step), in order; the last `limit` if given; seq <= `upto_seq` if given."""
        bound = _NO_LIMIT if upto_seq is None else upto_seq
        if limit is None:
            rows = self._db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE kind=? AND seq <= ? ORDER BY seq", (kind, bound)
            ).fetchall()
        else:
            rows = self._db.execute(  # newest first by the (kind, step) index: no sort of whole rows
                f"SELECT {EVENT_COLUMNS} FROM events WHERE kind=? AND seq <= ? ORDER BY step DESC, seq DESC LIMIT ?",
                (kind, bound, limit),
            ).fetchall()
            rows.sort(key=lambda row: row[0])
        return [e for e in map(self._decode_row, rows) if e is not None]

    @_guarded
    def events_at(self, kind: str, every: int, upto_seq: int | None = None) -> list[ev.Event]:
        """The events of one kind (not Step) at positions 0, `every`, 2 x `every`, ... in seq order, seq <= `upto_seq`:
        a thinned history, the same whichever point of the run it is read at."""
        bound = _NO_LIMIT if upto_seq is None else upto_seq
        with self.snapshot():
            seqs = sorted(
                r[0] for r in self._db.execute("SELECT seq FROM events WHERE kind=? AND seq <= ?", (kind, bound))
            )
            picked = seqs[::every]
            rows = []
            for i in range(0, len(picked), 500):
                part = picked[i : i + 500]
                marks = ",".join("?" * len(part))
                rows += self._db.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq IN ({marks})", part).fetchall()
        rows.sort(key=lambda row: row[0])
        return [e for e in map(self._decode_row, rows) if e is not None]

    @_guarded
    def count_of(self, kind: str, upto_seq: int | None = None) -> int:
        """How many events of one kind (not Step) the run holds, up to `upto_seq`."""
        bound = _NO_LIMIT if upto_seq is None else upto_seq
        return self._db.execute("SELECT count(*) FROM events WHERE kind=? AND seq <= ?", (kind, bound)).fetchone()[0]

    @_guarded
    def activation_index(self, kind: str = "maps", upto_seq: int | None = None) -> list[tuple[int, int, str]]:
        """(seq, step, layer) of every capture of maps ("maps": Maps, or an older run's Activation) or of Filters
        events, without reading the maps."""
        kinds = _map_kinds(kind)
        bound = _NO_LIMIT if upto_seq is None else upto_seq
        rows = self._db.execute(
            f"SELECT seq, step, tag FROM events WHERE kind IN ({','.join('?' * len(kinds))}) AND seq <= ? ORDER BY seq",
            (*kinds, bound),
        )
        return [(seq, step, tag) for seq, step, tag in rows]

    @_guarded
    def activation(
        self, layer: str, step: int | None = None, kind: str = "maps", upto_seq: int | None = None
    ) -> ev.Maps | ev.Activation | ev.Filters | ev.Visualized | None:
        """The maps of `layer` recorded last at or before `step` (the latest if step is None), seq <= `upto_seq`."""
        kinds = _map_kinds(kind)
        limit = step if step is not None else _NO_LIMIT
        row = self._db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE kind IN ({','.join('?' * len(kinds))}) AND tag=? AND step <= ?"
            " AND seq <= ? ORDER BY step DESC, seq DESC LIMIT 1",
            (*kinds, layer, limit, _NO_LIMIT if upto_seq is None else upto_seq),
        ).fetchone()
        return self._decode_row(row) if row else None  # type: ignore[return-value]

    @_guarded
    def capture_at(self, step: int | None = None, upto_seq: int | None = None) -> ev.Capture | None:
        """The Capture event (images, probabilities, Grad-CAM) recorded last at or before `step` (None: the latest)."""
        row = self._db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE kind='Capture' AND step <= ? AND seq <= ?"
            " ORDER BY step DESC, seq DESC LIMIT 1",
            (_NO_LIMIT if step is None else step, _NO_LIMIT if upto_seq is None else upto_seq),
        ).fetchone()
        return self._decode_row(row) if row else None  # type: ignore[return-value]

    @_guarded
    def extent(self, upto_seq: int | None = None) -> tuple[int, int, float | None, float | None]:
        """(last seq, largest step, first wall time, last wall time) of the events with seq <= `upto_seq`."""
        bound = _NO_LIMIT if upto_seq is None else upto_seq
        with self.snapshot():
            q = self._db.execute
            seq, step, last_wall = q(
                "SELECT max(seq), max(step), max(wall_time) FROM events WHERE seq <= ?", (bound,)
            ).fetchone()
            first_wall = q("SELECT wall_time FROM events WHERE seq = 1").fetchone()
            first_chunk = q("SELECT walls, n FROM step_chunks WHERE first_seq = 1").fetchone()
            chunk = q(
                "SELECT seqs, steps, walls, n, first_seq FROM step_chunks WHERE first_seq <= ? ORDER BY first_seq DESC"
                " LIMIT 1",
                (bound,),
            ).fetchone()
            top_step = q("SELECT max(last_step) FROM step_chunks WHERE last_seq <= ?", (bound,)).fetchone()[0]
        seq, step = seq or 0, max(step or 0, top_step or 0)
        first = first_wall[0] if first_wall else (float(unpack_f64(*first_chunk)[0]) if first_chunk else None)
        if chunk is not None:
            seqs, steps, walls = (
                unpack_i64(chunk[0], chunk[3]),
                unpack_i64(chunk[1], chunk[3]),
                unpack_f64(chunk[2], chunk[3]),
            )
            keep = seqs <= bound
            if keep.any():
                seq, step = max(seq, int(seqs[keep].max())), max(step, int(steps[keep].max()))
                last_wall = max(last_wall or 0.0, float(walls[keep].max()))
        return seq, step, first, last_wall

    @_guarded
    def seq_at_step(self, step: int) -> int:
        """The last seq of the events up to `step` (0 if none): where a replay that starts at `step` goes on from."""
        with self.snapshot():
            best = self._db.execute("SELECT max(seq) FROM events WHERE step <= ?", (step,)).fetchone()[0] or 0
            chunks = self._db.execute(
                "SELECT last_seq, last_step, first_step, seqs, steps, n FROM step_chunks WHERE first_step <= ?"
                " AND last_seq > ? ORDER BY first_seq",
                (step, best),
            ).fetchall()
        for last_seq, last_step, _, seqs, steps, n in chunks:
            if last_step <= step:
                best = max(best, last_seq)
            else:
                kept = unpack_i64(seqs, n)[unpack_i64(steps, n) <= step]
                best = max(best, int(kept.max()) if len(kept) else 0)
        return best

    @_guarded
    def follow(self, after_seq: int = 0, limit: int | None = 10_000) -> list[ev.Event]:
        """Events with seq > `after_seq`, in seq order, at most `limit` of them.

        Call again with the last seq returned to follow a run being written: the result is a
        consistent snapshot, so nothing is skipped or repeated. Unknown kinds are skipped.
        """
        cap = limit if limit is not None else -1
        with self.snapshot():
            rows = self._db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, cap)
            ).fetchall()
            steps: list[ev.Step] = []
            cursor = self._db.execute(
                "SELECT first_seq FROM step_chunks WHERE last_seq > ? ORDER BY first_seq", (after_seq,)
            )
            for (first,) in cursor.fetchall():
                steps += [s for s in self._read_step_chunk(first) if s.seq > after_seq]
                if limit is not None and len(steps) >= limit:
                    break
        merged = [e for e in map(self._decode_row, rows) if e is not None]
        merged += steps
        merged.sort(key=lambda e: e.seq)
        return merged if limit is None else merged[:limit]

    def iter_events(self, batch: int = 10_000) -> Iterator[ev.Event]:
        """Every event of the run, in order, read in batches."""
        after = 0
        while True:
            page = self.follow(after, limit=batch)
            if not page:
                return
            yield from page
            after = page[-1].seq

    # -- internals

    def _last_of(self, kind: str) -> ev.Event | None:
        row = self._db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE kind=? ORDER BY seq DESC LIMIT 1", (kind,)
        ).fetchone()
        return self._decode_row(row) if row else None

    def _decode_row(self, row: tuple) -> ev.Event | None:
        seq, kind, step, wall_time, body, crc, tag = row
        if crc != event_crc(seq, step, wall_time, kind, body, tag):
            raise StoreError(f"checksum mismatch in event {seq}")
        return ev.decode_payload(kind, seq, step, wall_time, body)

    def _name(self, nid: int) -> str:
        name = self._names.get(nid)
        if name is None:
            self._names = dict(self._db.execute("SELECT id, name FROM names").fetchall())
            name = self._names.get(nid)
            if name is None:
                raise StoreError(f"scalar name id {nid} is not in the names table")
        return name

    def _read_step_chunk(self, first_seq: int) -> list[ev.Step]:
        """The Step events of one column chunk, rebuilt."""
        return read_step_chunk(self._db, first_seq, self._name)


def read_step_chunk(db: sqlite3.Connection, first_seq: int, name_of: Callable[[int], str]) -> list[ev.Step]:
    """The Step events of the column chunk that starts at `first_seq`, rebuilt and checked."""
    row = db.execute("SELECT * FROM step_chunks WHERE first_seq=?", (first_seq,)).fetchone()
    if row is None:
        raise StoreError(f"step chunk {first_seq} is missing")
    first, last, s0, s1, n, seqs_blob, steps_blob, walls_blob, crc = row
    if crc != chunk_crc(seqs_blob, steps_blob, walls_blob, ints=(first, last, s0, s1, n)):
        raise StoreError(f"checksum mismatch in step chunk {first}")
    seqs = unpack_i64(seqs_blob, n).tolist()
    steps = unpack_i64(steps_blob, n).tolist()
    walls = unpack_f64(walls_blob, n).tolist()
    scalars: list[dict[str, float]] = [{} for _ in range(n)]
    for nid, rows_blob, vals_blob, vcrc in db.execute(
        "SELECT name_id, rows, vals, crc FROM series_chunks WHERE first_seq=? ORDER BY rowid", (first,)
    ):
        name = name_of(nid)
        m = n if rows_blob is None else len(zlib.decompress(rows_blob)) // 8
        if vcrc != chunk_crc(rows_blob, vals_blob, ints=(nid, first, m)):
            raise StoreError(f"checksum mismatch in series chunk {first} of {name!r}")
        idx = range(n) if rows_blob is None else unpack_i64(rows_blob, m).tolist()
        for i, v in zip(idx, unpack_f64(vals_blob, m).tolist(), strict=True):
            scalars[i][name] = v
    return [ev.Step(seq=seqs[i], step=steps[i], wall_time=walls[i], scalars=scalars[i]) for i in range(n)]


_NO_LIMIT = 2**62  # a seq or step bound that bounds nothing


class _Snapshot:
    """A read transaction: every query inside sees the same committed state."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> _Snapshot:
        self._outer = not self._db.in_transaction
        if self._outer:
            self._db.execute("BEGIN")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._outer and self._db.in_transaction:
            self._db.execute("COMMIT")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


_UNKNOWN = object()  # the main file's store id could not be read


def _main_file_id(path: Path) -> str | None | object:
    """The store id in the main file itself, the -wal ignored (`immutable=1`): a few pages read."""
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?immutable=1", uri=True, isolation_level=None)
    except sqlite3.Error:
        return _UNKNOWN
    try:
        row = db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
    except sqlite3.Error as exc:
        # a store created before its first checkpoint holds no tables in the main file yet
        return None if "no such table" in str(exc) else _UNKNOWN
    finally:
        db.close()
    return row[0] if row else None


def find_runs(directory: str | os.PathLike) -> list[Path]:
    """Run stores in `directory`, the one that started last first."""
    d = Path(directory)
    if not d.exists():
        raise StoreError(f"{d}: no such directory")
    if not d.is_dir():
        raise StoreError(f"{d}: not a directory")
    return sorted(d.glob(f"*{SUFFIX}"), key=start_time, reverse=True)


def start_time(path: Path) -> float:
    """When the run in the store started (its first RunStarted's wall time); the file's modification time when
    that cannot be read. Not the modification time first: copying, replaying or resuming a store changes it."""
    try:
        with RunReader(path) as run:
            row = run._db.execute("SELECT min(wall_time) FROM events WHERE kind='RunStarted'").fetchone()
    except (StoreError, sqlite3.Error):
        row = None
    return float(row[0]) if row and row[0] is not None else path.stat().st_mtime


def _map_kinds(kind: str) -> tuple[str, ...]:
    """The event kinds a kind of map is stored as: "maps" (Maps, or an older run's Activation), or "Filters"."""
    kinds = {"maps": ("Maps", "Activation"), "Activation": ("Activation",), "Maps": ("Maps",), "Filters": ("Filters",)}
    kinds["Visualized"] = ("Visualized",)
    if kind not in kinds:
        raise ValueError(f"not a kind of map: {kind!r}")
    return kinds[kind]
