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

from collections.abc import Iterable, Mapping

from engine import events as ev
from engine.diagnostics.base import Check, Finding, Verdict, finite, g
from engine.diagnostics.divergence import Divergence
from engine.diagnostics.epochs import GeneralizationGap, Overfitting, Validation
from engine.diagnostics.facts import RunFacts
from engine.diagnostics.layers import DeadRelu, GradientHealth, Gradients, UpdateRatio, gradient_health
from engine.diagnostics.modes import LrFind, Overfit, RangeTest, Smoother
from engine.diagnostics.settings import (
    DEAD_SHARE_PREFIX,
    VERSION,
    WEIGHT_TYPES,
    ZERO_SHARE_PREFIX,
    Settings,
    number,
)
from engine.diagnostics.start import InitialLoss, LrDecay, Optimizer, expected_initial_loss

__all__ = [
    "CHECKS",
    "DEAD_SHARE_PREFIX",
    "VERSION",
    "WEIGHT_TYPES",
    "ZERO_SHARE_PREFIX",
    "Check",
    "Diagnostics",
    "Finding",
    "GradientHealth",
    "RangeTest",
    "RunFacts",
    "Settings",
    "Smoother",
    "Verdict",
    "expected_initial_loss",
    "finite",
    "g",
    "gradient_health",
    "number",
    "ordered",
]

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
        self.run = RunFacts()
        self.checks: list[Check] = []
        self._on: dict[str, list[Check]] = {"on_step": [], "on_layers": [], "on_epoch": []}
        self.states: dict[str, Finding] = {}  # the latest finding of each code
        self.history: list[Finding] = []
        self.stop: Finding | None = None  # the first finding that asked the run to stop
        self.finished = False

    def observe(self, event: ev.Event, *, check: bool = True) -> list[Finding]:
        """The findings `event` changes; with `check` False only the run's facts learn from it (a run whose
        writer stored its findings: the app still needs the facts, for the gradient flags of the latest probe)."""
        kind = type(event)
        if kind is ev.Step:
            self.run.step(event.step, event.scalars)  # first: every check reads the facts as of this step
            if not check:
                return []
            checks = self._on["on_step"]
            return self._collect(event.step, checks, [c.on_step(event.step, event.scalars) for c in checks])
        if not check:
            return []
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
        self.run = RunFacts.of(event, self.settings)
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

    def gradient_health(self, grad_norm: Iterable[float]) -> GradientHealth | None:
        """The one rule on vanishing and exploding gradients, at one probe, with this run's thresholds."""
        return gradient_health(self.run.weight_values(grad_norm), self.settings, self.run.loss_near_zero)

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
