"""RunState folds events into what the screens show, without an App."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import events as ev
from tests.runs import LAYERS, make_events
from tui.state import RunState, ema_debiased


def folded(events, now: float = 1_700_000_100.0) -> RunState:
    state = RunState(clock=lambda: now)
    state.apply_many(events)
    return state


def test_a_whole_run():
    events = make_events(steps=3000)
    state = folded(events)
    assert state.name == "synthetic" and state.layer_names == LAYERS
    assert state.status() == "finished" and state.last_seq == events[-1].seq
    loss = state.series("train/loss")  # 3,000 steps in buckets of 4 (at most 1,024 buckets are kept)
    assert len(state.scalars["train/loss"]) == 3000 and loss.count.sum() == 3000 and len(loss) == 750
    assert loss.step[:2].tolist() == [3, 7] and loss.nan[25] == 1 and loss.max[25] == math.inf  # steps 100-103
    assert state.latest("lr") == pytest.approx(0.1 * 0.999**2999)
    assert state.epoch == 2 and [e.epoch for e in state.epochs] == [0, 1, 2]
    steps, val = state.epoch_series("val_acc")
    assert steps.tolist() == [999, 1999, 2999] and val.tolist() == pytest.approx([0.45, 0.55, 0.65])
    assert state.layers.matrix().shape == (300, len(LAYERS)) and state.layers.count == 300
    assert state.filters.maps.shape == (4, 3, 3, 3)
    assert state.latest_maps("conv1").maps.shape == (1, 4, 8, 8)  # an older run's capture: one image
    assert state.latest_maps("conv1", step=499) is None
    assert state.system["cpu/rss_mb"].last == 514.0
    worst = state.worst_diagnostics()
    assert [f.code for f in worst[:2]] == ["divergence", "initial-loss"]  # the NaN at step 100: found here
    assert worst[1].message == "initial loss is far from ln(10)"  # the run's own diagnostic
    assert state.elapsed == pytest.approx(events[-1].wall_time - events[0].wall_time)
    assert state.eta is None  # ended


def test_progress_elapsed_and_eta_while_running():
    seq = ev.Sequencer(clock=iter(float(t) for t in range(1000, 10**6)).__next__)
    events = [
        ev.RunStarted(**seq.header(0), name="r", model="m", dataset="d", config={"total_steps": 100, "batch_size": 10})
    ]
    for step in range(1, 21):
        events.append(ev.Step(**seq.header(step), scalars={"train/loss": 1.0, "throughput/img_s": 50.0}))
    state = folded(events, now=1030.0)
    assert state.status() == "running"
    state.writer_gone = True
    assert state.status() == "crashed"
    state.writer_gone = False
    assert state.progress == pytest.approx(0.2)
    assert state.elapsed == pytest.approx(30.0)  # to now, while running
    assert state.steps_per_second() == pytest.approx(5.0)  # 50 img/s at batch 10
    assert state.eta == pytest.approx(80 / 5.0)


def test_empty_state_shows_waiting():
    state = RunState(clock=lambda: 0.0)
    assert state.status() == "waiting" and state.progress is None and state.elapsed == 0.0
    assert len(state.series("train/loss")) == 0 and state.layer_flags() == {}


def probe(grads: list[float], config: dict | None = None) -> RunState:
    """A state folded from a RunStarted and one LayerStats with these gradient norms (layers a, b, c, ...)."""
    header = {"seq": 1, "wall_time": 0.0, "step": 0}
    names = tuple("abcdefgh"[: len(grads)])
    started = ev.RunStarted(**header, name="r", model="m", dataset="d", layers=names, config=config or {})
    stats = ev.LayerStats(
        **{**header, "seq": 2}, grad_norm=grads, weight_norm=[1.0] * len(grads), update_ratio=[1e-3] * len(grads)
    )
    return folded([started, stats])


def test_vanishing_and_exploding_layers_are_flagged():
    state = probe([1e-9, 1e-6, 0.5, 5e3, math.inf, 0.4])
    assert state.layer_flags() == {"a": "vanishing", "b": "vanishing", "d": "exploding", "e": "exploding"}


def test_the_pane_and_the_check_use_one_rule():
    """One small layer in the middle while the first and last layers' norms match: the check says 'no
    vanishing', and the pane marks nothing (it used to mark the layer 'vanishing' on its own rule)."""
    state = probe([0.5, 1e-5, 0.5, 0.5])
    assert state.layer_flags() == {}
    finding = state.checks.states["vanishing-gradients"]
    assert finding.level == "ok" and "no vanishing" in finding.message


