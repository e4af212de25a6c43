"""Export a run store to CSV (every number, one per row) or JSONL (every event, one per line), and its strings
made safe to print (`printable`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from typing import IO

from engine import events as ev
from engine.store import RunReader

CSV_COLUMNS = ("seq", "step", "wall_time", "kind", "name", "value")
FORMATS = ("csv", "jsonl")

# What a terminal acts on instead of showing: C0 controls (ESC starts a title change or a screen clear), DEL,
# C1 controls (0x9b is a one-byte CSI to some terminals), and the bidirectional overrides that reorder text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control character shown as its escape (ESC as \\x1b, a newline as \\n).

    Every string read from a store (names, dataset, layer names, messages) goes through this before it
    reaches a terminal: a store is a file anyone may have written.
    """
    if not isinstance(text, str):
        text = str(text)
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def numbers(event: ev.Event, layers: tuple[str, ...]) -> Iterator[tuple[str, float]]:
    """The (name, value) numbers an event carries; nothing for events without numbers."""
    if isinstance(event, ev.Step):
        yield from event.scalars.items()
    elif isinstance(event, ev.Epoch):
        yield "epoch", event.epoch
        for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
            value = getattr(event, name)
            if value is not None:
                yield name, value
        yield from event.scalars.items()
    elif isinstance(event, ev.LayerStats):
        for field in ("grad_norm", "weight_norm", "update_ratio"):
            for i, value in enumerate(getattr(event, field)):
                layer = layers[i] if i < len(layers) else str(i)
                yield f"{field}/{layer}", value
    elif isinstance(event, ev.System):
        prefix = f"rank{event.rank}/" if event.rank else ""
        for name, value in event.metrics.items():
            yield prefix + name, value


def write_csv(run: RunReader, out: IO[str]) -> int:
    """Every number in the run as a row of CSV_COLUMNS (NaN and infinities as nan, inf, -inf)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    layers: tuple[str, ...] = ()
    rows = 0
    for event in run.iter_events():
        if isinstance(event, ev.RunStarted):
            layers = event.layers
        for name, value in numbers(event, layers):
            writer.writerow((event.seq, event.step, repr(event.wall_time), event.kind, name, repr(float(value))))
            rows += 1
    return rows


def write_jsonl(run: RunReader, out: IO[str]) -> int:
    """Every event as one JSON object per line (see `engine.events.to_json`)."""
    count = 0
    for event in run.iter_events():
        out.write(json.dumps(ev.to_json(event), allow_nan=False, separators=(",", ":")))
        out.write("\n")
        count += 1
    return count


def export(run: RunReader, fmt: str, out: IO[str]) -> int:
    """Write the run to `out` in `fmt`; returns the rows (CSV) or events (JSONL) written."""
    if fmt == "csv":
        return write_csv(run, out)
    if fmt == "jsonl":
        return write_jsonl(run, out)
    raise ValueError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
