"""The checks of the two modes: can the net overfit a few batches, and the learning-rate range test."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.diagnostics.base import Check, Verdict, g
from engine.diagnostics.facts import RunFacts
from engine.diagnostics.settings import Settings

# --- the two modes: overfit a small subset, and the learning-rate range test -------------


class Overfit(Check):
    code = "overfit"

    @classmethod
    def applies(cls, run: RunFacts) -> bool:
        return run.overfit_batches > 0

    def __init__(self, run: RunFacts, settings: Settings) -> None:
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
    """A debiased exponential moving average, one value at a time: the charts' smoothing, which
    `tui.series.ema_debiased` computes over whole arrays (a test holds the two equal). A NaN or
    infinite value is returned as it is and leaves the average alone."""

    def __init__(self, beta: float) -> None:
        self.beta, self.avg, self.n = beta, 0.0, 0

    def add(self, value: float) -> float:
        if not math.isfinite(value):
            return value
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
        points = []
        for lr, s in zip(self.lrs, self.smoothed, strict=True):
            if not math.isfinite(s):
                break  # the loss blew up here: the sweep ends
            if lr > 0:
                points.append((lr, s))
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
    def applies(cls, run: RunFacts) -> bool:
        return run.range_test

    def __init__(self, run: RunFacts, settings: Settings) -> None:
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
