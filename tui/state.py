"""`RunState`: events folded into what the screens show. Pure: no Textual, no I/O, an injected clock.

`apply(event)` takes events in seq order from any source (the live queue, a store being
followed, a replay). Series grow in Python lists and become numpy arrays when read, cached
until the next append, so folding stays cheap per event and reading stays cheap per frame.
Values may be NaN or infinite: they are kept as they are; what to draw is the widgets' call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import events as ev
from engine.diagnostics import VERSION as DIAGNOSTICS_VERSION
from engine.diagnostics import Diagnostics, Finding, RangeTest, Settings, ordered

_S = Settings()
VANISHING_FLOOR = _S.vanishing_floor  # a gradient norm below this is vanishing, whatever the other layers do
VANISHING_RATIO = _S.vanishing_ratio  # ... or this far below the largest layer's
EXPLODING_CEILING = _S.exploding_ceiling  # a gradient norm above this (or not finite) is exploding
LEVEL_ORDER = {"fail": 0, "warn": 1, "ok": 2}
MAPS_KEPT = 20  # activation captures kept per layer in memory (older ones stay in the store)


class Series:
    """One scalar over steps: appended per event into lists, read as numpy arrays.

    Reading converts only what was appended since the last read, into arrays that double
    when full, so a redraw costs the same at step 100 as at step 1,000,000.
    """

    __slots__ = ("_new_steps", "_new_values", "_steps", "_values", "_n")

    def __init__(self) -> None:
        self._new_steps: list[int] = []
        self._new_values: list[float] = []
        self._steps = np.empty(256, np.int64)
        self._values = np.empty(256, np.float64)
        self._n = 0

    def append(self, step: int, value: float) -> None:
        self._new_steps.append(step)
        self._new_values.append(value)

    def extend(self, steps: Iterable[int], values: Iterable[float]) -> None:
        self._new_steps.extend(int(s) for s in steps)
        self._new_values.extend(float(v) for v in values)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._new_values:
            k = len(self._new_values)
            if self._n + k > len(self._values):
                size = max(2 * len(self._values), self._n + k)
                self._steps = np.resize(self._steps, size)
                self._values = np.resize(self._values, size)
            self._steps[self._n : self._n + k] = self._new_steps
            self._values[self._n : self._n + k] = self._new_values
            self._n += k
            self._new_steps, self._new_values = [], []
        return self._steps[: self._n], self._values[: self._n]

    @property
    def last(self) -> float | None:
        if self._new_values:
            return self._new_values[-1]
        return float(self._values[self._n - 1]) if self._n else None

    def __len__(self) -> int:
        return self._n + len(self._new_values)


@dataclass
class LayerHistory:
    """LayerStats over time: one row per LayerStats event, one column per layer."""

    steps: list[int] = field(default_factory=list)
    grad: list[np.ndarray] = field(default_factory=list)
    weight: np.ndarray | None = None  # the latest weight norms
    ratio: np.ndarray | None = None  # the latest update/weight ratios

    def matrix(self) -> np.ndarray:
        """[time, layer] gradient norms (NaN-padded if the layer count changed)."""
        if not self.grad:
            return np.empty((0, 0), np.float32)
        width = max(len(g) for g in self.grad)
        out = np.full((len(self.grad), width), np.nan, np.float32)
        for i, g in enumerate(self.grad):
            out[i, : len(g)] = g
        return out


@dataclass
class MapCapture:
    step: int
    layer: str
    maps: np.ndarray  # float32, [C, H, W] (activations) or [out, in, kh, kw] (filters)


def ema_debiased(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's smoothing), NaN-tolerant.

    NaN and infinite values pass through unsmoothed and do not poison what follows.
    """
    out = np.empty(len(values), dtype=np.float64)
    avg, norm = 0.0, 0.0
    for i, v in enumerate(np.asarray(values, dtype=np.float64)):
        if not math.isfinite(v):
            out[i] = v
            continue
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = avg / norm
    return out


