"""A one-line sparkline that draws NaN and ±Inf as markers instead of raising."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.text import Text
from textual.widget import Widget

BARS = "▁▂▃▄▅▆▇█"
NAN_MARK, POS_INF_MARK, NEG_INF_MARK = "×", "↑", "↓"
MARK_STYLES = {NAN_MARK: "bold red", POS_INF_MARK: "yellow", NEG_INF_MARK: "yellow"}


def bucket_max(values: np.ndarray, width: int) -> np.ndarray:
    """Cut `values` into `width` consecutive buckets and keep each one's max (NaN wins, so it stays visible)."""
    if len(values) <= width:
        return values
    starts = np.arange(width) * len(values) // width
    return np.maximum.reduceat(values, starts)


def bar_levels(values: np.ndarray) -> np.ndarray:
    """Map the finite values to 0..7 between their own min and max; a flat series sits in the middle."""
    finite = np.isfinite(values)
    levels = np.zeros(len(values), dtype=np.int64)
    if not finite.any():
        return levels
    lo, hi = values[finite].min(), values[finite].max()
    if hi > lo:
        scaled = (values[finite] / 2 - lo / 2) / (hi / 2 - lo / 2)  # halves: hi - lo may overflow near 1e308
        levels[finite] = np.clip(np.rint(scaled * (len(BARS) - 1)), 0, len(BARS) - 1).astype(np.int64)
    else:
        levels[finite] = (len(BARS) - 1) // 2
    return levels


def log10_or_neg_inf(values: np.ndarray) -> np.ndarray:
    """log10 of the values; zero and negative values become -Inf (drawn as "↓"), NaN stays NaN."""
    out = np.full(len(values), -np.inf)
    positive = values > 0
    out[positive] = np.log10(values[positive])
    out[np.isnan(values)] = np.nan
    return out


def sparkline(values: Sequence[float] | np.ndarray, width: int, *, log: bool = False) -> Text:
    """Render `values` into at most `width` characters: bars for finite values, "×" NaN, "↑" +Inf, "↓" -Inf."""
    data = np.asarray(values, dtype=np.float64).ravel()
    if width <= 0 or data.size == 0:
        return Text("")
    data = bucket_max(log10_or_neg_inf(data) if log else data, width)
    levels = bar_levels(data)
    text = Text()
    for value, level in zip(data.tolist(), levels.tolist(), strict=True):
        mark = marker_for(value)
        if mark:
            text.append(mark, MARK_STYLES[mark])
        else:
            text.append(BARS[level])
    return text


def marker_for(value: float) -> str:
    """The marker for a non-finite value, or "" for a finite one."""
    if math.isnan(value):
        return NAN_MARK
    if value == np.inf:
        return POS_INF_MARK
    if value == -np.inf:
        return NEG_INF_MARK
    return ""


class Sparkline(Widget):
    """A one-row sparkline as wide as the widget; data comes in through `set_values`."""

    DEFAULT_CSS = """
    Sparkline { height: 1; }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.values: np.ndarray = np.empty(0)
        self.log_scale = False

    def set_values(self, values: Sequence[float] | np.ndarray, log: bool = False) -> None:
        """Replace the series and redraw."""
        self.values = np.asarray(values, dtype=np.float64).ravel()
        self.log_scale = log
        self.refresh()

    def render(self) -> Text:
        return sparkline(self.values, self.size.width, log=self.log_scale)
