"""The lecture's checklists as live checks over a run's events. Standard library only.

The trainer feeds every event it emits to a `Diagnostics` and stores what comes back as
`Diagnostic` events; the TUI feeds the events it reads to its own, for saved runs and runs
from versions that did not check. A check speaks when its state changes (waiting, then ok,
warn or fail), not on every step: one sentence, what to do, and the numbers behind it.

    diagnostics = Diagnostics()
    for event in events:
        for finding in diagnostics.observe(event):
            print(finding.level, finding.code, finding.message)

The checks, by the lecture's checklists:
1. initial-loss       the loss at random weights against what the loss and class count give
2. lr-decay           a learning rate that stays put while the validation loss has plateaued
3. optimizer          plain SGD on a deep net; Adam with an SGD-sized learning rate, and the reverse
4. validation         no validation split; overfitting; a train-validation accuracy gap
5. divergence         NaN or infinite loss, or a loss grown by orders of magnitude
6. gradients          vanishing and exploding gradient norms, per layer; dead ReLUs
7. update-ratio       update/weight ratios far from about 1e-3 on most layers
and two that run only in their own modes: overfit (`mirante train --overfit-batches N`)
and lr-find (`mirante lr-find`).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from engine import events as ev

VERSION = 1  # of the checks; a run's config carries the version its writer ran live ("diagnostics")

# code -> title, in the order the Diagnostics screen lists them
CHECKS: dict[str, str] = {
    "initial-loss": "loss at random weights",
    "lr-decay": "learning-rate decay",
    "optimizer": "optimizer and learning rate",
    "validation": "validation split",
    "overfitting": "overfitting",
    "generalization-gap": "train/validation accuracy gap",
    "divergence": "divergence",
    "vanishing-gradients": "vanishing gradients",
    "exploding-gradients": "exploding gradients",
    "dead-relu": "dead ReLUs",
    "update-ratio": "update/weight ratio",
    "overfit": "can it overfit a small subset?",
    "lr-find": "learning-rate range test",
}

WEIGHT_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d")
ZERO_SHARE_PREFIX = "act/zero_share/"  # Step scalars: share of zero outputs of the ReLU after a captured layer
DEAD_SHARE_PREFIX = "act/dead_share/"  # ... and share of its channels that are zero everywhere


@dataclass
class Settings:
    """Thresholds of the checks. The defaults are measured on the zoo (see the README's Diagnostics)."""

    initial_steps: int = 1  # steps whose median loss is the loss at random weights (step 1 comes before any update)
    initial_band: tuple[float, float] = (0.7, 1.5)  # ok between these multiples of the expected loss
    plateau_epochs: int = 3  # epochs without validation improvement that make a plateau
    min_improvement: float = 0.01  # a relative improvement smaller than this is no improvement
    deep_layers: int = 8  # weight layers from which plain SGD without momentum is a poor choice
    adam_max_lr: float = 1e-2  # Adam at or above this learning rate is using an SGD-sized one
    sgd_min_lr: float = 1e-3  # SGD at or below this learning rate is using an Adam-sized one
    overfit_evals: int = 3  # evaluations of rising validation loss and falling training loss
    gap_warn: float = 0.10  # train minus validation accuracy that warns...
    gap_clear: float = 0.05  # ... and that clears the warning
    on_divergence: str = "stop"  # stop or warn, on a NaN/infinite loss or one grown 100x
    grow_warn: float = 10.0  # recent loss / initial loss that warns
    grow_fail: float = 100.0  # ... and that counts as divergence
    loss_window: int = 9  # steps whose median is the recent loss
    vanishing_ratio: float = 1e-3  # early layers' median gradient norm / last layers' below this
    vanishing_floor: float = 1e-8  # early layers' median gradient norm below this (while the loss is not ~0)
    exploding_ceiling: float = 1e3  # a layer's gradient norm above this
    exploding_growth: float = 100.0  # the total gradient norm this many times its first probes'
    probes_to_flag: int = 3  # consecutive probes a gradient or update condition must hold
    dead_zero_share: float = 0.95  # a ReLU whose outputs are this often zero...
    dead_channel_share: float = 0.5  # ... or whose channels are this often zero everywhere
    ratio_high: float = 3e-2  # update/weight ratio above this is far from 1e-3 (learning rate too high)
    ratio_low: float = 1e-5  # below this (with the learning rate at least half its peak) too low
    ratio_layers: float = 0.5  # share of weight layers that must be far off
    overfit_target: float = 0.05  # --overfit-batches: the loss that counts as near zero
    range_blowup: float = 4.0  # lr-find: stop when the smoothed loss exceeds this many times its minimum
    range_smoothing: float = 0.9  # lr-find: EMA weight of the smoothed loss

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Settings of a run: `on_divergence` (and any threshold) may come with its config."""
        defaults = {f.name: f.default for f in fields(cls) if f.name != "initial_band"}
        return cls(**{k: v for k, v in config.items() if k in defaults and _same_kind(v, defaults[k])})


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a config's `value` may stand for `default`: a store may hold anything."""
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, int):
        return number(value) is not None and value == int(value)
    return number(value) is not None


def number(value: Any) -> float | None:
    """`value` if it is a finite int or float (not a bool), else None: a run's config comes from a file."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Finding:
    """A check's new state: what the trainer stores as a `Diagnostic` event."""

    step: int
    level: str
    code: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    stop: bool = False  # the run should stop (divergence with on_divergence=stop; lr-find done)

    @classmethod
    def of(cls, event: ev.Diagnostic) -> Finding:
        return cls(event.step, event.level, event.code, event.message, dict(event.evidence))


