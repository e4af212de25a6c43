"""Each check on crafted event streams: one stream that must make it speak, one that must not."""

from __future__ import annotations

import dataclasses
import math

import pytest

from engine import events as ev
from engine.diagnostics import CHECKS, Diagnostics, Settings, expected_initial_loss, ordered

LAYERS = tuple(f"conv{i}" for i in range(1, 9)) + ("fc",)
TYPES = ("Conv2d",) * 8 + ("Linear",)


class Stream:
    """Builds a run event by event and keeps what the diagnostics said."""

    def __init__(self, settings: Settings | None = None, layers: tuple[str, ...] = LAYERS, **config) -> None:
        self.seq = ev.Sequencer(clock=lambda: 0.0)
        self.diag = Diagnostics(settings)
        self.findings = []
        self.step = 0
        base = {"num_classes": 10, "loss": "ce", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
        base |= {"schedule": "cosine", "val_fraction": 0.1}
        types = TYPES if layers == LAYERS else ("Conv2d",) * len(layers)
        self.feed(
            ev.RunStarted,
            name="t",
            model="m",
            dataset="d",
            config=base | config,
            model_summary={"layer_types": list(types)},
            layers=layers,
        )

    def feed(self, kind, step: int | None = None, **fields):
        event = kind(**self.seq.header(self.step if step is None else step), **fields)
        self.findings += self.diag.observe(event)
        return self

    def steps(self, losses, lr: float = 0.05, **extra):
        for loss in losses:
            self.step += 1
            self.feed(ev.Step, scalars={"train/loss": loss, "lr": lr} | extra)
        return self

    def layers(self, grads, ratios=None, times: int = 1):
        ratios = ratios if ratios is not None else [1e-3] * len(grads)
        for _ in range(times):
            self.step += 1
            self.feed(ev.LayerStats, grad_norm=grads, weight_norm=[1.0] * len(grads), update_ratio=ratios)
        return self

    def epoch(self, n, train_loss, val_loss, train_acc=0.5, val_acc=0.5):
        return self.feed(
            ev.Epoch, epoch=n, train_loss=train_loss, val_loss=val_loss, train_acc=train_acc, val_acc=val_acc
        )

    def end(self, status: str = "finished"):
        return self.feed(ev.RunEnded, status=status)

    def said(self, code: str) -> list[str]:
        return [f.level for f in self.findings if f.code == code]

    def last(self, code: str):
        return [f for f in self.findings if f.code == code][-1]


# --- 1. initial loss ---------------------------------------------------------------------


def test_initial_loss_near_ln_c_is_ok():
    s = Stream().steps([2.31, 2.29, 2.35])
    assert s.said("initial-loss") == ["ok"]
    assert s.last("initial-loss").evidence["expected"] == pytest.approx(math.log(10))


def test_initial_loss_far_above_ln_c_warns_with_what_it_means():
    s = Stream().steps([9.0, 8.5, 8.7])
    assert s.said("initial-loss") == ["warn"]
    assert "too large" in s.last("initial-loss").message
    assert s.last("initial-loss").evidence["loss"] == 9.0  # step 1: the loss before any update


def test_initial_loss_far_below_warns():
    s = Stream().steps([0.2, 0.1, 0.15])
    assert s.said("initial-loss") == ["warn"]
    assert "not random" in s.last("initial-loss").message


def test_initial_loss_of_mse_has_its_own_expected_value():
    assert expected_initial_loss("mse", 10)[0] == pytest.approx(0.09)
    assert Stream(loss="mse").steps([0.0901, 0.0899, 0.09]).said("initial-loss") == ["ok"]
    assert Stream(loss="mse").steps([2.3, 2.3, 2.3]).said("initial-loss") == ["warn"]


def test_initial_loss_is_not_judged_on_resumed_runs_or_without_a_class_count():
    assert Stream(resumed_at_step=100).steps([0.01] * 5).said("initial-loss") == []
    assert Stream(num_classes=None).steps([9.0] * 5).said("initial-loss") == []


# --- 2. learning-rate decay --------------------------------------------------------------


def test_lr_decay_warns_on_a_plateau_with_a_constant_learning_rate():
    s = Stream(schedule="none").steps([1.0] * 5, lr=0.1)
    for n, val in enumerate([1.0, 0.8, 0.799, 0.801, 0.8], start=1):
        s.epoch(n, 0.5, val)
    assert s.said("lr-decay") == ["warn"]
    f = s.last("lr-decay")
    assert f.evidence["best_epoch"] == 2 and f.evidence["stalled"] == 3
    assert "--schedule" in f.message


def test_lr_decay_is_quiet_while_the_loss_improves_and_ok_with_a_schedule():
    s = Stream(schedule="none").steps([1.0] * 5, lr=0.1)
    for n, val in enumerate([1.0, 0.8, 0.6, 0.5, 0.4], start=1):
        s.epoch(n, 0.5, val)
    assert s.said("lr-decay") == []
    s.end()
    assert s.said("lr-decay") == ["ok"]  # at the end: never stalled
    assert Stream(schedule="cosine").said("lr-decay") == ["ok"]


def test_lr_decay_seen_in_the_lr_series_counts_as_a_schedule():
    s = Stream(schedule=None).steps([1.0] * 3, lr=0.1).steps([1.0] * 3, lr=0.01)
    assert s.said("lr-decay") == ["ok"]
    for n in range(1, 6):
        s.epoch(n, 0.5, 0.8)
    assert s.said("lr-decay") == ["ok"]


# --- 3. optimizer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "level", "words"),
    [
        ({"optimizer": "sgd", "momentum": 0.0, "lr": 0.05}, "warn", "without momentum"),
        ({"optimizer": "adam", "momentum": 0.0, "lr": 0.1}, "warn", "SGD-sized"),
        ({"optimizer": "sgd", "momentum": 0.9, "lr": 1e-4}, "warn", "Adam-sized"),
        ({"optimizer": "sgd", "momentum": 0.9, "lr": 0.05}, "ok", "momentum 0.9"),
        ({"optimizer": "adam", "momentum": 0.0, "lr": 1e-3}, "ok", "adam"),
    ],
)
def test_optimizer(config, level, words):
    s = Stream(**config)
    assert s.said("optimizer") == [level]
    assert words in s.last("optimizer").message


