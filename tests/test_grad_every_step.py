"""Issue 14: per-layer gradient norms on every step by default, weight norms and update ratios every 10."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import events as ev
from engine import train
from engine.config import TrainConfig
from engine.monitor import Monitor
from engine.store import RunReader
from tui.state import RunState

pytestmark = pytest.mark.usefixtures("one_thread", "small_shapes")


def layer_stats(path) -> list[ev.LayerStats]:
    with RunReader(path) as reader:
        return list(reader.events_of("LayerStats"))


def test_a_default_run_records_gradient_norms_every_step_and_update_ratios_every_ten(tmp_path):
    config = TrainConfig(
        dataset="shapes", batch_size=32, runs_dir=str(tmp_path), name="every", steps=25, device="cpu", log_every=7
    ).validate()
    assert config.probe_every == 1 and config.update_every == 10
    assert train.run(config) == 0
    stats = layer_stats(tmp_path / "every.mirante")
    assert [e.step for e in stats] == list(range(1, 26))  # every step once, in order, across read-back intervals
    layers = len(stats[0].grad_norm)
    assert all(len(e.grad_norm) == layers and all(v > 0 for v in e.grad_norm) for e in stats)
    with_updates = [e.step for e in stats if len(e.update_ratio)]
    assert with_updates == [1, 11, 21]
    ratios = [r for e in stats for r in e.update_ratio]
    assert all(0 < r < 1 for r in ratios) and all(len(e.weight_norm) == layers for e in stats if e.update_ratio)


def test_clipping_shares_the_probe_norms_and_records_them_before_clipping(tmp_path):
    config = TrainConfig(
        dataset="shapes", batch_size=32, runs_dir=str(tmp_path), name="clip", steps=6, device="cpu",
        clip_grad=1e-3, log_every=3,
    ).validate()  # fmt: skip
    assert train.run(config) == 0
    totals = [math.sqrt(sum(v * v for v in e.grad_norm)) for e in layer_stats(tmp_path / "clip.mirante")]
    assert all(t > 1e-2 for t in totals), totals  # the norms before clipping, far above the clip


def test_the_app_keeps_the_latest_weight_norms_and_ratios_between_update_steps():
    state = RunState()
    seq = ev.Sequencer()
    state.apply(ev.RunStarted(**seq.header(0), name="r", model="m", dataset="d", layers=("a", "b")))
    state.apply(ev.LayerStats(**seq.header(1), grad_norm=[1, 2], weight_norm=[3, 4], update_ratio=[1e-3, 2e-3]))
    state.apply(ev.LayerStats(**seq.header(2), grad_norm=[5, 6]))
    assert state.layers.matrix().tolist() == [[1, 2], [5, 6]]
    assert state.layers.weight.tolist() == [3, 4] and np.allclose(state.layers.ratio, [1e-3, 2e-3])


def test_the_monitor_takes_gradient_norms_every_step_by_default(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer, run=tmp_path / "mon.mirante", log_every=4) as mon:
        for _ in range(12):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(torch.randn(8, 3, 2, 2)), torch.randint(0, 4, (8,)))
            loss.backward()
            mon.step(loss)
            optimizer.step()
    stats = layer_stats(tmp_path / "mon.mirante")
    assert [e.step for e in stats] == list(range(1, 13))
    assert [e.step for e in stats if len(e.update_ratio)] == [1, 11]


def test_the_gradient_history_spreads_over_the_whole_run_and_opens_from_the_store_as_folded(tmp_path):
    """A LayerStats every step for 3,000 steps: 512 rows kept over the whole run (not the last 512 steps), the
    same rows whether the run is folded event by event or opened from its store part way and followed."""
    from tests.runs import make_events, write_run
    from tests.test_sources import checked, same_state
    from tui.snapshot import load
    from tui.state import LAYER_WINDOW

    events = checked(make_events(steps=3000, layer_every=1))
    folded = RunState()
    folded.apply_many(events)
    layers = folded.layers
    assert layers.count == 3000 and layers.stride == 8 and len(layers.steps) <= LAYER_WINDOW + 1
    assert layers.steps[0] == 0 and layers.steps[-1] == 2999  # the first probe and the newest
    path = tmp_path / "long.mirante"
    write_run(path, events)
    with RunReader(path) as reader:
        part = load(reader, upto_seq=events[len(events) // 2].seq)
    opened = part.state
    opened.apply_many([e for e in events if e.seq > part.last_seq])
    opened.clock = folded.clock
    same_state(opened, folded)
    assert opened.layers.steps == layers.steps and opened.layers.stride == layers.stride