def test_the_pane_uses_the_thresholds_the_run_stored():
    grads = [1e-4, 1e-4, 0.5, 0.5]  # the first layers 5,000x smaller than the last: vanishing by default
    assert probe(grads).layer_flags() == {"a": "vanishing", "b": "vanishing"}
    assert probe(grads, {"vanishing_ratio": 1e-5}).layer_flags() == {}


def test_a_resumed_run_is_running_again():
    events = make_events(steps=20, end="interrupted")
    seq = ev.Sequencer(last_seq=events[-1].seq)
    again = ev.RunStarted(**seq.header(20), name="synthetic", model="smallcnn", dataset="shapes")
    state = folded([*events, again])
    assert state.status() == "running"


def test_unknown_events_are_counted_not_fatal():
    class Future(ev.Event):
        kind = "Future"

    state = folded([Future(seq=1, wall_time=0.0, step=0)])
    assert state.skipped == 1 and state.last_seq == 1


def test_ema_with_bias_correction_and_nan():
    values = np.array([1.0, 1.0, math.nan, 3.0, math.inf])
    out = ema_debiased(values, 0.5)
    assert out[0] == 1.0  # bias correction: the first value is itself, not half of it
    assert out[1] == 1.0 and math.isnan(out[2]) and out[4] == math.inf
    assert out[3] == pytest.approx((0.5 * (0.5 * 0.5 + 0.5 * 1) + 0.5 * 3) / (1 - 0.5**3))


def test_the_app_runs_the_checks_only_on_runs_that_did_not():
    from engine.diagnostics import VERSION

    def nan_run(config):
        seq = ev.Sequencer(clock=lambda: 0.0)
        started = ev.RunStarted(**seq.header(0), name="r", model="m", dataset="d", config=config)
        return [started] + [ev.Step(**seq.header(i), scalars={"train/loss": v}) for i, v in enumerate([2.3, math.nan])]

    assert folded(nan_run({})).check_states()["divergence"].level == "fail"  # found here
    marked = folded(nan_run({"diagnostics": VERSION}))  # its writer checked, and stored nothing: nothing wrong
    assert "divergence" not in marked.check_states()
    assert [code for code, _, _ in marked.check_rows()][:2] == ["initial-loss", "lr-decay"]  # still listed


def test_planned_epochs_follow_the_steps():
    def started(config):
        return [ev.RunStarted(seq=1, wall_time=0.0, step=0, name="r", model="m", dataset="d", config=config)]

    assert folded(started({"epochs": 3, "total_steps": 300, "steps_per_epoch": 337})).planned_epochs == 1
    assert folded(started({"epochs": 3, "total_steps": 1011, "steps_per_epoch": 337})).planned_epochs == 3
    assert folded(started({"epochs": 5})).planned_epochs == 5


def test_nan_gradients_are_frozen_layers_until_the_loss_itself_is_nan():
    header = {"seq": 1, "wall_time": 0.0, "step": 0}
    started = ev.RunStarted(**header, name="r", model="m", dataset="d", layers=("a", "b", "c"))

    def flags(loss: float) -> dict[str, str]:
        step = ev.Step(**{**header, "seq": 2}, scalars={"train/loss": loss})
        grads = [math.nan, 0.4, 0.5]
        stats = ev.LayerStats(**{**header, "seq": 3}, grad_norm=grads, weight_norm=[1.0] * 3, update_ratio=[1e-3] * 3)
        return folded([started, step, stats]).layer_flags()

    assert flags(2.3) == {}  # a layer without a gradient this step (frozen, or unused)
    assert flags(math.nan) == {"a": "exploding"}  # the NaN is the gradient's own