def test_plain_sgd_is_fine_on_a_shallow_net():
    assert Stream(layers=("conv1", "fc"), momentum=0.0).said("optimizer") == ["ok"]


# --- 4. validation -----------------------------------------------------------------------


def test_no_validation_split_warns():
    s = Stream().steps([2.3] * 3).epoch(1, 1.0, None, val_acc=None)
    assert s.said("validation") == ["warn"]
    assert Stream().steps([2.3] * 3).epoch(1, 1.0, 1.1).said("validation") == ["ok"]


def test_overfitting_needs_rising_validation_and_falling_training_loss():
    s = Stream()
    for n, (tr, va) in enumerate([(1.0, 1.0), (0.8, 0.9), (0.6, 0.95), (0.4, 1.0), (0.3, 1.1)], start=1):
        s.epoch(n, tr, va)
    assert s.said("overfitting") == ["ok", "warn"]  # ok at the first evaluation: it is being watched
    assert s.last("overfitting").evidence["epochs"] == [2, 3, 4, 5]
    s.epoch(6, 0.2, 0.85)  # below where the rise began
    assert s.said("overfitting") == ["ok", "warn", "ok"]


def test_both_losses_rising_is_not_overfitting():
    s = Stream()
    for n, (tr, va) in enumerate([(1.0, 1.0), (1.1, 1.1), (1.2, 1.2), (1.3, 1.3)], start=1):
        s.epoch(n, tr, va)
    assert s.said("overfitting") == ["ok"]


def test_accuracy_gap_warns_and_clears():
    s = Stream().epoch(1, 0.5, 0.6, train_acc=0.80, val_acc=0.78).epoch(2, 0.3, 0.6, train_acc=0.99, val_acc=0.80)
    assert s.said("generalization-gap") == ["ok", "warn"]
    assert s.last("generalization-gap").evidence["gap"] == pytest.approx(0.19)
    s.epoch(3, 0.3, 0.5, train_acc=0.95, val_acc=0.93)
    assert s.said("generalization-gap") == ["ok", "warn", "ok"]
    s = Stream().epoch(1, 0.5, 0.6, train_acc=0.80, val_acc=0.75).epoch(2, 0.4, 0.6, train_acc=0.85, val_acc=0.8)
    assert s.said("generalization-gap") == ["ok"]


# --- 5. divergence -----------------------------------------------------------------------


def test_nan_loss_fails_and_asks_to_stop():
    s = Stream(lr=5.0).steps([2.3, 2.4, 2.5, 40.0, math.nan], lr=5.0)
    assert s.said("divergence") == ["ok", "fail"]
    f = s.last("divergence")
    assert f.stop and s.diag.stop is f
    assert "NaN at step 5" in f.message and "--lr 0.5" in f.message
    assert f.evidence["initial_loss"] == pytest.approx(2.3)


def test_divergence_can_be_made_a_warning_only():
    s = Stream(on_divergence="warn").steps([2.3, 2.3, 2.3, math.inf])
    assert s.said("divergence") == ["ok", "fail"]
    assert not s.last("divergence").stop and s.diag.stop is None