@dataclass
class RunInfo:
    """What the checks know about the run, from RunStarted."""

    config: dict[str, Any] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = ()
    num_classes: int | None = None
    loss: str = "ce"
    resumed: bool = False
    overfit_batches: int = 0
    range_test: bool = False
    lr: float = math.nan  # the latest learning rate seen
    peak_lr: float = 0.0
    initial_loss: float | None = None
    recent_losses: Iterable[float] = ()  # the last few training losses

    @property
    def recent_loss(self) -> float | None:
        return statistics.median(self.recent_losses) if self.recent_losses else None

    def number(self, key: str) -> float | None:
        """A number of the run's config; None when missing or not a finite number."""
        return number(self.config.get(key))

    @classmethod
    def of(cls, e: ev.RunStarted) -> RunInfo:
        c = dict(e.config)
        types = tuple(e.model_summary.get("layer_types") or ())
        classes = number(c.get("num_classes"))
        return cls(
            config=c,
            layers=tuple(e.layers),
            layer_types=types if len(types) == len(e.layers) else (),
            num_classes=int(classes) if classes and classes >= 1 else None,
            loss=str(c.get("loss", "ce")),
            resumed=bool(number(c.get("resumed_at_step"))),
            overfit_batches=int(number(c.get("overfit_batches")) or 0),
            range_test=bool(c.get("range_test")),
        )

    def weight_layers(self) -> list[int]:
        """Indices of conv and linear layers (all layers when their types are unknown)."""
        if not self.layer_types:
            return list(range(len(self.layers)))
        return [i for i, t in enumerate(self.layer_types) if t in WEIGHT_TYPES] or list(range(len(self.layers)))

    def weight_values(self, vector: Iterable[float]) -> list[tuple[str, float]]:
        """(layer name, value) of a LayerStats vector over the weight layers, NaN (no value) left out."""
        values = list(vector)
        out = []
        for i in self.weight_layers():
            if i < len(values) and not math.isnan(values[i]):
                out.append((self.layers[i] if i < len(self.layers) else str(i), float(values[i])))
        return out

    @property
    def special_mode(self) -> bool:
        """--overfit-batches and lr-find runs: no validation, no schedule to judge."""
        return self.overfit_batches > 0 or self.range_test


Verdict = tuple[str, str, dict[str, Any]]  # level, message, evidence


def g(x: float | None) -> str:
    """A number as people write it: 2.303, 0.05, 1e-05, NaN, inf."""
    if x is None:
        return "?"
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.2g}"


def finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


class Check:
    """One check. Its `on_*` methods return a Verdict when they have something to say."""

    code = ""
    codes: tuple[str, ...] = ()  # the codes it speaks under, when more than `code`

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        self.run = run
        self.s = settings
        self.pending: list[tuple[str, Verdict]] = []  # (code, verdict) said under codes other than `code`
        self.stop = False  # the run should stop (divergence with on_divergence=stop; lr-find done)

    @classmethod
    def applies(cls, run: RunInfo) -> bool:
        """Whether the check runs at all on this run (the mode checks run only in their mode)."""
        return True

    def on_start(self) -> Verdict | None:
        return None

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        return None

    def on_layers(self, e: ev.LayerStats) -> Verdict | None:
        return None

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        return None

    def on_finish(self, step: int) -> Verdict | None:
        return None


# --- checklist 1: the loss at random weights ---------------------------------------------


def expected_initial_loss(loss: str, classes: int) -> tuple[float, str]:
    """What random weights give (uniform predictions), and how to write it."""
    if loss == "mse":  # softmax against one-hot, averaged over the C outputs: ((C-1)^2/C^2 + (C-1)/C^2) / C
        return (classes - 1) / classes**2, f"(C-1)/C² for C={classes}"
    return math.log(classes), f"ln {classes}"


class InitialLoss(Check):
    code = "initial-loss"

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.losses: list[tuple[int, float]] = []
        self.done = run.resumed or run.num_classes is None or run.num_classes < 2

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        loss = scalars.get("train/loss")
        if self.done or loss is None:
            return None
        self.losses.append((step, loss))
        if len(self.losses) < self.s.initial_steps:
            return None
        self.done = True
        values = [v for _, v in self.losses]
        observed = statistics.median(values) if all(math.isfinite(v) for v in values) else math.nan
        expected, formula = expected_initial_loss(self.run.loss, self.run.num_classes or 2)
        self.run.initial_loss = observed
        ratio = observed / expected
        evidence = {
            "loss": observed,
            "expected": expected,
            "formula": formula,
            "ratio": ratio,
            "steps": [s for s, _ in self.losses],
            "losses": values,
        }
        lo, hi = self.s.initial_band
        first = (
            f"the loss at step {self.losses[0][0]} was {g(observed)}"
            if len(values) == 1
            else f"the loss over the first {len(values)} steps was {g(observed)}"
        )
        if lo <= ratio <= hi:
            return "ok", f"{first}, close to the {g(expected)} ({formula}) random weights give", evidence
        if not math.isfinite(observed) or ratio > hi:
            return (
                "warn",
                f"{first}, {g(ratio)}x the {g(expected)} ({formula}) random weights should give: the initial "
                "weights are probably too large (logits far from zero), or the labels or input normalisation are off",
                evidence,
            )
        return (
            "warn",
            f"{first}, far below the {g(expected)} ({formula}) random weights should give: the weights are not "
            "random (a trained head?), the labels leak into the inputs, or the loss is scaled wrongly",
            evidence,
        )


