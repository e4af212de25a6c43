"""Checklist 5: a loss that turns NaN or grows by orders of magnitude."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping

from engine.diagnostics.base import Check, Verdict, g
from engine.diagnostics.facts import RunFacts
from engine.diagnostics.settings import Settings
from engine.diagnostics.start import expected_initial_loss

# --- divergence -------------------------------------------------------------------------


class Divergence(Check):
    """NaN or infinite loss; a loss grown by orders of magnitude over where it started.

    The start is the first step's loss (or, on a resumed run, the larger of it and what random
    weights give). A growth is judged on the median of a few steps, so one bad batch is not enough.
    """

    code = "divergence"

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.reference: float | None = None
        self.short: deque[float] = deque(maxlen=3)  # warns: a fast blow-up shows within a few steps
        self.window: deque[float] = deque(maxlen=settings.loss_window)  # fails, and clears a warning
        self.state = "ok"
        self.above = 0  # losses in `window` at or above the warning level

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