def test_loss_growing_by_orders_of_magnitude():
    s = Stream().steps([2.3] * 3).steps([30.0] * 9)
    assert s.said("divergence") == ["ok", "warn"]
    s.steps([300.0] * 9)
    assert s.said("divergence") == ["ok", "warn", "fail"]
    assert s.last("divergence").evidence["growth"] >= 100


def test_a_blow_up_within_a_few_steps_warns():
    # smallcnn on shapes with SGD at lr 10, as recorded: BN keeps it finite, but it is diverging
    s = Stream(lr=10.0).steps([2.445, 56.29, 71.04, 28.44, 4.79, 6.53, 11.77, 8.89, 7.11, 5.90], lr=10.0)
    assert s.said("divergence") == ["ok", "warn"]
    assert s.last("divergence").step == 4
    assert "--lr 1 or lower" in s.last("divergence").message


def test_a_resumed_run_measures_growth_from_what_random_weights_give():
    s = Stream(resumed_at_step=1000).steps([0.01, 0.2, 0.3, 0.25, 0.4, 0.3, 0.2, 0.3, 0.2, 0.3])
    assert s.said("divergence") == ["ok"]  # 30x the first loss, but far below ln 10


def test_a_noisy_falling_loss_does_not_diverge():
    losses = [2.3 * 0.99**i * (1.5 if i % 7 == 0 else 1.0) for i in range(300)]
    assert Stream().steps(losses).said("divergence") == ["ok"]


# --- 6. gradients ------------------------------------------------------------------------


def vanishing_grads():
    return [1e-12 * 10**i for i in range(8)] + [0.5]


def test_vanishing_gradients_name_the_layers_after_three_probes():
    s = Stream().layers(vanishing_grads(), times=2)
    assert s.said("vanishing-gradients") == []
    s.layers(vanishing_grads())
    assert s.said("vanishing-gradients") == ["warn"]
    f = s.last("vanishing-gradients")
    assert f.evidence["layers"][:3] == ["conv1", "conv2", "conv3"]
    assert "conv1" in f.message and "ReLU" in f.message


def test_healthy_gradients_do_not_vanish():
    grads = [0.05, 0.08, 0.1, 0.2, 0.3, 0.3, 0.5, 0.8, 1.2]
    assert Stream().layers(grads, times=10).said("vanishing-gradients") == ["ok"]


def test_layers_without_gradients_are_not_vanishing():
    grads = [math.nan, math.nan, 0.1, 0.2, 0.3, 0.3, 0.5, 0.8, 1.2]  # frozen layers report NaN
    assert Stream().layers(grads, times=10).said("vanishing-gradients") == ["ok"]


def test_exploding_gradients():
    calm = [0.1] * 9
    s = Stream().layers(calm, times=3).layers([0.1] * 8 + [5e3], times=3)
    assert s.said("exploding-gradients") == ["ok", "warn"]
    assert s.last("exploding-gradients").evidence["layers"] == ["fc"]
    s.layers([math.inf] + [0.1] * 8, times=3)
    assert s.said("exploding-gradients") == ["ok", "warn", "fail"]
    assert Stream().layers(calm, times=20).said("exploding-gradients") == ["ok"]


def test_dead_relus_from_captured_zero_shares():
    def capture(s, zero, dead):  # as the recorder sends them: a Step event of their own
        return s.feed(ev.Step, scalars={"act/zero_share/conv1": zero, "act/dead_share/conv1": dead})

    s = capture(Stream(), 0.5, 0.0)
    assert s.said("dead-relu") == ["ok"]
    capture(s, 0.99, 0.7)
    assert s.said("dead-relu") == ["ok", "warn"]
    assert "conv1" in s.last("dead-relu").message
    capture(s, 0.99, 0.7)
    assert s.said("dead-relu") == ["ok", "warn"]  # the same state says nothing new


# --- 7. update size ----------------------------------------------------------------------


def test_update_ratio_far_above_1e3_on_most_layers():
    s = Stream().steps([2.3], lr=0.05).layers([0.1] * 9, ratios=[0.2] * 9, times=3)
    assert s.said("update-ratio") == ["warn"]
    assert "too large" in s.last("update-ratio").message


def test_update_ratio_too_small_only_counts_at_the_peak_learning_rate():
    tiny = [1e-7] * 9
    s = Stream().steps([2.3], lr=0.05).layers([0.1] * 9, ratios=tiny, times=3)
    assert s.said("update-ratio") == ["warn"]
    s = Stream().steps([2.3], lr=0.05).steps([2.3], lr=0.001).layers([0.1] * 9, ratios=tiny, times=3)
    assert s.said("update-ratio") == []  # a schedule brought the rate down on purpose


def test_sane_update_ratios_are_ok():
    s = Stream().steps([2.3]).layers([0.1] * 9, ratios=[1e-3] * 5 + [0.1] * 4, times=10)
    assert s.said("update-ratio") == ["ok"]


# --- the two modes -----------------------------------------------------------------------