# --- checklist 2: learning-rate decay ----------------------------------------------------

DECAYING = ("step", "multistep", "exponential", "cosine", "onecycle", "plateau")


class LrDecay(Check):
    code = "lr-decay"

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.best = math.inf
        self.best_epoch = 0
        self.epochs = 0
        self.decayed = False
        self.warned = False

    def on_start(self) -> Verdict | None:
        schedule = self.run.config.get("schedule")
        if self.run.special_mode:
            return None
        if schedule in DECAYING:
            self.decayed = True
            return "ok", f"the learning rate follows a {schedule} schedule", {"schedule": schedule}
        return None

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        lr = scalars.get("lr")
        if lr is None or not math.isfinite(lr):
            return None
        run = self.run
        run.lr = lr
        run.peak_lr = max(run.peak_lr, lr)
        if not self.decayed and lr < 0.9 * run.peak_lr and not run.special_mode:
            self.decayed = True
            return (
                "ok",
                f"the learning rate decays: {g(run.peak_lr)} at its peak, {g(lr)} at step {step}",
                {"peak_lr": run.peak_lr, "lr": lr, "step": step},
            )
        return None

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        if self.run.special_mode:
            return None
        metric, value = ("validation", e.val_loss) if e.val_loss is not None else ("training", e.train_loss)
        if value is None or not math.isfinite(value):
            return None
        self.epochs = e.epoch
        if value < self.best * (1 - self.s.min_improvement):
            self.best, self.best_epoch = value, e.epoch
            return None
        stalled = e.epoch - self.best_epoch
        if self.decayed or self.warned or stalled < self.s.plateau_epochs:
            return None
        self.warned = True
        lr = self.run.lr
        return (
            "warn",
            f"the {metric} loss has not improved for {stalled} epochs (best {g(self.best)} at epoch "
            f"{self.best_epoch}) and the learning rate stays at {g(lr)}: decay it, by a fixed plan (--schedule step "
            f"or cosine) or by the validation loss (--schedule plateau)",
            {
                "metric": f"{metric} loss",
                "best": self.best,
                "best_epoch": self.best_epoch,
                "stalled": stalled,
                "lr": lr,
            },
        )

    def on_finish(self, step: int) -> Verdict | None:
        if self.decayed or self.warned or not self.epochs or self.run.special_mode:
            return None
        return (
            "ok",
            f"the learning rate stayed at {g(self.run.lr)}, and the loss never stalled for "
            f"{self.s.plateau_epochs} epochs in {self.epochs}",
            {"lr": self.run.lr, "epochs": self.epochs},
        )


# --- checklist 3: the optimizer ---------------------------------------------------------


class Optimizer(Check):
    code = "optimizer"

    def on_start(self) -> Verdict | None:
        c = self.run.config
        name = str(c.get("optimizer", "")).lower()
        lr = self.run.number("lr")
        if not name or lr is None or self.run.range_test:
            return None
        momentum = float(self.run.number("momentum") or 0.0)
        depth = len(self.run.weight_layers())
        evidence = {"optimizer": name, "lr": lr, "momentum": momentum, "weight_layers": depth}
        if name.startswith("adam") and lr >= self.s.adam_max_lr:
            return (
                "warn",
                f"{name} with lr {g(lr)}, an SGD-sized learning rate: Adam works best with smaller ones "
                "(1e-3 to 1e-4), or use SGD with momentum at this rate",
                evidence,
            )
        if name == "sgd" and lr <= self.s.sgd_min_lr:
            return (
                "warn",
                f"SGD with lr {g(lr)}, an Adam-sized learning rate: SGD will crawl; it usually takes 0.01 to 0.1 "
                "(with momentum 0.9), or use Adam at this rate",
                evidence,
            )
        if name == "sgd" and momentum == 0 and depth >= self.s.deep_layers:
            return (
                "warn",
                f"plain SGD without momentum on a net of {depth} weight layers: add momentum (--momentum 0.9) "
                "or use Adam, as the lecture advises",
                evidence,
            )
        what = f"SGD with momentum {g(momentum)}" if name == "sgd" and momentum else name
        return "ok", f"{what} at lr {g(lr)}", evidence


# --- checklist 4: validation ------------------------------------------------------------


class Validation(Check):
    code = "validation"

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.seen = False

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        if self.seen or self.run.special_mode:
            return None
        self.seen = True
        if e.val_loss is None:
            return (
                "warn",
                "no validation split: the training loss alone cannot show overfitting; hold out part of the "
                "training data (not the test set) and evaluate on it every epoch",
                {"epoch": e.epoch},
            )
        share = self.run.number("val_fraction")
        held = f" ({g(100 * share)}% of the training data held out)" if share else ""
        return "ok", f"the loss is watched on a validation split{held}", {"epoch": e.epoch, "val_loss": e.val_loss}


