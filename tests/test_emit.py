"""The Emitter's way out to the UI: a full live queue drops batches, never store rows."""

from __future__ import annotations

import multiprocessing as mp
import queue

import pytest

from engine import events as ev
from engine.emit import QUEUE_BATCH_EVENTS, Emitter
from engine.store import RunReader, RunWriter


def test_a_full_live_queue_drops_batches_and_the_store_keeps_every_event(tmp_path):
    live = mp.get_context("spawn").Queue(maxsize=1)  # a real queue that nobody reads
    emitter = Emitter(RunWriter(tmp_path / "full.mirante"), live)
    total = 3 * QUEUE_BATCH_EVENTS + 10
    for step in range(total):
        emitter.emit(ev.Step, step, scalars={"train/loss": 1.0 / (step + 1)})
    emitter.close()  # sends the last, partial batch: dropped too
    first = live.get(timeout=10)  # (and the queue's feeder thread can finish)
    assert [e.step for e in first] == list(range(QUEUE_BATCH_EVENTS))  # only the first batch found room
    with pytest.raises(queue.Empty):
        live.get(timeout=0.5)
    with RunReader(tmp_path / "full.mirante") as run:
        steps, _ = run.scalars("train/loss")
        assert run.last_seq() == total
    assert steps.tolist() == list(range(total))