class RunState:
    """Everything the screens show about one run."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started: ev.RunStarted | None = None
        self.ended: ev.RunEnded | None = None
        self.last_seq = 0
        self.step = 0
        self.first_wall: float | None = None
        self.last_wall: float | None = None
        self.scalars: dict[str, Series] = {}
        self.epochs: list[ev.Epoch] = []
        self.layers = LayerHistory()
        self.activations: dict[str, list[MapCapture]] = {}
        self.filters: MapCapture | None = None
        self.diagnostics: list[ev.Diagnostic] = []  # as stored by the run
        self.stored: dict[str, Finding] = {}  # the run's latest Diagnostic of each code
        self.checks = Diagnostics()  # the same checks run here: for runs that did not store them
        self.check_here = True
        self.diagnostics_version = 0  # bumped when a check changes state
        self.system: dict[str, Series] = {}
        self.skipped = 0  # events of kinds this version does not show
        self.writer_gone = False  # set by whoever reads the source: no RunEnded will ever come
        self.version = 0  # bumped by every apply: screens redraw when it moved

    # -- folding

    def apply(self, event: ev.Event) -> None:
        self.version += 1
        self.last_seq = max(self.last_seq, event.seq)
        self.step = max(self.step, event.step)
        if self.first_wall is None:
            self.first_wall = event.wall_time
        self.last_wall = event.wall_time
        handler = self._handlers.get(type(event))
        if handler is None:
            self.skipped += 1
        else:
            handler(self, event)
            if self.check_here and handler not in _NOT_CHECKED and self.checks.observe(event):
                self.diagnostics_version += 1

    def apply_many(self, events: Iterable[ev.Event]) -> None:
        for event in events:
            self.apply(event)

    def _run_started(self, e: ev.RunStarted) -> None:
        self.started = e
        self.ended = None  # a resumed run starts again
        # a run whose writer ran these checks (or newer ones) stored their findings: running them again is waste
        if self.checks.start(e):
            self.diagnostics_version += 1
        self.check_here = e.config.get("diagnostics", 0) < DIAGNOSTICS_VERSION

    def _step(self, e: ev.Step) -> None:
        for name, value in e.scalars.items():
            series = self.scalars.get(name)
            if series is None:
                series = self.scalars[name] = Series()
            series.append(e.step, value)

    def _layer_stats(self, e: ev.LayerStats) -> None:
        self.layers.steps.append(e.step)
        self.layers.grad.append(np.frombuffer(e.grad_norm, dtype=np.float32).copy())
        self.layers.weight = np.frombuffer(e.weight_norm, dtype=np.float32).copy()
        self.layers.ratio = np.frombuffer(e.update_ratio, dtype=np.float32).copy()

    def _epoch(self, e: ev.Epoch) -> None:
        self.epochs.append(e)

    def _activation(self, e: ev.Activation) -> None:
        kept = self.activations.setdefault(e.layer, [])
        kept.append(MapCapture(e.step, e.layer, _f16(e.data, e.shape)))
        del kept[:-MAPS_KEPT]

    def _filters(self, e: ev.Filters) -> None:
        self.filters = MapCapture(e.step, e.layer, _f16(e.data, e.shape))

    def _diagnostic(self, e: ev.Diagnostic) -> None:
        self.diagnostics.append(e)
        self.stored[e.code] = Finding.of(e)
        self.diagnostics_version += 1

    def _system(self, e: ev.System) -> None:
        prefix = f"rank{e.rank}/" if e.rank else ""
        for name, value in e.metrics.items():
            self.system.setdefault(prefix + name, Series()).append(e.step, value)

    def _run_ended(self, e: ev.RunEnded) -> None:
        self.ended = e

    _handlers: dict[type, Callable[[RunState, Any], None]] = {
        ev.RunStarted: _run_started,
        ev.Step: _step,
        ev.LayerStats: _layer_stats,
        ev.Epoch: _epoch,
        ev.Activation: _activation,
        ev.Filters: _filters,
        ev.Diagnostic: _diagnostic,
        ev.System: _system,
        ev.RunEnded: _run_ended,
    }

    # -- what the screens read

    @property
    def name(self) -> str:
        return self.started.name if self.started else "(waiting for the run to start)"

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.started.config) if self.started else {}

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.started.layers if self.started else ()

    def status(self) -> str:
        """finished / failed / interrupted from RunEnded; else running, or crashed once the writer is known gone."""
        if self.ended is not None:
            return self.ended.status
        if self.started is None:
            return "waiting"
        return "crashed" if self.writer_gone else "running"

    @property
    def total_steps(self) -> int | None:
        return self.config.get("total_steps")

    @property
    def steps_per_epoch(self) -> int | None:
        return self.config.get("steps_per_epoch")

    @property
    def planned_epochs(self) -> int | None:
        """Epochs the run will take: --epochs, or what --steps comes to."""
        total, per_epoch = self.total_steps, self.steps_per_epoch
        if total and per_epoch:
            return -(-total // per_epoch)
        return self.config.get("epochs")

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.epochs[-1].epoch if self.epochs else 0

    @property
    def progress(self) -> float | None:
        total = self.total_steps
        return min(1.0, self.step / total) if total else None

    @property
    def elapsed(self) -> float:
        """Seconds from the first event to the last one (to now, while running)."""
        if self.first_wall is None:
            return 0.0
        end = self.last_wall if self.ended is not None else max(self.last_wall or 0.0, self.clock())
        return max(0.0, end - self.first_wall)

    def steps_per_second(self) -> float | None:
        """Recent training speed, from the loss series' steps and the Step events' wall times."""
        tput = self.scalars.get("throughput/img_s")
        batch = self.config.get("batch_size")
        if tput is not None and tput.last and batch:
            return tput.last / batch if math.isfinite(tput.last) else None
        if self.elapsed > 0 and self.step:
            return self.step / self.elapsed
        return None

    @property
    def eta(self) -> float | None:
        """Seconds left, at the recent speed; None when unknown or ended."""
        total, rate = self.total_steps, self.steps_per_second()
        if self.ended is not None or not total or not rate:
            return None
        return max(0.0, (total - self.step) / rate)

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        s = self.scalars.get(name)
        return s.arrays() if s is not None else (np.empty(0, np.int64), np.empty(0))

    def epoch_series(self, field_name: str) -> tuple[np.ndarray, np.ndarray]:
        """An Epoch field over the steps at which the epochs ended (None as NaN)."""
        steps = np.array([e.step for e in self.epochs], dtype=np.int64)
        values = np.array([_nan(getattr(e, field_name)) for e in self.epochs], dtype=np.float64)
        return steps, values

    def latest(self, name: str) -> float | None:
        s = self.scalars.get(name)
        return s.last if s is not None else None

    def layer_flags(self) -> dict[str, str]:
        """Layers whose latest gradient norm is vanishing or exploding: name -> 'vanishing'|'exploding'."""
        if not self.layers.grad:
            return {}
        grad = self.layers.grad[-1].astype(np.float64)
        finite = grad[np.isfinite(grad) & (grad <= EXPLODING_CEILING)]  # the largest healthy norm is the yardstick
        top = float(finite.max()) if finite.size else 0.0
        flags = {}
        for name, g in zip(self.layer_names, grad, strict=False):
            if not math.isfinite(g) or g > EXPLODING_CEILING:
                flags[name] = "exploding"
            elif g < VANISHING_FLOOR or (top > 0 and g < VANISHING_RATIO * top):
                flags[name] = "vanishing"
        return flags

    def latest_maps(self, layer: str, step: int | None = None) -> MapCapture | None:
        """The capture of `layer` at or before `step` (the latest if None) among those kept."""
        kept = [m for m in self.activations.get(layer, []) if step is None or m.step <= step]
        return kept[-1] if kept else None

    def check_states(self) -> dict[str, Finding]:
        """The latest finding of each check: the run's own where it stored one, else what the checks here found."""
        return self.checks.states | self.stored

    def check_rows(self) -> list[tuple[str, str, Finding | None]]:
        """(code, title, latest finding or None while waiting) for every check, then codes only the run has."""
        return ordered(self.check_states(), self.checks.running())

    def diagnostic_history(self) -> list[Finding]:
        """Every state change, in step order: the run's stored ones, and the local ones of codes it never stored."""
        local = [f for f in self.checks.history if f.code not in self.stored]
        stored = [Finding.of(d) for d in self.diagnostics]
        return sorted(stored + local, key=lambda f: f.step)

    def worst_diagnostics(self, n: int = 3) -> list[Finding]:
        """The latest state of each check, fails first, then warnings, then the latest oks."""
        states = list(self.check_states().values())
        return sorted(states, key=lambda f: (LEVEL_ORDER.get(f.level, 3), -f.step))[:n]

    @property
    def is_range_test(self) -> bool:
        return bool(self.config.get("range_test"))

    def range_test(self) -> RangeTest:
        """The lr-find sweep so far: learning rates and (smoothed) losses, matched by step."""

        return RangeTest.from_series(*self.series("lr"), *self.series("train/loss"))


_NOT_CHECKED = (RunState._diagnostic, RunState._run_started)  # the run's own findings; started in its handler


def _f16(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    values = np.frombuffer(data, dtype=np.float16).astype(np.float32)
    expected = int(np.prod(shape)) if shape else 0
    if values.size != expected:  # a damaged or mismatched capture: show nothing rather than raise
        return np.zeros((0,) * max(1, len(shape)), np.float32)
    return values.reshape(shape)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