class Overfitting(Check):
    code = "overfitting"

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.history: list[ev.Epoch] = []
        self.warned_from: float | None = None  # the validation loss where the rise began

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        if e.val_loss is None or e.train_loss is None or self.run.special_mode:
            return None
        self.history.append(e)
        if len(self.history) == 1:
            return (
                "ok",
                f"validation loss {g(e.val_loss)} at epoch {e.epoch}: watched for rising while the training loss falls",
                {"epoch": e.epoch, "val_loss": e.val_loss, "train_loss": e.train_loss},
            )
        if self.warned_from is not None:
            if e.val_loss < self.warned_from:
                self.warned_from = None
                return "ok", f"the validation loss is back down to {g(e.val_loss)} at epoch {e.epoch}", {}
            return None
        n = self.s.overfit_evals
        recent = self.history[-(n + 1) :]
        if len(recent) < n + 1:
            return None
        rising = all(b.val_loss > a.val_loss for a, b in zip(recent, recent[1:], strict=False))
        falling = all(b.train_loss < a.train_loss for a, b in zip(recent, recent[1:], strict=False))
        if not (rising and falling):
            return None
        first, last = recent[0], recent[-1]
        self.warned_from = first.val_loss
        return (
            "warn",
            f"the validation loss rose for {n} evaluations ({g(first.val_loss)} to {g(last.val_loss)}, epochs "
            f"{first.epoch}-{last.epoch}) while the training loss fell ({g(first.train_loss)} to "
            f"{g(last.train_loss)}): the net is overfitting; keep the best checkpoint, and add data, augmentation "
            "or regularisation (weight decay)",
            {
                "epochs": [x.epoch for x in recent],
                "val_loss": [x.val_loss for x in recent],
                "train_loss": [x.train_loss for x in recent],
            },
        )


class GeneralizationGap(Check):
    code = "generalization-gap"

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.warned = False
        self.said = False

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        if e.val_acc is None or e.train_acc is None or self.run.special_mode:
            return None
        gap = e.train_acc - e.val_acc
        evidence = {"epoch": e.epoch, "train_acc": e.train_acc, "val_acc": e.val_acc, "gap": gap}
        if not self.warned and gap > self.s.gap_warn:
            self.warned = self.said = True
            return (
                "warn",
                f"training accuracy {100 * e.train_acc:.1f}% against {100 * e.val_acc:.1f}% on validation at epoch "
                f"{e.epoch}, a gap of {100 * gap:.1f} points: the net memorises its training data; regularise "
                "(weight decay, augmentation, dropout) or get more data",
                evidence,
            )
        if self.warned and gap < self.s.gap_clear:
            self.warned = False
            return "ok", f"the accuracy gap closed to {100 * gap:.1f} points at epoch {e.epoch}", evidence
        if not self.warned and not self.said:
            self.said = True
            return (
                "ok",
                f"training accuracy {100 * e.train_acc:.1f}% and validation {100 * e.val_acc:.1f}% at epoch "
                f"{e.epoch}: " + (f"{100 * gap:.1f} points apart" if gap >= 0 else "validation is ahead"),
                evidence,
            )
        return None


# --- divergence -------------------------------------------------------------------------


class Divergence(Check):
    """NaN or infinite loss; a loss grown by orders of magnitude over where it started.

    The start is the first step's loss (or, on a resumed run, the larger of it and what random
    weights give). A growth is judged on the median of a few steps, so one bad batch is not enough.
    """

    code = "divergence"

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.reference: float | None = None
        self.short: deque[float] = deque(maxlen=3)  # warns: a fast blow-up shows within a few steps
        self.window: deque[float] = deque(maxlen=settings.loss_window)  # fails, and clears a warning
        self.state = "ok"
        self.above = 0  # losses in `window` at or above the warning level
        run.recent_losses = self.window

    def advice(self) -> str:
        lr = self.run.lr if math.isfinite(self.run.lr) else self.run.number("lr")
        lower = f"try --lr {g(lr / 10)} or lower" if lr else "lower the learning rate"
        return f"the learning rate{f' {g(lr)}' if lr else ''} is too high: {lower}, or clip the gradients (--clip-grad)"

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        loss = scalars.get("train/loss")
        if loss is None or self.state == "fail" or self.run.range_test:
            return None
        stop = self.s.on_divergence == "stop"
        ref = self.reference
        if not math.isfinite(loss):
            self.state = "fail"
            self.stop = stop
            was = f" (it was {g(ref)} at the start)" if ref is not None else ""
            return (
                "fail",
                f"the loss is {g(loss)} at step {step}{was}: {self.advice()}",
                {"step": step, "loss": loss, "initial_loss": ref, "lr": self.run.lr, "stopped": stop},
            )
        if ref is None:
            expected = None
            if self.run.resumed and self.run.num_classes and self.run.num_classes > 1:
                expected = expected_initial_loss(self.run.loss, self.run.num_classes)[0]
            self.reference = max(loss, expected or 0.0)
            return (
                "ok",
                f"the loss starts at {g(self.reference)} (step {step}): watched for NaN, and for growing 10x",
                {"step": step, "initial_loss": self.reference},
            )
        if len(self.window) == self.window.maxlen and self.window[0] >= self.s.grow_warn * ref:
            self.above -= 1
        self.short.append(loss)
        self.window.append(loss)
        self.above += loss >= self.s.grow_warn * ref
        if ref <= 0 or len(self.short) < self.short.maxlen:
            return None
        if self.state == "ok" and not self.above:
            return None  # nothing near a growth to judge: skip the medians (this runs for every step)
        recent = statistics.median(self.window)
        burst = statistics.median(self.short)
        growth = max(recent, burst) / ref
        evidence = {
            "step": step,
            "recent_loss": recent,
            "last_3_median": burst,
            "initial_loss": ref,
            "growth": growth,
            "lr": self.run.lr,
        }
        full = len(self.window) == self.window.maxlen
        if full and recent / ref >= self.s.grow_fail:
            self.state = "fail"
            self.stop = stop
            return (
                "fail",
                f"the loss has grown {g(recent / ref)}x since the start ({g(ref)} to {g(recent)} by step {step}): "
                f"training diverges; {self.advice()}",
                evidence | {"stopped": stop},
            )
        if growth >= self.s.grow_warn and self.state == "ok":
            self.state = "warn"
            return (
                "warn",
                f"the loss has grown {g(growth)}x since the start ({g(ref)} to {g(max(recent, burst))} by step "
                f"{step}): {self.advice()}",
                evidence,
            )
        if self.state == "warn" and full and recent < 2 * ref:
            self.state = "ok"
            return "ok", f"the loss is back to {g(recent)} at step {step}, near where it started", evidence
        return None


