"""What every check may know about a run: its setup, and the few facts several checks need.

`RunFacts` is filled by the `Diagnostics` runner alone, before any check sees the event: from
RunStarted the run's setup, and from each Step the learning rate (and its peak so far), the
first training losses (the loss at random weights) and the last few (the recent loss). Checks
read it and keep their own state to themselves, so no check depends on another's being
present or on the order they run in.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import events as ev
from engine.diagnostics.settings import WEIGHT_TYPES, Settings, number


@dataclass
class RunFacts:
    """The run's setup (from RunStarted) and the facts its Steps have shown so far."""

    config: dict[str, Any] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = ()
    num_classes: int | None = None
    loss: str = "ce"
    resumed: bool = False
    overfit_batches: int = 0
    range_test: bool = False
    initial_steps: int = 1  # Settings.initial_steps: the losses that make the loss at random weights
    lr: float = math.nan  # the latest learning rate
    peak_lr: float = 0.0  # the largest so far
    first_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), the first initial_steps
    recent_losses: deque[float] = field(default_factory=lambda: deque(maxlen=Settings.loss_window))

    @classmethod
    def of(cls, e: ev.RunStarted, settings: Settings) -> RunFacts:
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
            initial_steps=settings.initial_steps,
            recent_losses=deque(maxlen=settings.loss_window),
        )

    def step(self, step: int, scalars: Mapping[str, float]) -> None:
        """Learn from a Step: the learning rate, the first and the recent training losses."""
        lr = scalars.get("lr")
        if lr is not None and math.isfinite(lr):
            self.lr = lr
            self.peak_lr = max(self.peak_lr, lr)
        loss = scalars.get("train/loss")
        if loss is not None:
            if len(self.first_losses) < self.initial_steps:
                self.first_losses.append((step, loss))
            self.recent_losses.append(loss)

    @property
    def initial_loss(self) -> float | None:
        """The median of the first `initial_steps` losses (NaN if one was not finite); None before them."""
        if len(self.first_losses) < self.initial_steps:
            return None
        values = [v for _, v in self.first_losses]
        return statistics.median(values) if all(math.isfinite(v) for v in values) else math.nan

    @property
    def recent_loss(self) -> float | None:
        return statistics.median(self.recent_losses) if self.recent_losses else None

    @property
    def loss_near_zero(self) -> bool:
        """The recent loss is below a hundredth of the initial one: tiny gradients are then expected."""
        initial, recent = self.initial_loss, self.recent_loss
        return initial is not None and recent is not None and recent < 0.01 * initial

    def number(self, key: str) -> float | None:
        """A number of the run's config; None when missing or not a finite number."""
        return number(self.config.get(key))

    def weight_layers(self) -> list[int]:
        """Indices of conv and linear layers (all layers when their types are unknown)."""
        if not self.layer_types:
            return list(range(len(self.layers)))
        return [i for i, t in enumerate(self.layer_types) if t in WEIGHT_TYPES] or list(range(len(self.layers)))

    @property
    def loss_finite(self) -> bool:
        """Whether the latest training loss is a number (True before any)."""
        return not self.recent_losses or math.isfinite(self.recent_losses[-1])

    def weight_values(self, vector: Iterable[float]) -> list[tuple[str, float]]:
        """(layer name, value) of a LayerStats vector over the weight layers. NaN is a layer without a value
        (frozen, or unused by the step) and is left out, unless the loss itself is no longer finite: then
        the NaN is the gradient's own, and kept."""
        values = list(vector)
        out = []
        for i in self.weight_layers():
            if i < len(values) and (not math.isnan(values[i]) or not self.loss_finite):
                out.append((self.layers[i] if i < len(self.layers) else str(i), float(values[i])))
        return out

    @property
    def special_mode(self) -> bool:
        """--overfit-batches and lr-find runs: no validation, no schedule to judge."""
        return self.overfit_batches > 0 or self.range_test
