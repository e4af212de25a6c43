"""Bounded series for the screens: any number of points kept as at most `BUCKETS` buckets, with a running EMA.

A chart is at most a few hundred columns wide, so a series need not keep every point: it
keeps buckets of equal step width (min, max, last, and the smoothed value at the bucket's
end), and doubles the width when the buckets run out. Memory and the cost of reading stay
flat whether a run has a thousand steps or a million. Points are appended to a short list
and folded in vectorised, a few thousand at a time.

The smoothing is TensorBoard's: an exponential moving average with bias correction, where a
NaN or infinite value passes through unsmoothed and does not poison what follows. It runs as
points arrive; changing its weight needs the raw points again (`Series.resmooth`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BUCKETS = 1024  # per series: four per column of the widest chart a terminal is likely to show
# points appended before they are folded into buckets (a redraw folds what is pending, too): folding is numpy, which
# lets go of the GIL at each call, and a busy reader thread then holds it for a switch interval: fold seldom, in bulk
PENDING = 65_536
TAIL = 4096  # the newest raw points kept, for smoothing again while the store lags behind (it commits every 250 ms)
BLOCK = 4096  # longest block of the vectorised EMA
MAX_EXPONENT = 230  # a sub-chunk of the vectorised EMA keeps weight**length above 1e-230
EMA_CLIP = 1e70  # |values| beyond this are clipped inside the EMA so the rescaled sums cannot overflow


@dataclass(frozen=True)
class Buckets:
    """A series as the charts read it: one entry per bucket, in step order."""

    step: np.ndarray  # the bucket's last step (its largest, where a resumed run went back)
    min: np.ndarray  # NaN-ignoring; NaN when the bucket holds only NaN
    max: np.ndarray
    last: np.ndarray  # the bucket's last value as recorded
    smooth: np.ndarray  # the EMA after the bucket's last finite value; NaN when it holds none
    count: np.ndarray
    nan: np.ndarray  # NaN values in the bucket

    def __len__(self) -> int:
        return len(self.step)


def ema_points(
    values: np.ndarray, weight: float, avg: float = 0.0, norm: float = 0.0
) -> tuple[np.ndarray, float, float]:
    """The debiased EMA at every point (NaN where the value is not finite), and the (avg, norm) to carry on with.

    avg_t = w avg_{t-1} + (1 - w) x_t over the finite values only, shown as avg_t / norm_t (norm likewise with
    x = 1). Solved in closed form, vectorised: the finite values are cut into blocks short enough that
    w**length does not underflow, each block is solved from zero at once, then each block adds what the
    blocks before it carried in.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    x = np.clip(values[finite], -EMA_CLIP, EMA_CLIP)
    if not len(x):
        return out, avg, norm
    if weight <= 0.0:
        out[finite] = x
        return out, float(x[-1]), 1.0
    length = max(16, min(BLOCK, int(MAX_EXPONENT / -math.log10(weight))))
    blocks = -(-len(x) // length)
    padded = np.zeros(blocks * length)
    padded[: len(x)] = x
    decay = weight ** np.arange(1, length + 1, dtype=np.float64)  # w^k: what is left of the state after k values
    local_a = decay * np.cumsum((1 - weight) * padded.reshape(blocks, length) / decay, axis=1)
    local_n = decay * np.cumsum((1 - weight) / decay)
    carry_a, carry_n = np.empty(blocks), np.empty(blocks)  # the state each block starts from
    w_block = weight**length
    for b in range(blocks):
        carry_a[b], carry_n[b] = avg, norm
        avg, norm = local_a[b, -1] + w_block * avg, local_n[-1] + w_block * norm
    a = (local_a + decay * carry_a[:, None]).ravel()[: len(x)]
    n = (local_n + decay * carry_n[:, None]).ravel()[: len(x)]
    out[finite] = a / n
    last = (len(x) - 1) % length + 1  # values in the last block: its state at the end is the one to carry on
    return (
        out,
        float(local_a[-1, last - 1] + decay[last - 1] * carry_a[-1]),
        float(local_n[last - 1] + decay[last - 1] * carry_n[-1]),
    )


def ema_debiased(values: np.ndarray, weight: float) -> np.ndarray:
    """The debiased EMA of `values`; NaN and infinite values pass through as they are."""
    values = np.asarray(values, dtype=np.float64)
    out, _, _ = ema_points(values, weight)
    bad = ~np.isfinite(values)
    out[bad] = values[bad]
    return out


class Series:
    """One scalar over steps, bounded: `append` per point, `buckets()` when drawing."""

    __slots__ = (
        "weight",
        "_steps",
        "_values",
        "_b",
        "_origin",
        "_width",
        "_avg",
        "_norm",
        "_n",
        "_last",
        "_raw",
        "_tail",
    )

    def __init__(self, weight: float = 0.6) -> None:
        self._reset(weight)

    def _reset(self, weight: float) -> None:
        self.weight = min(weight, 0.999)  # the EMA's weight, as TensorBoard's smoothing slider
        self._steps: list[int] = []
        self._values: list[float] = []
        self._b = _empty()  # closed buckets, as a dict of arrays (ids, step, min, max, last, smooth, count, nan)
        self._origin: int | None = None  # bucket i holds steps origin + [i*width, (i+1)*width)
        self._width = 1
        self._avg = self._norm = 0.0
        self._n = 0  # points folded into buckets
        self._last: float | None = None
        self._raw = True  # every bucket still holds a single point: the buckets are the raw series
        self._tail = (np.empty(0, np.int64), np.empty(0))  # the newest raw points, for a store that lags behind

    def append(self, step: int, value: float) -> None:
        self._steps.append(step)
        self._values.append(value)
        if len(self._values) >= PENDING:
            self._fold()

    def extend(self, steps: np.ndarray, values: np.ndarray) -> None:
        """Many points at once (a run opened from its store)."""
        self._fold()
        self._fold_arrays(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))

    @property
    def last(self) -> float | None:
        return self._values[-1] if self._values else self._last

    def __len__(self) -> int:
        return self._n + len(self._values)

    def buckets(self) -> Buckets:
        self._fold()
        b = self._b
        return Buckets(b["step"], b["min"], b["max"], b["last"], b["smooth"], b["count"], b["nan"])

    @property
    def raw(self) -> bool:
        """Whether the buckets still hold one point each (so they are the raw series)."""
        self._fold()
        return self._raw

    def resmooth(self, weight: float, steps: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
        """Smooth with a new weight. Needs the raw points (`steps`, `values`, as the store has them) unless `raw`.

        The store may lag behind what was appended (a live run commits every 250 ms): the newest points
        are taken from the series' own tail of raw points.
        """
        self._fold()
        if steps is None or values is None:
            if not self._raw:
                raise ValueError("the series was bucketed: its raw points are needed to smooth it again")
            steps, values = self._b["step"], self._b["last"]
        else:
            tail_steps, tail_values = self._tail
            older = np.asarray(steps) < tail_steps[0] if len(tail_steps) else np.ones(len(steps), bool)
            steps = np.concatenate([np.asarray(steps, dtype=np.int64)[older], tail_steps])
            values = np.concatenate([np.asarray(values, dtype=np.float64)[older], tail_values])
        steps, values = np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)
        self._reset(weight)
        self._fold_arrays(steps, values)

    # -- internals

    def _fold(self) -> None:
        if self._values:
            steps, values = np.array(self._steps, dtype=np.int64), np.array(self._values, dtype=np.float64)
            self._steps, self._values = [], []
            self._fold_arrays(steps, values)

    def _fold_arrays(self, steps: np.ndarray, values: np.ndarray) -> None:
        if not len(values):
            return
        smooth, self._avg, self._norm = ema_points(values, self.weight, self._avg, self._norm)
        self._tail = (
            np.concatenate([self._tail[0], steps[-TAIL:]])[-TAIL:],
            np.concatenate([self._tail[1], values[-TAIL:]])[-TAIL:],
        )
        self._last = float(values[-1])
        self._n += len(values)
        if self._origin is None:
            self._origin = int(steps[0])
        rel = steps - self._origin
        while int(rel.max()) >= BUCKETS * self._width:  # widen before bucketing: one pass at the final width
            self._width *= 2
            self._b = _merge(self._b, self._b["ids"] // 2)
        floor = int(self._b["ids"][-1]) if len(self._b["ids"]) else 0  # no point goes before the last bucket
        new = _reduce(steps, values, smooth, rel, self._width, floor)
        both = {k: np.concatenate([self._b[k], new[k]]) for k in new}
        self._b = _merge(both, both["ids"])
        self._raw = self._raw and len(self._b["ids"]) == self._n


def _reduce(
    steps: np.ndarray, values: np.ndarray, smooth: np.ndarray, rel: np.ndarray, width: int, floor: int
) -> dict[str, np.ndarray]:
    """Points (steps relative to the origin: `rel`) reduced to one entry per bucket of `width` steps, from `floor` on.

    Steps in order (the usual case) find their buckets by binary search; otherwise (a resumed run going back)
    each point's bucket is computed and kept from going backwards.
    """
    n = len(rel)
    sorted_path = n == 1 or (rel[0] >= floor * width and bool((rel[1:] >= rel[:-1]).all()))
    if sorted_path:
        first, last = int(rel[0]) // width, int(rel[-1]) // width
        edges = width * np.arange(first + 1, last + 1, dtype=np.int64)
        starts = np.unique(np.concatenate([[0], np.searchsorted(rel, edges, side="left")]))
        starts = starts[starts < n]
        ids = rel[starts] // width
    else:
        point_ids = np.maximum.accumulate(np.maximum(rel // width, floor))
        starts = np.flatnonzero(np.diff(point_ids, prepend=point_ids[0] - 1))
        ids = point_ids[starts]
    ends = np.append(starts[1:], n) - 1
    finite = np.isfinite(values)
    isnan = np.isnan(values)
    if finite.all():
        last_smooth = smooth[ends]
    else:
        has_smooth = np.where(np.isnan(smooth), -1, np.arange(n))
        picked = np.maximum.reduceat(has_smooth, starts)  # the last point with a smoothed value, per bucket
        last_smooth = np.where(picked >= 0, smooth[np.maximum(picked, 0)], np.nan)
    with np.errstate(invalid="ignore"):
        return {
            "ids": ids,
            "step": np.maximum.reduceat(steps, starts) if sorted_path is False else steps[ends],
            "min": np.fmin.reduceat(values, starts),
            "max": np.fmax.reduceat(values, starts),
            "last": values[ends],
            "smooth": last_smooth,
            "count": np.diff(np.append(starts, n)),
            "nan": np.add.reduceat(isnan, starts).astype(np.int64) if isnan.any() else np.zeros(len(starts), np.int64),
        }


def _empty() -> dict[str, np.ndarray]:
    f = np.empty(0, np.float64)
    i = np.empty(0, np.int64)
    return {"ids": i, "step": i, "min": f, "max": f, "last": f, "smooth": f, "count": i, "nan": i}


def _merge(b: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """Entries with equal (consecutive) ids combined into one bucket each."""
    if not len(ids):
        return b
    starts = np.flatnonzero(np.diff(ids, prepend=ids[0] - 1))
    if len(starts) == len(ids):
        return b | {"ids": ids}
    ends = np.append(starts[1:], len(ids)) - 1
    has_smooth = np.where(np.isnan(b["smooth"]), -1, np.arange(len(ids)))
    last_smooth = np.maximum.reduceat(has_smooth, starts)  # the last entry with a smoothed value, per bucket
    with np.errstate(invalid="ignore"):
        return {
            "ids": ids[starts],
            "step": np.maximum.reduceat(b["step"], starts),  # the largest: buckets stay in order if steps went back
            "min": np.fmin.reduceat(b["min"], starts),
            "max": np.fmax.reduceat(b["max"], starts),
            "last": b["last"][ends],
            "smooth": np.where(last_smooth >= 0, b["smooth"][np.maximum(last_smooth, 0)], np.nan),
            "count": np.add.reduceat(b["count"], starts),
            "nan": np.add.reduceat(b["nan"], starts),
        }