# --- gradients --------------------------------------------------------------------------


class Gradients(Check):
    """Vanishing and exploding gradients: two codes, one pass over each LayerStats."""

    code = "vanishing-gradients"
    codes = ("vanishing-gradients", "exploding-gradients")

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.streak = {"vanishing": 0, "exploding": 0}
        self.state = {"vanishing": "ok", "exploding": "ok"}
        self.first_totals: list[float] = []
        self.said: set[str] = set()  # kinds that have said ok once

    def on_layers(self, e: ev.LayerStats) -> Verdict | None:
        known = self.run.weight_values(e.grad_norm)
        if len(known) < 2:
            return None
        self._vanishing(e.step, known)
        self._exploding(e.step, known)
        return None

    def _flag(self, kind: str, condition: bool, step: int, verdict: Verdict, healthy: Verdict) -> None:
        """Warn after `probes_to_flag` probes in a row; say ok at the first healthy probe, and when it clears."""
        self.streak[kind] = self.streak[kind] + 1 if condition else 0
        code = f"{kind}-gradients"
        if self.streak[kind] >= self.s.probes_to_flag and self.state[kind] == "ok":
            self.state[kind] = verdict[0]
            self.pending.append((code, verdict))
        elif not condition and (self.state[kind] != "ok" or kind not in self.said):
            self.state[kind] = "ok"
            self.said.add(kind)
            self.pending.append((code, healthy))

    def _vanishing(self, step: int, known: list[tuple[str, float]]) -> None:
        q = max(1, len(known) // 4)
        early = statistics.median(v for _, v in known[:q])
        late = statistics.median(v for _, v in known[-q:])
        ratio = early / late if late > 0 else math.inf
        loss_small = (
            self.run.recent_loss is not None
            and self.run.initial_loss is not None
            and self.run.recent_loss < 0.01 * self.run.initial_loss
        )
        floor = early < self.s.vanishing_floor and not loss_small
        condition = math.isfinite(early) and math.isfinite(late) and (ratio < self.s.vanishing_ratio or floor)
        top = max(finite(v for _, v in known), default=0.0)
        small = [n for n, v in known if v < self.s.vanishing_ratio * top or v < self.s.vanishing_floor]
        evidence = {
            "step": step,
            "early_median": early,
            "late_median": late,
            "ratio": ratio,
            "layers": small[:12],
            "norms": {n: v for n, v in known if n in small[:12]} | {known[-1][0]: known[-1][1]},
        }
        names = ", ".join(small[:4]) + (f" and {len(small) - 4} more" if len(small) > 4 else "")
        factor = g(1 / ratio) if ratio > 0 else "inf"
        verdict = (
            "warn",
            f"gradients vanish: the first layers' norms (median {g(early)}) are {factor}x "
            f"smaller than the last layers' ({g(late)}) at step {step}, in {names}: use ReLU instead of sigmoid or "
            "tanh, batch normalisation, residual connections, or He/Xavier initialisation",
            evidence,
        )
        healthy = (
            "ok",
            f"the first layers' gradient norms (median {g(early)}) are {g(ratio)}x the last layers' ({g(late)}) at "
            f"step {step}: no vanishing",
            evidence,
        )
        self._flag("vanishing", condition, step, verdict, healthy)

    def _exploding(self, step: int, known: list[tuple[str, float]]) -> None:
        total = math.sqrt(sum(v * v for _, v in known)) if all(math.isfinite(v) for _, v in known) else math.inf
        if len(self.first_totals) < self.s.probes_to_flag and math.isfinite(total):
            self.first_totals.append(total)
        base = statistics.median(self.first_totals) if self.first_totals else None
        bad = [n for n, v in known if not math.isfinite(v) or v > self.s.exploding_ceiling]
        grown = base is not None and base > 0 and total > self.s.exploding_growth * base
        condition = bool(bad) or grown
        evidence = {"step": step, "total_norm": total, "first_total_norm": base, "layers": bad[:12]}
        if not math.isfinite(total):
            evidence["norms"] = {n: v for n, v in known if not math.isfinite(v)}
        names = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        where = f" in {names}" if bad else ""
        level = "fail" if not math.isfinite(total) else "warn"
        verdict = (
            level,
            f"gradients explode: the total gradient norm is {g(total)} at step {step} (it was {g(base)} at the "
            f"start){where}: lower the learning rate, clip the gradients (--clip-grad), or add batch normalisation",
            evidence,
        )
        cleared = (
            "ok",
            f"the total gradient norm is {g(total)} at step {step}, no layer above {g(self.s.exploding_ceiling)}",
            evidence,
        )
        if level == "fail" and self.state["exploding"] == "warn":  # warn to fail is a change too
            self.state["exploding"] = "ok"
            self.streak["exploding"] = self.s.probes_to_flag
        self._flag("exploding", condition, step, verdict, cleared)


class DeadRelu(Check):
    code = "dead-relu"

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.dead: set[str] = set()
        self.said = False

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        if "train/loss" in scalars:
            return None  # the recorder sends zero shares in Step events of their own
        shares = {k[len(ZERO_SHARE_PREFIX) :]: v for k, v in scalars.items() if k.startswith(ZERO_SHARE_PREFIX)}
        if not shares:
            return None
        channels = {k[len(DEAD_SHARE_PREFIX) :]: v for k, v in scalars.items() if k.startswith(DEAD_SHARE_PREFIX)}
        dead = {
            layer
            for layer, share in shares.items()
            if share >= self.s.dead_zero_share or channels.get(layer, 0.0) >= self.s.dead_channel_share
        }
        evidence = {"step": step, "zero_share": shares, "dead_channel_share": channels}
        if dead == self.dead and self.said:
            return None
        self.said = True
        self.dead = dead
        if not dead:
            worst = max(shares, key=shares.get)
            return (
                "ok",
                f"the ReLUs after the captured layers are alive: at most {100 * shares[worst]:.0f}% of outputs are "
                f"zero ({worst}, step {step})",
                evidence,
            )
        names = ", ".join(sorted(dead))
        layer = sorted(dead)[0]
        return (
            "warn",
            f"dead ReLUs after {names}: {100 * shares[layer]:.0f}% of outputs and {100 * channels.get(layer, 0):.0f}% "
            f"of channels are zero for the sample at step {step}: the learning rate may be too high, or the "
            "initialisation or a large negative bias has killed them; try a lower learning rate or LeakyReLU",
            evidence,
        )


# --- update size ------------------------------------------------------------------------


class UpdateRatio(Check):
    code = "update-ratio"

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.streak = {"high": 0, "low": 0}
        self.state = "ok"
        self.said = False

    def on_layers(self, e: ev.LayerStats) -> Verdict | None:
        ratios = self.run.weight_values(e.update_ratio)
        if not ratios:
            return None
        share = self.s.ratio_layers
        high = [n for n, r in ratios if r > self.s.ratio_high or not math.isfinite(r)]
        at_peak = not math.isfinite(self.run.lr) or self.run.lr >= 0.5 * self.run.peak_lr
        tiny = [n for n, r in ratios if r < self.s.ratio_low]
        low = tiny if at_peak else []
        self.streak["high"] = self.streak["high"] + 1 if len(high) >= share * len(ratios) else 0
        self.streak["low"] = self.streak["low"] + 1 if len(low) >= share * len(ratios) else 0
        median = statistics.median(r for _, r in ratios)
        evidence = {
            "step": e.step,
            "median_ratio": median,
            "layers": len(ratios),
            "too_high": high[:12],
            "too_low": low[:12],
            "lr": self.run.lr,
        }
        n = self.s.probes_to_flag
        if self.streak["high"] >= n and self.state != "high":
            self.state = "high"
            return (
                "warn",
                f"updates are too large: {len(high)} of {len(ratios)} weight layers change by more than "
                f"{g(self.s.ratio_high)} of their norm per step (median {g(median)}, step {e.step}), far from "
                "about 1e-3: lower the learning rate",
                evidence,
            )
        if self.streak["low"] >= n and self.state != "low":
            self.state = "low"
            return (
                "warn",
                f"updates are too small: {len(low)} of {len(ratios)} weight layers change by less than "
                f"{g(self.s.ratio_low)} of their norm per step (median {g(median)}, step {e.step}), far from about "
                "1e-3: raise the learning rate (or the layers learn nothing: check for vanishing gradients)",
                evidence,
            )
        calm = self.streak["high"] == 0 and len(tiny) < share * len(ratios)
        if calm and (self.state != "ok" or not self.said):
            self.state, self.said = "ok", True
            return (
                "ok",
                f"update/weight ratios are sane: median {g(median)} at step {e.step} (about 1e-3 is ideal)",
                evidence,
            )
        return None


# --- the two modes: overfit a small subset, and the learning-rate range test -------------


class Overfit(Check):
    code = "overfit"

    @classmethod
    def applies(cls, run: RunInfo) -> bool:
        return run.overfit_batches > 0

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.n = run.overfit_batches
        self.window: deque[float] = deque(maxlen=max(1, self.n))
        self.best = math.inf
        self.first: float | None = None
        self.reached: int | None = None
        self.last_step = 0

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        loss = scalars.get("train/loss")
        if not self.n or loss is None:
            return None
        self.first = loss if self.first is None else self.first
        self.window.append(loss)
        self.last_step = step
        if len(self.window) < self.window.maxlen:
            return None
        mean = sum(self.window) / len(self.window)
        self.best = min(self.best, mean)
        if self.reached is None and mean < self.s.overfit_target:
            self.reached = step
            return (
                "ok",
                f"the net can overfit {self.batches()}: the loss on {self.them()} fell from {g(self.first)} to "
                f"{g(mean)} by step {step}: it can learn; now train on the full data",
                {"step": step, "loss": mean, "initial_loss": self.first, "target": self.s.overfit_target},
            )
        return None

    def them(self) -> str:
        return "it" if self.n == 1 else "them"

    def batches(self) -> str:
        return "one batch" if self.n == 1 else f"{self.n} batches"

    def on_finish(self, step: int) -> Verdict | None:
        if not self.n or self.reached is not None or self.first is None:
            return None
        mean = sum(self.window) / len(self.window)
        return (
            "fail",
            f"the net could not overfit {self.batches()}: after {self.last_step} steps the loss on {self.them()} is "
            f"{g(mean)} (best {g(self.best)}, target below {g(self.s.overfit_target)}): before training on more data, "
            "look at the learning rate, the labels, and the model's last layer",
            {"step": self.last_step, "loss": mean, "best": self.best, "initial_loss": self.first},
        )


class Smoother:
    """A debiased exponential moving average; a non-finite value makes it (and what follows) infinite."""

    def __init__(self, beta: float) -> None:
        self.beta, self.avg, self.n, self.broken = beta, 0.0, 0, False

    def add(self, value: float) -> float:
        if self.broken or not math.isfinite(value):
            self.broken = True
            return math.inf
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        self.n += 1
        return self.avg / (1 - self.beta**self.n)


@dataclass
class RangeTest:
    """The learning-rate range test's points: learning rate, smoothed loss."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw
    smoothed: list[float] = field(default_factory=list)

    @classmethod
    def from_series(
        cls, lr_steps: Iterable[int], lrs: Iterable[float], loss_steps: Iterable[int], losses: Iterable[float]
    ) -> RangeTest:
        """The sweep from the `lr` and `train/loss` series of a run, matched by step."""
        loss_at = dict(zip((int(s) for s in loss_steps), losses, strict=False))
        pairs = [(lr, loss_at[int(s)]) for s, lr in zip(lr_steps, lrs, strict=False) if int(s) in loss_at]
        return cls.of([lr for lr, _ in pairs], [loss for _, loss in pairs])

    @classmethod
    def of(cls, lrs: Iterable[float], losses: Iterable[float], beta: float = Settings.range_smoothing) -> RangeTest:
        """The points of a recorded sweep, smoothed as the live check smooths them."""
        out = cls()
        smoother = Smoother(beta)
        for lr, loss in zip(lrs, losses, strict=False):
            out.lrs.append(float(lr))
            out.losses.append(float(loss))
            out.smoothed.append(smoother.add(float(loss)))
        return out

    def suggestion(self) -> dict[str, Any] | None:
        """Where the smoothed loss was lowest, where it fell fastest, and the learning rate to use."""
        points = [(lr, s) for lr, s in zip(self.lrs, self.smoothed, strict=True) if math.isfinite(s) and lr > 0]
        if len(points) < 5:
            return None
        i_min = min(range(len(points)), key=lambda i: points[i][1])
        min_lr, min_loss = points[i_min]
        start_loss = points[0][1]
        # slopes over a tenth of a decade either side: step to step the loss is mostly noise
        per_decade = (len(points) - 1) / max(1e-9, math.log10(points[-1][0] / points[0][0]))
        k = max(1, round(per_decade / 10))
        slopes = [
            ((points[i + k][1] - points[i - k][1]) / math.log10(points[i + k][0] / points[i - k][0]), points[i][0])
            for i in range(k, min(i_min, len(points) - k))
            if points[i + k][0] > points[i - k][0]
        ]
        steepest = min(slopes)[1] if slopes else None
        tenth = max(points[0][0], min_lr / 10)
        return {
            "suggested_lr": min(tenth, steepest) if steepest else tenth,
            "rule": "steepest" if steepest and steepest < tenth else "tenth of the minimum",
            "min_loss_lr": min_lr,
            "min_loss": min_loss,
            "start_loss": start_loss,
            "steepest_lr": steepest,
            "fell": min_loss < 0.9 * start_loss,
        }


class LrFind(Check):
    code = "lr-find"

    @classmethod
    def applies(cls, run: RunInfo) -> bool:
        return run.range_test

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        super().__init__(run, settings)
        self.points = RangeTest()
        self.smoother = Smoother(settings.range_smoothing)
        self.best = math.inf
        self.blew_up: float | None = None

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        loss, lr = scalars.get("train/loss"), scalars.get("lr")
        if not self.run.range_test or loss is None or lr is None or self.blew_up is not None:
            return None
        smooth = self.smoother.add(loss)
        self.points.lrs.append(lr)
        self.points.losses.append(loss)
        self.points.smoothed.append(smooth)
        if self.smoother.n > 5:  # the first few are too noisy to judge
            self.best = min(self.best, smooth)
        if not math.isfinite(smooth) or smooth > self.s.range_blowup * self.best:
            self.blew_up = lr
            self.stop = True
            return self.verdict(step)
        return None

    def on_finish(self, step: int) -> Verdict | None:
        if not self.run.range_test or self.blew_up is not None:
            return None
        return self.verdict(step)

    def verdict(self, step: int) -> Verdict:
        found = self.points.suggestion()
        lrs = self.points.lrs
        swept = f"from {g(lrs[0])} to {g(lrs[-1])}" if lrs else "(no steps)"
        end = f"the loss blew up at lr {g(self.blew_up)}" if self.blew_up is not None else "the sweep ended"
        evidence = {"step": step, "swept": [lrs[0], lrs[-1]] if lrs else [], "blew_up_at": self.blew_up}
        if found is None or not found["fell"]:
            return (
                "warn",
                f"the loss did not fall at any learning rate {swept} ({end}): check the data, the labels and the "
                "model before tuning the learning rate",
                evidence | (found or {}),
            )
        if found["rule"] == "steepest":
            why = (
                f"where the smoothed loss fell fastest (below a tenth of {g(found['min_loss_lr'])}, where it was "
                f"lowest at {g(found['min_loss'])})"
            )
        else:
            why = f"a tenth of {g(found['min_loss_lr'])}, where the smoothed loss was lowest ({g(found['min_loss'])})"
        return (
            "ok",
            f"suggested learning rate {g(found['suggested_lr'])}: {why}; {end}. Use it with a warm-up "
            "(--warmup-steps 100, or --schedule onecycle): the sweep got there only after hundreds of gentler steps",
            evidence | found,
        )


RANGE_TEST_CHECKS: tuple[type[Check], ...] = (InitialLoss, LrFind)  # lr-find sweeps into divergence on purpose
CHECK_TYPES: tuple[type[Check], ...] = (
    InitialLoss,
    LrDecay,
    Optimizer,
    Validation,
    Overfitting,
    GeneralizationGap,
    Divergence,
    Gradients,
    DeadRelu,
    UpdateRatio,
    Overfit,
    LrFind,
)


class Diagnostics:
    """All checks over one run's events: `observe(event)` returns the findings whose state changed."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.fixed_settings = settings
        self.settings = settings or Settings()
        self.run = RunInfo()
        self.checks: list[Check] = []
        self._on: dict[str, list[Check]] = {"on_step": [], "on_layers": [], "on_epoch": []}
        self.states: dict[str, Finding] = {}  # the latest finding of each code
        self.history: list[Finding] = []
        self.stop: Finding | None = None  # the first finding that asked the run to stop
        self.finished = False

    def observe(self, event: ev.Event) -> list[Finding]:
        kind = type(event)
        if kind is ev.Step:
            checks = self._on["on_step"]
            return self._collect(event.step, checks, [c.on_step(event.step, event.scalars) for c in checks])
        if kind is ev.LayerStats:
            checks = self._on["on_layers"]
            return self._collect(event.step, checks, [c.on_layers(event) for c in checks])
        if kind is ev.Epoch:
            checks = self._on["on_epoch"]
            return self._collect(event.step, checks, [c.on_epoch(event) for c in checks])
        if isinstance(event, ev.RunStarted):
            return self.start(event)
        if isinstance(event, ev.RunEnded):
            return self.finish(event.step)
        return []

    def start(self, event: ev.RunStarted) -> list[Finding]:
        self.settings = self.fixed_settings or Settings.from_config(event.config)
        self.run = RunInfo.of(event)
        kinds = RANGE_TEST_CHECKS if self.run.range_test else CHECK_TYPES
        self.checks = [kind(self.run, self.settings) for kind in kinds if kind.applies(self.run)]
        # per event kind, only the checks that look at it: the TUI folds 100k+ events a second through here
        self._on = {
            hook: [c for c in self.checks if getattr(type(c), hook) is not getattr(Check, hook)]
            for hook in ("on_step", "on_layers", "on_epoch")
        }
        self.finished = False
        return self._collect(event.step, self.checks, [c.on_start() for c in self.checks])

    def finish(self, step: int) -> list[Finding]:
        """Final verdicts (overfit, lr-find), once, before the run's RunEnded."""
        if self.finished:
            return []
        self.finished = True
        return self._collect(step, self.checks, [c.on_finish(step) for c in self.checks])

    def running(self) -> set[str]:
        """The codes of the checks that run on this run (before it starts: all but the two modes')."""
        if not self.checks:
            return set(CHECKS) - {"overfit", "lr-find"}
        return {code for c in self.checks for code in (c.codes or (c.code,))}

    def learn(self, *, num_classes: int | None = None) -> None:
        """Facts a run learns after it started (the Monitor sees the class count in the first logits)."""
        if num_classes and self.run.num_classes is None:
            self.run.num_classes = num_classes
            for check in self.checks:
                if isinstance(check, InitialLoss) and not check.losses:
                    check.done = self.run.resumed or num_classes < 2

    def _collect(self, step: int, checks: list[Check], verdicts: list[Verdict | None]) -> list[Finding]:
        out: list[Finding] = []
        for check, verdict in zip(checks, verdicts, strict=True):
            if verdict is None and not check.pending:
                continue
            said, check.pending = check.pending, []
            if verdict is not None:
                said.append((check.code, verdict))
            for code, (level, message, evidence) in said:
                finding = Finding(step, level, code, message, evidence, stop=check.stop)
                previous = self.states.get(code)
                if previous is not None and previous.level == level and previous.message == message:
                    continue
                self.states[code] = finding
                self.history.append(finding)
                out.append(finding)
                if finding.stop and self.stop is None:
                    self.stop = finding
        return out


def ordered(
    states: Mapping[str, Finding], running: Iterable[str] | None = None
) -> list[tuple[str, str, Finding | None]]:
    """(code, title, latest finding or None) for the known checks, then for codes only the run knows.

    With `running`, a known check without a finding is listed only if it runs on this run.
    """
    listed = set(CHECKS) if running is None else set(running) | set(states)
    rows = [(code, title, states.get(code)) for code, title in CHECKS.items() if code in listed]
    return rows + [(code, code, f) for code, f in states.items() if code not in CHECKS]
