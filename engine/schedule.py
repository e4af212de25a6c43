"""The learning rate at each step: the schedules, the lr-find sweep, and reduce-on-plateau.

Host arithmetic only: no device work, no sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.config import TrainConfig


def range_test_lr(config: TrainConfig, step: int, total_steps: int) -> float:
    """lr-find: the learning rate swept exponentially from --min-lr to --max-lr over the run."""
    lo, hi = config.range_test
    return lo * (hi / lo) ** (step / max(1, total_steps - 1))


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int, plateau: float) -> float:
    """The rate at `step`: lr-find's sweep, or --lr times the schedule's factor and reduce-on-plateau's `plateau`."""
    if config.range_test:
        return range_test_lr(config, step, total_steps)
    return config.lr * lr_factor(config, step, steps_per_epoch, total_steps) * plateau


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The schedule's multiplier of --lr at `step` (host arithmetic: no device work, no sync).

    reduce-on-plateau is not a function of the step: `learning_rate` applies its decays on top.
    """
    c = config
    warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
    epoch = step / steps_per_epoch
    progress = min(1.0, step / max(1, total_steps))
    if c.schedule == "step":
        factor = c.gamma ** int(epoch // c.step_size)
    elif c.schedule == "multistep":
        factor = c.gamma ** sum(epoch >= m for m in c.milestones)
    elif c.schedule == "exponential":
        factor = c.gamma**epoch
    elif c.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif c.schedule == "onecycle":  # up for 30% of the run, then cosine down to lr/1e4
        rise = 0.3
        if progress < rise:
            factor = 0.04 + 0.96 * progress / rise
        else:
            factor = 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (progress - rise) / (1 - rise)))
    else:  # none, plateau
        factor = 1.0
    return warm * factor


@dataclass
class Plateau:
    """reduce-on-plateau: cut the learning rate by `gamma` after `patience` epochs without improvement."""

    patience: int
    gamma: float
    factor: float = 1.0  # what the schedule's rate is multiplied by
    best: float = math.inf
    wait: int = 0  # epochs since the best

    KEYS = ("plateau_factor", "plateau_best", "plateau_wait")  # its state, as a checkpoint keeps it

    def state(self) -> dict[str, float]:
        return dict(zip(self.KEYS, (self.factor, self.best, self.wait), strict=True))

    def restored(self, state: dict[str, Any]) -> Plateau:
        """This plateau with the state a checkpoint kept."""
        return Plateau(self.patience, self.gamma, *(state[key] for key in self.KEYS))

    def update(self, val_loss: float) -> None:
        if val_loss < self.best * (1 - 1e-4):
            self.best, self.wait = val_loss, 0
            return
        self.wait += 1
        if self.wait > self.patience:
            self.factor *= self.gamma
            self.wait = 0
