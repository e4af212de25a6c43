"""The run store's file format: schema, constants, column codecs and checksums."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from engine.names import SUFFIX  # noqa: F401 - the store's file name, with the run names it is made from

APPLICATION_ID = 0x4D495241  # "MIRA": marks a SQLite file as a mirante run store
CHUNK_ROWS = 1024  # steps per column chunk
PAGE_SIZE = 16384
HEARTBEAT_INTERVAL = 5.0  # seconds between heartbeats of an idle writer
HEARTBEAT_STALE = 60.0  # without flock, a writer silent this long is taken for dead
RUN_STATES = ("running", "finished", "failed", "interrupted", "crashed")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    wall_time REAL NOT NULL,
    body BLOB NOT NULL,
    crc INTEGER NOT NULL,
    tag TEXT                -- what the event is about (an Activation's layer), to list without decoding
);
CREATE INDEX events_by_kind ON events (kind, step);
CREATE TABLE step_chunks (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    n INTEGER NOT NULL,
    seqs BLOB NOT NULL,
    steps BLOB NOT NULL,
    walls BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE INDEX step_chunks_by_last ON step_chunks (last_seq);
CREATE TABLE series_chunks (
    name_id INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    rows BLOB,              -- positions in the step chunk that have this scalar, NULL for all
    vals BLOB NOT NULL,
    crc INTEGER NOT NULL,
    PRIMARY KEY (name_id, first_seq)
);
"""


class StoreError(Exception):
    """A run store that cannot be read or written; the message names the file and the problem."""


# --- column codecs --------------------------------------------------------------------
#
# Byte-shuffling puts the i-th byte of every value together, so zlib finds the runs in
# exponents and high bytes; int columns are delta-encoded first (steps and seqs then
# compress to almost nothing).


def pack_f64(values: np.ndarray) -> bytes:
    a = np.ascontiguousarray(values, dtype="<f8")
    return zlib.compress(a.view(np.uint8).reshape(-1, 8).T.tobytes(), 1)


def unpack_f64(blob: bytes, n: int) -> np.ndarray:
    raw = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    if raw.size != 8 * n:
        raise StoreError(f"column holds {raw.size // 8} values, expected {n}")
    return raw.reshape(8, n).T.copy().view("<f8").ravel()


def pack_i64(values: np.ndarray) -> bytes:
    a = np.asarray(values, dtype="<i8")
    return pack_f64(np.diff(a, prepend=0).view("<f8"))


def unpack_i64(blob: bytes, n: int) -> np.ndarray:
    return np.cumsum(unpack_f64(blob, n).view("<i8"))


def chunk_crc(*parts: bytes | None, ints: tuple[int, ...] = ()) -> int:
    crc = zlib.crc32(struct.pack(f"<{len(ints)}q", *ints))
    for part in parts:
        crc = zlib.crc32(part or b"\x00", crc)
    return crc


def event_crc(seq: int, step: int, wall_time: float, kind: str, body: bytes, tag: str | None) -> int:
    head = struct.pack("<qqd", seq, step, wall_time) + kind.encode() + b"\x00" + (tag or "").encode()
    return zlib.crc32(body, zlib.crc32(head))


EVENT_COLUMNS = "seq, kind, step, wall_time, body, crc, tag"  # the columns `RunReader._decode_row` takes
TAGGED = {
    "Activation": "layer",
    "Maps": "layer",
    "Visualized": "layer",
    "Filters": "layer",
    "Diagnostic": "code",
}  # kind -> field kept as tag
