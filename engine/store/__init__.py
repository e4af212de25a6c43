"""The run store: one SQLite file per run, written by one thread, read by any number of processes.

Layout. `Step` events, the bulk of a run, are kept column-wise: a chunk of up to
`CHUNK_ROWS` consecutive steps is one row of `step_chunks` (seq, step and wall-time
columns) plus one row of `series_chunks` per scalar name (its values), each column
byte-shuffled and zlib-compressed. Reading a million-step loss curve is then a thousand
blob reads and a few numpy calls. Every other event is one row of `events`, its payload
encoded by `engine.events`. Every row carries a CRC32, so damage inside a value is reported
rather than drawn.

Writing. `RunWriter.write` appends to an in-memory queue and returns; a writer thread
commits in batches (every `flush_interval` seconds or `flush_events` events, whichever comes
first) in WAL mode with `synchronous=NORMAL`. The chunk being filled is rewritten whole at
each commit until it is full, so chunks stay large however slowly events arrive. The writer
holds an exclusive `flock` on the file for its lifetime: the kernel drops it when the process
dies, however it dies, which is how readers tell a running run from a crashed one. `write`
checks and encodes each event in the caller's thread, so a bad one raises there and never
reaches the writer thread. On a full disk the writer keeps the failed batch and retries; the
caller hears "disk full" from `write`, `flush` or `close`. `keep_upto_seq` cuts an appended
run back to a seq (what `--resume` needs), in one transaction.

Reading. `RunReader` opens the file read-only and reads in short transactions, each a
consistent snapshot, so it can follow a run while another process writes it. Any problem
with the file (missing, empty, not a run store, newer schema, truncated, corrupted) is a
`StoreError` whose message names the file and the problem in one line. A `-wal` left by
another store is refused (the store id made at creation, in the main file, must be the one the
WAL shows); a crashed store in a read-only directory is read from a copy; a gap in the seq
sequence (rows deleted) is reported by `missing_events` and as status "damaged".
"""

from engine.store.reader import RunReader, RunSummary, Series, downsample, find_runs
from engine.store.schema import CHUNK_ROWS, RUN_STATES, SUFFIX, StoreError
from engine.store.writer import RunWriter

__all__ = [
    "CHUNK_ROWS",
    "RUN_STATES",
    "SUFFIX",
    "RunReader",
    "RunSummary",
    "RunWriter",
    "Series",
    "StoreError",
    "downsample",
    "find_runs",
]
