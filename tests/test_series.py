"""Bounded series: buckets that keep every extreme, a running EMA equal to one computed over the raw points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tui.series import BUCKETS, TAIL, Series, ema_debiased, ema_points


def raw_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = 2.3 * np.exp(-np.arange(n) / (n / 3)) + 0.1 * rng.random(n)
    values[[7, 5000, 5001, n - 3]] = [math.nan, math.inf, math.nan, -math.inf]
    return np.arange(n, dtype=np.int64), values


def check_buckets(series: Series, steps: np.ndarray, values: np.ndarray, weight: float) -> None:
    """Each bucket is exactly its raw points' min, max, last, count, NaN count, and the EMA at its last finite point."""
    b = series.buckets()
    assert len(b) <= BUCKETS and b.count.sum() == len(steps) == len(series)
    ends = np.searchsorted(steps, b.step, side="right")
    starts = np.concatenate([[0], ends[:-1]])
    ema, _, _ = ema_points(values, weight)
    for i in range(len(b)):
        chunk, smooth = values[starts[i] : ends[i]], ema[starts[i] : ends[i]]
        finite_smooth = smooth[~np.isnan(smooth)]
        assert b.count[i] == len(chunk) and b.nan[i] == np.isnan(chunk).sum()
        assert b.last[i] == chunk[-1] or (math.isnan(b.last[i]) and math.isnan(chunk[-1]))
        assert b.min[i] == np.nanmin(chunk) and b.max[i] == np.nanmax(chunk)
        if len(finite_smooth):
            assert b.smooth[i] == pytest.approx(finite_smooth[-1], rel=1e-9)
        else:
            assert math.isnan(b.smooth[i])


@pytest.mark.parametrize("weight", [0.0, 0.6, 0.99])
def test_appended_points_become_exact_buckets(weight):
    steps, values = raw_points(50_000)
    series = Series(weight)
    for s, v in zip(steps.tolist(), values.tolist(), strict=True):
        series.append(s, v)
    check_buckets(series, steps, values, weight)
    assert series.last == values[-1] and not series.raw


def test_a_bulk_extend_equals_appending_one_by_one():
    steps, values = raw_points(30_000)
    one, bulk = Series(), Series()
    for s, v in zip(steps.tolist(), values.tolist(), strict=True):
        one.append(s, v)
    bulk.extend(steps[:10_000], values[:10_000])
    for s, v in zip(steps[10_000:].tolist(), values[10_000:].tolist(), strict=True):
        bulk.append(s, v)
    a, b = one.buckets(), bulk.buckets()
    for field in ("step", "min", "max", "last", "smooth", "count", "nan"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-12)


def test_memory_stays_flat_however_long_the_series():
    series = Series()
    series.extend(np.arange(2_000_000), np.ones(2_000_000))
    assert len(series.buckets()) <= BUCKETS and len(series) == 2_000_000
    sizes = {k: v.nbytes for k, v in series._b.items()}
    assert sum(sizes.values()) < 100_000  # about 1,000 buckets of 8 numbers, not 2M points


def test_short_series_are_their_raw_points_and_can_be_smoothed_again_alone():
    series = Series(0.5)
    for i in range(100):
        series.append(i, float(i % 7))
    assert series.raw
    series.resmooth(0.9)
    np.testing.assert_allclose(series.buckets().smooth, ema_debiased(np.arange(100) % 7.0, 0.9))


def test_smoothing_again_takes_older_points_from_the_store_and_the_newest_from_its_own_tail():
    steps, values = raw_points(20_000)
    series = Series(0.6)
    series.extend(steps, values)
    with pytest.raises(ValueError):
        series.resmooth(0.9)  # bucketed: it needs the raw points
    lagging = 20_000 - TAIL // 2  # the store has not committed the newest points yet
    series.resmooth(0.9, steps[:lagging], values[:lagging])
    check_buckets(series, steps, values, 0.9)


def test_the_vectorised_ema_equals_the_loop_and_carries_over():
    rng = np.random.default_rng(1)
    x = rng.normal(size=10_000)
    x[::97] = math.nan
    for weight in (0.1, 0.6, 0.99):
        avg = norm = 0.0
        loop = []
        for v in x:
            if math.isfinite(v):
                avg, norm = weight * avg + (1 - weight) * v, weight * norm + (1 - weight)
                loop.append(avg / norm)
            else:
                loop.append(math.nan)
        first, a, n = ema_points(x[:3333], weight)
        second, _, _ = ema_points(x[3333:], weight, a, n)
        np.testing.assert_allclose(np.concatenate([first, second]), loop, rtol=1e-9)


def test_steps_that_go_back_join_the_newest_bucket():
    """A resumed run writes some step numbers again: the buckets stay in order and every point is counted."""
    series = Series()
    series.extend(np.arange(3000), np.ones(3000))
    series.extend(np.arange(2500, 4000), np.full(1500, 2.0))
    for s in range(3900, 3950):
        series.append(s, 3.0)
    b = series.buckets()
    assert (np.diff(b.step) > 0).all() and b.count.sum() == 4550 and len(b) <= BUCKETS
    assert b.max.max() == 3.0 and b.last[-1] == 3.0


def test_the_engines_smoother_is_the_charts_ema():
    """One debiased EMA: the lr-find check's, one value at a time, equals the charts', over arrays, NaN and
    infinities included (they pass through and leave the average alone)."""
    from engine.diagnostics import Smoother

    values = np.sin(np.arange(300) / 7.0) + np.arange(300) / 100
    values[[5, 50, 51, 200]] = [np.nan, np.inf, -np.inf, np.nan]
    for weight in (0.0, 0.6, 0.9, 0.99):
        smoother = Smoother(weight)
        streamed = np.array([smoother.add(float(v)) for v in values])
        np.testing.assert_allclose(streamed, ema_debiased(values, weight), rtol=1e-12, equal_nan=True)
