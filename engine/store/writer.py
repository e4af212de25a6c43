"""Writing a run store: `RunWriter` commits events in batches from a background thread."""

from __future__ import annotations

import atexit
import contextlib
import errno
import numbers
import os
import secrets
import socket
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine import events as ev
from engine.store.reader import RunReader, read_step_chunk
from engine.store.schema import (
    APPLICATION_ID,
    CHUNK_ROWS,
    EVENT_COLUMNS,
    HEARTBEAT_INTERVAL,
    PAGE_SIZE,
    SCHEMA,
    TAGGED,
    StoreError,
    chunk_crc,
    event_crc,
    pack_f64,
    pack_i64,
)

try:
    import fcntl
except ImportError:  # Windows: no lock; readers judge liveness by the heartbeat
    fcntl = None  # type: ignore[assignment]


class _OpenChunk:
    """The column chunk being filled: Step events not yet sealed into a full chunk."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.steps: list[int] = []
        self.walls: list[float] = []
        self.columns: dict[str, tuple[list[int], list[float]]] = {}
        self.dirty = False

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, event: ev.Step) -> None:
        row = len(self.seqs)
        self.seqs.append(event.seq)
        self.steps.append(event.step)
        self.walls.append(event.wall_time)
        for name, value in event.scalars.items():
            rows, vals = self.columns.setdefault(name, ([], []))
            rows.append(row)
            vals.append(value)
        self.dirty = True

    def store(self, db: sqlite3.Connection, name_id: Callable[[str], int]) -> None:
        n = len(self.seqs)
        first, last = self.seqs[0], self.seqs[-1]
        seqs = pack_i64(np.array(self.seqs, dtype=np.int64))
        steps = pack_i64(np.array(self.steps, dtype=np.int64))
        walls = pack_f64(np.array(self.walls, dtype=np.float64))
        crc = chunk_crc(seqs, steps, walls, ints=(first, last, self.steps[0], self.steps[-1], n))
        db.execute(
            "INSERT OR REPLACE INTO step_chunks VALUES (?,?,?,?,?,?,?,?,?)",
            (first, last, self.steps[0], self.steps[-1], n, seqs, steps, walls, crc),
        )
        for name, (rows, vals) in self.columns.items():
            nid = name_id(name)
            row_blob = None if len(rows) == n else pack_i64(np.array(rows, dtype=np.int64))
            val_blob = pack_f64(np.array(vals, dtype=np.float64))
            db.execute(
                "INSERT OR REPLACE INTO series_chunks VALUES (?,?,?,?,?)",
                (nid, first, row_blob, val_blob, chunk_crc(row_blob, val_blob, ints=(nid, first, len(rows)))),
            )
        self.dirty = False


_Row = tuple[int, str, int, float, bytes, int, "str | None"]  # a row of `events`, in EVENT_COLUMNS order
_I64 = 2**63


def _header(event: ev.Event) -> tuple[int, float]:
    """(step, wall_time) of `event` as the store keeps them, or ValueError/TypeError."""
    step, wall = event.step, event.wall_time
    if type(step) is not int:
        if not isinstance(step, numbers.Integral) or isinstance(step, bool):
            raise TypeError(f"{event.kind} event {event.seq}: step must be an int, not {type(step).__name__}")
        step = int(step)
    if not -_I64 <= step < _I64:
        raise ValueError(f"{event.kind} event {event.seq}: step {step} is out of range")
    if type(wall) is not float:
        if not isinstance(wall, numbers.Real):
            raise TypeError(f"{event.kind} event {event.seq}: wall_time must be a number, not {type(wall).__name__}")
        wall = float(wall)
    return step, wall


def _checked_step(event: ev.Step) -> ev.Step:
    """`event` if every scalar is a named real number the store can hold; ValueError/TypeError if not."""
    step, wall = _header(event)
    if step is not event.step or wall is not event.wall_time:  # numpy numbers in the header: the plain ones
        event = ev.Step(seq=event.seq, step=step, wall_time=wall, scalars=event.scalars)
    items = getattr(event.scalars, "items", None)
    if items is None:
        raise TypeError(f"Step event {event.seq}: scalars must be a mapping, not {type(event.scalars).__name__}")
    for name, value in items():
        if type(name) is not str:
            raise TypeError(f"Step event {event.seq}: scalar name {name!r} is not a str")
        if type(value) is not float:
            if not isinstance(value, numbers.Real):
                raise TypeError(
                    f"Step event {event.seq}: scalar {name!r} must be a real number, not {type(value).__name__}"
                )
            try:
                float(value)
            except (OverflowError, ValueError) as exc:
                raise ValueError(f"Step event {event.seq}: scalar {name!r}: {exc}") from None
    return event


def _encoded(event: ev.Event) -> _Row:
    """The `events` row of `event` (not a Step): payload encoded, checksum taken; ValueError/TypeError if not."""
    if not isinstance(event, ev.Event):
        raise TypeError(f"not an event: {type(event).__name__}")
    step, wall = _header(event)
    try:
        body = ev.encode_payload(event)
    except ValueError as exc:  # json: a circular reference, or the like
        raise ValueError(f"{event.kind} event {event.seq} cannot be stored: {exc}") from None
    except Exception as exc:  # json: a value it cannot write (TypeError), or a field that fails to convert
        raise TypeError(f"{event.kind} event {event.seq} cannot be stored: {exc}") from None
    tag_field = TAGGED.get(event.kind)
    tag = getattr(event, tag_field) if tag_field else None
    if tag is not None and type(tag) is not str:
        raise TypeError(f"{event.kind} event {event.seq}: {tag_field} must be a str, not {type(tag).__name__}")
    crc = event_crc(event.seq, step, wall, event.kind, body, tag)
    return (event.seq, event.kind, step, wall, body, crc, tag)


def _is_full(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's (or the OS's) "no space left"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


def _why(exc: BaseException) -> str:
    """A failure to create or open a store, in words."""
    if _is_full(exc):
        return f"disk full ({exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class RunWriter:
    """Writes one run's events to its store from a background thread; `write` never blocks.

    Events must arrive with consecutive `seq` (see `engine.events.Sequencer`); a new store
    starts at seq 1, an appended one at `last_seq + 1`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        append: bool = False,
        flush_interval: float = 0.25,
        flush_events: int = 1000,
        keep_upto_seq: int | None = None,
    ) -> None:
        """`keep_upto_seq=S` (with `append`): first remove every event with seq > S, so the run goes on at S + 1.

        That is how `--resume` drops what was recorded after its checkpoint; `discarded` says
        how many events went.
        """
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.flush_events = flush_events
        self._queue: deque[ev.Event] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._error: BaseException | None = None
        self._names: dict[str, int] = {}
        self._chunk = _OpenChunk()
        self._last_heartbeat = 0.0
        self._lock_file = None
        self.committed_seq = 0  # highest seq durably committed; readers can see up to it
        self.discarded = 0  # events removed by `keep_upto_seq`
        if keep_upto_seq is not None and (not append or type(keep_upto_seq) is not int or keep_upto_seq < 0):
            raise ValueError(f"keep_upto_seq must be a seq >= 0 of a store opened to append, not {keep_upto_seq!r}")

        self._full: BaseException | None = None  # the disk-full error of the last commit, None once one succeeds
        self._full_told = False  # whether write() or flush() raised it already
        self._failures = 0  # commits that failed for a full disk, so far

        exists = self.path.exists()
        if exists and not append:
            raise StoreError(f"{self.path}: already exists (resume it, or choose another name)")
        if not exists and append:
            raise StoreError(f"{self.path}: no such run store to append to")
        if exists:
            RunReader(self.path).close()  # validates: a clear error for what is not a run store
        siblings = [self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm", "-journal"))]
        there = {p for p in siblings if p.exists()}
        self._db = None
        try:
            if not exists:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    raise StoreError(
                        f"{self.path}: cannot create run store: {self.path.parent} is not a directory"
                    ) from None
            self._lock()
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if not exists:
                # LayerStats rows are about 1 KB: 16 KB pages waste ~2% on them where 4 KB waste ~12%
                self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                self._create()  # before WAL mode: the schema and the store id go into the main file itself
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if exists:
                self._resume(keep_upto_seq)
        except BaseException as exc:
            if self._db is not None:
                self._db.close()
            self._unlock()
            if not exists:  # a stub left by a failed creation would block the name: remove what was made
                for p in siblings:
                    if p not in there:
                        with contextlib.suppress(OSError):
                            p.unlink()
            if isinstance(exc, StoreError):
                msg = str(exc)
                raise StoreError(msg if msg.startswith(str(self.path)) else f"{self.path}: {msg}") from None
            if isinstance(exc, (sqlite3.Error, OSError)):
                doing = "append to" if exists else "create"
                raise StoreError(f"{self.path}: cannot {doing} run store: {_why(exc)}") from None
            raise
        self.last_seq = self.committed_seq  # highest seq accepted by write()
        self._thread = threading.Thread(target=self._run, name=f"mirante-writer:{self.path.name}", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)  # a script that forgets close() still gets its last events stored

    # -- caller side

    def write(self, event: ev.Event) -> None:
        """Queue `event` for the store. Returns at once.

        The event is checked (and encoded, unless a Step) here, in the caller's thread: one that
        cannot be stored raises ValueError or TypeError and is not kept, so it can neither reach
        the writer thread nor take a seq.
        """
        if self._error is not None:
            raise StoreError(f"{self.path}: writer failed: {self._error}")
        if self._closing:
            raise StoreError(f"{self.path}: writer is closed")
        if event.seq != self.last_seq + 1 or type(event.seq) is not int:
            raise ValueError(f"event seq {event.seq!r} does not follow {self.last_seq}")
        self._queue.append(_checked_step(event) if type(event) is ev.Step else _encoded(event))
        self.last_seq = event.seq
        if len(self._queue) == self.flush_events:
            self._wake.set()
        if self._full is not None and not self._full_told:
            self._full_told = True
            raise StoreError(self._full_message())

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything written so far is committed; StoreError ("disk full") if a try fails meanwhile."""
        target = self.last_seq
        failures = self._failures
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        while self.committed_seq < target and self._error is None and self._thread.is_alive():
            if self._failures > failures:
                self._full_told = True
                raise StoreError(self._full_message())
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.path}: flush timed out")
            time.sleep(0.002)
            self._wake.set()
        if self._error is not None:
            raise StoreError(f"{self.path}: writer failed: {self._error}")

    def close(self) -> None:
        """Commit everything queued, stop the thread, release the file.

        On a full disk the commit is tried once more (space may have been freed since); if it
        still fails, StoreError says "disk full" and how many events could not be written.
        """
        if self._closing:
            return
        self._closing = True
        atexit.unregister(self._close_at_exit)
        self._wake.set()
        self._thread.join()
        try:
            # A finished run becomes one plain file: leaving WAL mode checkpoints the log into
            # it, and read-only readers then create no -wal/-shm files beside it. If a reader
            # is still attached the switch is refused; the file stays in WAL mode, intact.
            try:
                self._db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.OperationalError:
                pass
            self._db.close()
        finally:
            self._unlock()
        if self._error is not None:
            raise StoreError(f"{self.path}: writer failed: {self._error}")
        if self._queue:
            raise StoreError(f"{self.path}: disk full: {len(self._queue)} events could not be written ({self._full})")

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except StoreError as exc:  # at exit there is no caller left to tell but the terminal: one line, no traceback
            print(f"mirante: error: {exc}", file=sys.stderr)

    def _full_message(self) -> str:
        return (
            f"{self.path}: disk full, cannot write the run store ({self._full}); "
            f"{len(self._queue)} events wait in memory and are retried"
        )

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            closing = self._closing  # read before taking the batch: nothing written before close() is left
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            try:
                if batch or self._full is not None or time.monotonic() - self._last_heartbeat > HEARTBEAT_INTERVAL:
                    self._commit(batch)
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    self._error = exc
                    return
                # a full disk: keep the batch at the front of the queue and try again next interval
                self._queue.extendleft(reversed(batch))
                self._full = exc
                self._failures += 1
                try:
                    self._load_tail()  # the open chunk and the names as committed, for the retry
                except BaseException as exc:
                    self._error = exc
                    return
                if closing:
                    return
                continue
            except BaseException as exc:  # kept for the caller: write() and close() raise it
                self._error = exc
                return
            self._full = None
            self._full_told = False
            if closing and not self._queue:
                return

    def _commit(self, batch: list[ev.Step | _Row]) -> None:
        rows = []
        db = self._db
        db.execute("BEGIN")
        try:
            for item in batch:
                if type(item) is ev.Step:
                    self._chunk.add(item)
                    if len(self._chunk) == CHUNK_ROWS:
                        self._chunk.store(db, self._name_id)
                        self._chunk = _OpenChunk()
                else:
                    rows.append(item)
            if rows:
                db.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)", rows)
            if self._chunk.dirty:
                self._chunk.store(db, self._name_id)
            now = time.monotonic()
            beat = now - self._last_heartbeat > HEARTBEAT_INTERVAL
            if beat:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('heartbeat', ?)", (repr(time.time()),))
            db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk among them): then a
            # ROLLBACK would fail with "no transaction is active" and hide the real error
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        if beat:
            self._last_heartbeat = now
        if batch:
            last = batch[-1]
            self.committed_seq = last.seq if type(last) is ev.Step else last[0]

    def _name_id(self, name: str) -> int:
        nid = self._names.get(name)
        if nid is None:
            nid = self._db.execute("INSERT INTO names (name) VALUES (?)", (name,)).lastrowid
            self._names[name] = nid
        return nid

    # -- setup

    def _create(self) -> None:
        db = self._db
        db.execute("BEGIN")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        meta = {
            # tells this store's -wal from one another store left under its name (RunReader checks)
            "store_id": secrets.token_hex(8),
            "created": repr(time.time()),
            "writer_host": socket.gethostname(),
            "writer_pid": str(os.getpid()),
            "heartbeat": repr(time.time()),
        }
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={ev.SCHEMA_VERSION}")
        db.execute("COMMIT")

    def _resume(self, keep_upto_seq: int | None) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._names = dict(db.execute("SELECT name, id FROM names").fetchall())
            if keep_upto_seq is not None:
                self.discarded = self._truncate(keep_upto_seq)
            last_event = db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
            last_chunk = db.execute("SELECT max(last_seq) FROM step_chunks").fetchone()[0] or 0
            self.committed_seq = max(last_event, last_chunk)
            self._load_tail()
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('writer_pid', ?), ('writer_host', ?)",
                (str(os.getpid()), socket.gethostname()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _load_tail(self) -> None:
        """The names and the open chunk as the store holds them: on resuming, and after a failed commit."""
        db = self._db
        self._names = dict(db.execute("SELECT name, id FROM names").fetchall())
        self._chunk = _OpenChunk()
        # the last chunk may be partly filled: keep filling it, as if never closed
        row = db.execute("SELECT first_seq FROM step_chunks ORDER BY first_seq DESC LIMIT 1").fetchone()
        if row is not None:
            chunk = read_step_chunk(db, row[0], self._name_of)
            if len(chunk) < CHUNK_ROWS:
                for event in chunk:
                    self._chunk.add(event)
                self._chunk.dirty = False

    def _truncate(self, keep: int) -> int:
        """Remove every event with seq > `keep` (inside the caller's transaction); how many went."""
        db = self._db
        gone = db.execute("SELECT count(*) FROM events WHERE seq > ?", (keep,)).fetchone()[0]
        db.execute("DELETE FROM events WHERE seq > ?", (keep,))
        gone += db.execute("SELECT coalesce(sum(n), 0) FROM step_chunks WHERE first_seq > ?", (keep,)).fetchone()[0]
        db.execute("DELETE FROM series_chunks WHERE first_seq > ?", (keep,))
        db.execute("DELETE FROM step_chunks WHERE first_seq > ?", (keep,))
        row = db.execute(
            "SELECT first_seq FROM step_chunks WHERE first_seq <= ? AND last_seq > ?", (keep, keep)
        ).fetchone()
        if row is not None:  # the chunk that straddles `keep`: rewritten with its rows up to it
            steps = read_step_chunk(db, row[0], self._name_of)
            kept = _OpenChunk()
            for step in steps:
                if step.seq <= keep:
                    kept.add(step)
            gone += len(steps) - len(kept)
            db.execute("DELETE FROM series_chunks WHERE first_seq = ?", (row[0],))
            kept.store(db, self._name_id)
        if gone:  # scalar names no step holds any more
            db.execute("DELETE FROM names WHERE id NOT IN (SELECT DISTINCT name_id FROM series_chunks)")
            self._names = dict(db.execute("SELECT name, id FROM names").fetchall())
        return gone

    def _name_of(self, nid: int) -> str:
        for name, i in self._names.items():
            if i == nid:
                return name
        raise StoreError(f"scalar name id {nid} is not in the names table")

    def _lock(self) -> None:
        if fcntl is None:
            return
        self._lock_file = open(self.path, "ab")  # noqa: SIM115 - held open for the writer's lifetime
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise StoreError(f"{self.path}: another process is writing this run") from None

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the flock
            self._lock_file = None
