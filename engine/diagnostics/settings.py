"""Thresholds of the checks, and reading numbers from a run's config (a file: it may hold anything)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

VERSION = 1  # of the checks; a run's config carries the version its writer ran live ("diagnostics")

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