def test_overfit_mode_reports_success_once_the_loss_is_near_zero():
    s = Stream(overfit_batches=2).steps([2.3, 1.0, 0.5, 0.1, 0.06, 0.05, 0.02])
    assert s.said("overfit") == ["ok"]
    assert s.last("overfit").step == 7  # the mean over a full pass (2 batches) went below 0.05
    s.end()
    assert s.said("overfit") == ["ok"]


def test_overfit_mode_reports_failure_at_the_end():
    s = Stream(overfit_batches=1).steps([2.3, 2.0, 1.5, 1.2]).end()
    assert s.said("overfit") == ["fail"]
    assert s.last("overfit").evidence["best"] == 1.2
    assert Stream().steps([0.01] * 5).end().said("overfit") == []  # not in overfit mode


def test_overfit_mode_skips_the_validation_checks():
    s = Stream(overfit_batches=1).epoch(1, 0.5, None)
    assert s.said("validation") == [] and s.said("lr-decay") == []


def range_losses(lrs):
    """A loss that falls fastest near lr 1e-2, is lowest near 1e-1, and blows up past 1."""
    out = []
    for lr in lrs:
        x = math.log10(lr)
        out.append(2.3 - 2.0 / (1 + math.exp(-3 * (x + 2))) + (0 if x < -1 else 50 * (x + 1) ** 2))
    return out


def test_lr_find_suggests_a_tenth_of_the_minimum_and_stops_on_the_blow_up():
    lrs = [1e-6 * 10 ** (7 * i / 199) for i in range(200)]
    s = Stream(range_test=[1e-6, 10.0], schedule="none")
    for lr, loss in zip(lrs, range_losses(lrs), strict=True):
        s.steps([loss], lr=lr)
        if s.diag.stop:
            break
    f = s.last("lr-find")
    assert f.level == "ok" and f.stop
    assert 0.03 < f.evidence["min_loss_lr"] < 0.3
    assert 1e-3 < f.evidence["steepest_lr"] < 0.05
    # the smaller of the two usual rules: where the loss falls fastest, and a tenth of where it is lowest
    assert f.evidence["suggested_lr"] == min(f.evidence["steepest_lr"], f.evidence["min_loss_lr"] / 10)
    assert f.evidence["blew_up_at"] < 10
    assert s.said("divergence") == [] and s.said("update-ratio") == []  # blowing up is the point here


def test_lr_find_with_a_flat_loss_warns():
    s = Stream(range_test=[1e-6, 10.0])
    for i in range(50):
        s.steps([2.3], lr=1e-6 * 1.3**i)
    s.end()
    assert s.said("lr-find") == ["warn"]


# --- the container -----------------------------------------------------------------------


def test_findings_come_only_on_state_changes():
    s = Stream().steps([2.3] * 200).layers([0.1] * 9, times=30)
    codes = [f.code for f in s.findings]
    assert len(codes) == len(set(codes))


def test_ordered_lists_every_check_then_the_runs_own_codes():
    s = Stream().steps([2.3] * 3)
    s.diag.states["exception"] = s.findings[0]
    rows = ordered(s.diag.states)
    assert [code for code, _, _ in rows][: len(CHECKS)] == list(CHECKS)
    assert rows[-1][0] == "exception"
    assert dict((c, f) for c, _, f in rows)["initial-loss"].level == "ok"
    assert dict((c, f) for c, _, f in rows)["overfit"] is None


def test_settings_come_from_the_run_config():
    s = Stream(on_divergence="warn")
    assert s.diag.settings.on_divergence == "warn"


def test_no_check_depends_on_another_or_on_their_order(monkeypatch):
    """Each check alone, and all of them in reverse order, say exactly what they say together: they read the
    run's facts (learning rate, first and recent losses), which the runner fills before any check runs."""
    import engine.diagnostics as diagnostics
    from tests.runs import make_events

    events = make_events(steps=3000)
    events[0] = dataclasses.replace(events[0], config={**events[0].config, "num_classes": 10})

    def said(kinds: tuple) -> list[tuple[int, str, str, str]]:
        monkeypatch.setattr(diagnostics, "CHECK_TYPES", kinds)
        d = Diagnostics()
        for e in events:
            d.observe(e)
        return [(f.step, f.code, f.level, f.message) for f in d.history]

    together = said(diagnostics.CHECK_TYPES)
    assert {code for _, code, _, _ in together} >= {"initial-loss", "lr-decay", "divergence", "update-ratio"}
    backwards = said(tuple(reversed(diagnostics.CHECK_TYPES)))
    assert sorted(backwards) == sorted(together)
    for kind in diagnostics.CHECK_TYPES:
        codes = kind.codes or (kind.code,)
        assert said((kind,)) == [f for f in together if f[1] in codes], kind.__name__
