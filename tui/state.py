"""`RunState`: events folded into what the screens show. Pure: no Textual, no I/O, an injected clock.

`apply(event)` takes events in seq order from any source (the live queue, a store being
followed, a replay); a run opened from its store starts from a state built by
`tui.snapshot.load` and folds only what comes after. Everything kept is bounded, so memory
and a redraw cost the same at step 1,000 and at step 1,000,000: scalar series are buckets
with a running EMA (`tui.series`), per-layer statistics `LAYER_WINDOW` probes spread over the
whole run (`LayerHistory`), activation maps the last `MAPS_KEPT` looked at (the others are read back from the
store through `load_maps`). Values may be NaN or infinite: they are kept as they are; what
to draw is the widgets' call.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import events as ev
from engine.diagnostics import VERSION as DIAGNOSTICS_VERSION
from engine.diagnostics import Diagnostics, Finding, RangeTest, number, ordered
from tui.series import Buckets, Series, ema_debiased

__all__ = ["Buckets", "LayerHistory", "MapCapture", "RunState", "Series", "ema_debiased"]

LEVEL_ORDER = {"fail": 0, "warn": 1, "ok": 2}
MAPS_KEPT = 20  # activation captures kept in memory; the others are read back from the store when shown
LAYER_WINDOW = 512  # per-layer probes kept: the heatmap shows the newest, one per column, and no screen is wider
DEFAULT_SMOOTHING = 0.6  # EMA weight, as TensorBoard's slider
SILENT_INTERVALS = 3  # a running run quiet for this many of its recent gaps between events is said to be silent
SILENT_MIN_S = 10.0  # ... and for at least this long: a fast run's short gaps are not its logging interval


def _f32(values: Any) -> np.ndarray:
    return np.frombuffer(values, dtype=np.float32).copy()


def layer_stride(count: int) -> int:
    """Every how many LayerStats the history keeps one, after `count` of them: the least power of two that keeps
    at most LAYER_WINDOW. It depends on the count alone, so a run opened from its store keeps the rows it would
    have kept followed event by event."""
    stride = 1
    while -(-count // stride) > LAYER_WINDOW:
        stride *= 2
    return stride


class LayerHistory:
    """LayerStats over the whole run, bounded: the gradient norms of every `stride`-th event (at most LAYER_WINDOW
    rows, the stride doubling as the run grows) and of the newest one; the latest weight norms and ratios."""

    def __init__(self) -> None:
        self.stride = 1
        self.count = 0  # LayerStats seen in the whole run
        self._kept: list[tuple[int, int, np.ndarray]] = []  # (index among the LayerStats, step, gradient norms)
        self._latest: tuple[int, int, np.ndarray] | None = None
        self.weight: np.ndarray | None = None  # the latest weight norms
        self.ratio: np.ndarray | None = None  # the latest update/weight ratios
        self._ratios: list[tuple[int, np.ndarray]] = []  # (step, ratios) of every `_ratio_stride`-th, at most WINDOW
        self._ratio_count, self._ratio_stride = 0, 1

    def add(self, step: int, grad: np.ndarray, weight: np.ndarray, ratio: np.ndarray) -> None:
        """One LayerStats: its gradient norms (every probed step), its weight norms and update ratios when it has
        them (every `update_every` steps: an event without a field keeps the last one shown)."""
        index, self.count = self.count, self.count + 1
        if grad.size:
            self._latest = (index, step, grad)
            if index % self.stride == 0:
                self._kept.append(self._latest)
        stride = layer_stride(self.count)
        if stride != self.stride:
            self.stride = stride
            self._kept = [row for row in self._kept if row[0] % stride == 0]
        if weight.size:
            self.weight = weight
        if ratio.size:
            self._add_ratio(step, ratio)

    def _add_ratio(self, step: int, ratio: np.ndarray) -> None:
        self.ratio = ratio
        if self._ratio_count % self._ratio_stride == 0:
            self._ratios.append((step, ratio))
        self._ratio_count += 1
        if len(self._ratios) > LAYER_WINDOW:
            self._ratios, self._ratio_stride = self._ratios[::2], 2 * self._ratio_stride

    def load(self, count: int, picked: list[ev.LayerStats], newest: list[ev.LayerStats]) -> None:
        """Take the history as read from a store: `count` LayerStats in all, those at every `layer_stride(count)`-th
        position (`picked`), and the newest few (for the latest gradient norms, weight norms and ratios)."""
        self.count, self.stride = count, layer_stride(count)
        self._kept = [(i * self.stride, e.step, _f32(e.grad_norm)) for i, e in enumerate(picked) if len(e.grad_norm)]
        self._latest = None
        for e in picked:  # the ratios of the picked ones that have them: the history a compare reads at a step
            if len(e.update_ratio):
                self._add_ratio(e.step, _f32(e.update_ratio))
        self.ratio = None
        for back, e in enumerate(reversed(newest)):
            if self._latest is None and len(e.grad_norm):
                self._latest = (count - 1 - back, e.step, _f32(e.grad_norm))
            if self.weight is None and len(e.weight_norm):
                self.weight = _f32(e.weight_norm)
            if self.ratio is None and len(e.update_ratio):
                self.ratio = _f32(e.update_ratio)

    def _rows(self) -> list[tuple[int, int, np.ndarray]]:
        rows = list(self._kept)
        if self._latest is not None and (not rows or rows[-1][0] != self._latest[0]):
            rows.append(self._latest)
        return rows

    @property
    def steps(self) -> list[int]:
        return [step for _, step, _ in self._rows()]

    @property
    def latest(self) -> np.ndarray | None:
        """The newest gradient norms, per layer."""
        return None if self._latest is None else self._latest[2]

    def at(self, step: int | None, ratios: bool = False) -> np.ndarray | None:
        """The gradient norms (or update/weight ratios) kept at or before `step` (the latest if None), per layer."""
        if step is None:
            return self.ratio if ratios else self.latest
        rows = self._ratios if ratios else [(s, g) for _, s, g in self._rows()]
        before = [row for s, row in rows if s <= step]
        return before[-1] if before else None

    def matrix(self) -> np.ndarray:
        """[time, layer] gradient norms of the kept rows (NaN-padded if the layer count changed)."""
        rows = self._rows()
        if not rows:
            return np.empty((0, 0), np.float32)
        width = max(len(g) for _, _, g in rows)
        out = np.full((len(rows), width), np.nan, np.float32)
        for i, (_, _, g) in enumerate(rows):
            out[i, : len(g)] = g
        return out


@dataclass
class MapCapture:
    step: int
    layer: str
    maps: np.ndarray  # float32, [images, C, H, W] (activations) or [out, in, kh, kw] (filters)
    channels: int = 0  # the layer's own channel count (maps may hold the first few only)
    size: tuple[int, ...] = ()  # the layer's own map size (maps may be pooled down from it)
    dead: np.ndarray | None = None  # bool [channels]: zero on every image after the layer's ReLU (None: unknown)
    block: bool = False  # a block's output (residual block, Inception module), not a conv's


class RunState:
    """Everything the screens show about one run."""

    def __init__(self, clock: Callable[[], float] = time.time, smoothing: float = DEFAULT_SMOOTHING) -> None:
        self.clock = clock
        self.smoothing = smoothing  # the EMA weight every series keeps its smoothed values at
        self.started: ev.RunStarted | None = None
        self.ended: ev.RunEnded | None = None
        self.last_seq = 0
        self.step = 0
        self.first_wall: float | None = None
        self.last_wall: float | None = None
        self.gaps: deque[float] = deque(maxlen=8)  # the last gaps between events (its logging interval): for silence
        self.scalars: dict[str, Series] = {}
        self.walls = Series(0.0)  # each Step's wall time by its step, bounded: a run drawn against the clock
        self.epochs: list[ev.Epoch] = []
        self.layers = LayerHistory()
        self.captures: dict[str, list[int]] = {}  # layer -> steps of its Activation captures (maps or not)
        self.capture_steps: list[int] = []  # every step with a capture, sorted
        self.maps: OrderedDict[tuple[str, int], MapCapture] = OrderedDict()  # the last MAPS_KEPT maps seen
        # reads a capture's maps back from the store: set by whoever owns the store (the state does no I/O)
        self.load_maps: Callable[[str, int], MapCapture | None] | None = None
        self.filters: MapCapture | None = None
        self.captured: OrderedDict[int, ev.Capture] = OrderedDict()  # the last MAPS_KEPT Capture events seen
        self.load_capture: Callable[[int], ev.Capture | None] | None = None  # reads an older one back from the store
        self.capture_order: list[str] = []  # the layers of the latest capture, in the model's order
        self.visualized: dict[str, ev.Visualized] = {}  # the latest `mirante visualize` of each layer
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
        if self.last_wall is not None and event.wall_time - self.last_wall > 0.05:  # the events of one log share it
            self.gaps.append(event.wall_time - self.last_wall)
        self.last_wall = event.wall_time
        handler = self._handlers.get(type(event))
        if handler is None:
            self.skipped += 1
        else:
            handler(self, event)
            # the checks run here only for a run that did not store them; their facts learn from every run
            if handler not in _NOT_CHECKED and self.checks.observe(event, check=self.check_here):
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
        self.check_here = (number(e.config.get("diagnostics")) or 0) < DIAGNOSTICS_VERSION

    def _step(self, e: ev.Step) -> None:
        self.walls.append(e.step, e.wall_time)
        for name, value in e.scalars.items():
            series = self.scalars.get(name)
            if series is None:
                series = self.scalars[name] = Series(self.smoothing)
            series.append(e.step, value)

    def _layer_stats(self, e: ev.LayerStats) -> None:
        self.layers.add(e.step, _f32(e.grad_norm), _f32(e.weight_norm), _f32(e.update_ratio))

    def _epoch(self, e: ev.Epoch) -> None:
        self.epochs.append(e)

    def _activation(self, e: ev.Activation | ev.Maps) -> None:
        self.note_capture(e.layer, e.step)
        self.keep_maps(maps_of(e))

    def _capture(self, e: ev.Capture) -> None:
        self.keep_capture(e)
        self.capture_order = list(e.layers)
        i = bisect.bisect_left(self.capture_steps, e.step)
        if i == len(self.capture_steps) or self.capture_steps[i] != e.step:
            self.capture_steps.insert(i, e.step)

    def _visualized(self, e: ev.Visualized) -> None:
        self.visualized[e.layer] = e

    def keep_capture(self, e: ev.Capture) -> None:
        self.captured[e.step] = e
        self.captured.move_to_end(e.step)
        while len(self.captured) > MAPS_KEPT:
            self.captured.popitem(last=False)

    def note_capture(self, layer: str, step: int) -> None:
        """A capture of `layer` at `step` exists (its maps are in the store, and maybe here)."""
        steps = self.captures.setdefault(layer, [])
        if not steps or step > steps[-1]:
            steps.append(step)
        elif step not in steps:
            bisect.insort(steps, step)
        i = bisect.bisect_left(self.capture_steps, step)
        if i == len(self.capture_steps) or self.capture_steps[i] != step:
            self.capture_steps.insert(i, step)

    def keep_maps(self, capture: MapCapture) -> None:
        key = (capture.layer, capture.step)
        self.maps[key] = capture
        self.maps.move_to_end(key)
        while len(self.maps) > MAPS_KEPT:
            self.maps.popitem(last=False)

    def _filters(self, e: ev.Filters) -> None:
        self.filters = maps_of(e)

    def _diagnostic(self, e: ev.Diagnostic) -> None:
        self.diagnostics.append(e)
        self.stored[e.code] = Finding.of(e)
        self.diagnostics_version += 1

    def _system(self, e: ev.System) -> None:
        prefix = f"rank{e.rank}/" if e.rank else ""
        for name, value in e.metrics.items():
            series = self.system.get(prefix + name)
            if series is None:
                series = self.system[prefix + name] = Series(self.smoothing)
            series.append(e.step, value)

    def _run_ended(self, e: ev.RunEnded) -> None:
        self.ended = e

    _handlers: dict[type, Callable[[RunState, Any], None]] = {
        ev.RunStarted: _run_started,
        ev.Step: _step,
        ev.LayerStats: _layer_stats,
        ev.Epoch: _epoch,
        ev.Activation: _activation,
        ev.Maps: _activation,
        ev.Capture: _capture,
        ev.Visualized: _visualized,
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

    def config_number(self, key: str) -> float | None:
        """A number of the run's config; None when missing or not a finite number (a store may hold anything)."""
        return number(self.config.get(key))

    @property
    def total_steps(self) -> int | None:
        return _whole(self.config_number("total_steps"))

    @property
    def steps_per_epoch(self) -> int | None:
        return _whole(self.config_number("steps_per_epoch"))

    @property
    def world_size(self) -> int:
        """Processes that trained the run (torchrun's world size); 1 when not said."""
        return _whole(self.config_number("world_size")) or 1

    @property
    def planned_epochs(self) -> int | None:
        """Epochs the run will take: --epochs, or what --steps comes to."""
        total, per_epoch = self.total_steps, self.steps_per_epoch
        if total and per_epoch:
            return -(-total // per_epoch)
        return _whole(self.config_number("epochs"))

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.epochs[-1].epoch if self.epochs else 0

    @property
    def current_epoch(self) -> int:
        """The epoch being trained, counted from 1 as the headless output counts it ("epoch 1/3" during the first);
        once the run has ended, the epochs it completed."""
        done = self.epoch
        if self.ended is not None or self.started is None:
            return done
        per_epoch, planned = self.steps_per_epoch, self.planned_epochs
        now = self.step // per_epoch + 1 if per_epoch else done + 1
        return max(done, min(now, planned) if planned else now)

    def best_epoch(self, field_name: str, lowest: bool = False) -> ev.Epoch | None:
        """The epoch with the best finite value of an Epoch field (the highest; the lowest for a loss), or None."""
        scored = [e for e in self.epochs if _finite(getattr(e, field_name))]
        if not scored:
            return None
        pick = min if lowest else max
        return pick(scored, key=lambda e: getattr(e, field_name))

    def epoch_durations(self) -> list[float | None]:
        """How long each epoch took, by the run's own clock (the wall times its events carry)."""
        before = [self.first_wall] + [e.wall_time for e in self.epochs[:-1]]
        return [None if b is None else max(0.0, e.wall_time - b) for b, e in zip(before, self.epochs, strict=True)]

    @property
    def epoch_seconds(self) -> float | None:
        """How long the last epoch took, by the run's own clock."""
        if not self.epochs:
            return None
        before = self.epochs[-2].wall_time if len(self.epochs) > 1 else self.first_wall
        return None if before is None else max(0.0, self.epochs[-1].wall_time - before)

    @property
    def progress(self) -> float | None:
        total = self.total_steps
        return min(1.0, self.step / total) if total else None

    @property
    def live(self) -> bool:
        """The run may still send events: started, not ended, its writer not known gone."""
        return self.started is not None and self.ended is None and not self.writer_gone

    @property
    def elapsed(self) -> float:
        """Seconds from the first event to the last one (to now, by `clock`, while the run is live)."""
        if self.first_wall is None:
            return 0.0
        end = max(self.last_wall or 0.0, self.clock()) if self.live else self.last_wall or self.first_wall
        return max(0.0, end - self.first_wall)

    @property
    def silent_for(self) -> float | None:
        """Seconds since the last event, when a live run has been quiet for several of its logging intervals."""
        if not self.live or self.last_wall is None:
            return None
        quiet = self.clock() - self.last_wall
        return quiet if quiet > max(SILENT_MIN_S, SILENT_INTERVALS * max(self.gaps, default=0.0)) else None

    def steps_per_second(self) -> float | None:
        """Recent training speed, from the loss series' steps and the Step events' wall times."""
        tput = self.scalars.get("throughput/img_s")
        batch = self.config_number("batch_size")
        if tput is not None and tput.last and batch:
            return tput.last / batch if math.isfinite(tput.last) else None
        if self.elapsed > 0 and self.step:
            return self.step / self.elapsed
        return None

    @property
    def eta(self) -> float | None:
        """Seconds left, at the recent speed; None when unknown or ended."""
        total, rate = self.total_steps, self.steps_per_second()
        if not self.live or not total or not rate:
            return None
        return max(0.0, (total - self.step) / rate)

    def series(self, name: str) -> Buckets:
        """A Step scalar as the charts draw it (bucketed, with its EMA at `smoothing`); empty if never seen."""
        s = self.scalars.get(name)
        return (s if s is not None else Series(self.smoothing)).buckets()

    def set_smoothing(self, weight: float, raw: Callable[[str], tuple[np.ndarray, np.ndarray]] | None) -> list[str]:
        """Smooth every scalar series with a new EMA weight; `raw(name)` gives a series' points from the store.

        Series still small enough to be held whole need no store. Returns the names that could not be
        smoothed again (no store, and bucketed): they keep their old weight.
        """
        self.smoothing = weight
        kept = []
        for name, series in self.scalars.items():
            if series.raw:
                series.resmooth(weight)
            elif raw is not None:
                series.resmooth(weight, *raw(name))
            else:
                kept.append(name)
        return kept

    def step_clock(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, wall times) of the Steps, bucketed: which step the run reached when, for a wall-time axis."""
        walls = self.walls.buckets()
        return walls.step, walls.last

    def epoch_series(self, field_name: str) -> tuple[np.ndarray, np.ndarray]:
        """An Epoch field over the steps at which the epochs ended (None as NaN)."""
        steps = np.array([e.step for e in self.epochs], dtype=np.int64)
        values = np.array([_nan(getattr(e, field_name)) for e in self.epochs], dtype=np.float64)
        return steps, values

    def latest(self, name: str) -> float | None:
        s = self.scalars.get(name)
        return s.last if s is not None else None

    def layer_flags(self) -> dict[str, str]:
        """Layers whose latest gradient norm is vanishing or exploding: name -> 'vanishing'|'exploding'.

        The rule is the gradient check's (`engine.diagnostics.gradient_health`), with the run's thresholds;
        the check warns once it has held for a few probes in a row."""
        latest = self.layers.latest
        health = self.checks.gradient_health(latest.tolist()) if latest is not None else None
        return health.flags() if health is not None else {}

    @property
    def capture_layers(self) -> list[str]:
        """Layers with captures: in the model's order as the latest capture lists them, then any others in the
        order they were first seen (an older run's captures, or layers the latest capture left out)."""
        return list(dict.fromkeys([n for n in self.capture_order if n in self.captures] + list(self.captures)))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.started.classes if self.started else ()

    def capture_at(self, step: int | None = None) -> ev.Capture | None:
        """The Capture at or before `step` (the latest if None): kept here, or read back from the store."""
        steps = [s for s in self.capture_steps if step is None or s <= step]
        if not steps:
            return None
        found = self.captured.get(steps[-1])
        if found is None and self.load_capture is not None:
            found = self.load_capture(steps[-1])
            if found is not None and found.step == steps[-1]:
                self.keep_capture(found)
        return found if found is not None and found.step == steps[-1] else None

    def latest_maps(self, layer: str, step: int | None = None) -> MapCapture | None:
        """The capture of `layer` at or before `step` (the latest if None): kept here, or read back from the store."""
        steps = self.captures.get(layer, [])
        i = len(steps) if step is None else bisect.bisect_right(steps, step)
        if i == 0:
            return None
        key = (layer, steps[i - 1])
        capture = self.maps.get(key)
        if capture is None and self.load_maps is not None:
            capture = self.load_maps(*key)
            if capture is not None:
                self.keep_maps(capture)
        elif capture is not None:
            self.maps.move_to_end(key)
        return capture

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
        """The latest state of each check: fails first, the earliest first (the first failure is the cause, what
        fails after it its consequence: a NaN loss, then NaN gradients), then warnings and oks, the latest first."""
        states = list(self.check_states().values())
        return sorted(states, key=lambda f: (LEVEL_ORDER.get(f.level, 3), f.step if f.level == "fail" else -f.step))[:n]

    @property
    def is_range_test(self) -> bool:
        return bool(self.config.get("range_test"))

    def range_test(self) -> RangeTest:
        """The lr-find sweep so far: learning rates and (smoothed) losses, matched by step."""

        lr, loss = self.series("lr"), self.series("train/loss")  # an lr-find run is short: its buckets are its points
        return RangeTest.from_series(lr.step, lr.last, loss.step, loss.last)


_NOT_CHECKED = (RunState._diagnostic, RunState._run_started)  # the run's own findings; started in its handler


def maps_of(event: ev.Maps | ev.Activation | ev.Filters) -> MapCapture:
    """A capture's maps as float32: [images, C, H, W] (an older run's one image as one), or a Filters event's
    [out, in, kh, kw]; empty if the stored shape does not match its data."""
    if isinstance(event, ev.Maps):
        maps = dequantise(event.data, event.shape, np.asarray(event.lo), np.asarray(event.hi))
        dead = np.frombuffer(event.dead, dtype=np.uint8).astype(bool) if event.dead else None
        return MapCapture(event.step, event.layer, maps, event.channels, tuple(event.size), dead, event.block)
    maps = _f16(event.data, event.shape)
    if isinstance(event, ev.Activation):
        maps = maps[None] if maps.ndim == 3 else maps
        return MapCapture(event.step, event.layer, maps, maps.shape[1] if maps.ndim == 4 else 0, maps.shape[2:])
    return MapCapture(event.step, event.layer, maps)


def dequantise(data: bytes, shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A Maps event's uint8 values as float32 [N, C, H, W]: lo + q / 255 * (hi - lo) per channel (NaN where the
    channel had a NaN); empty when the data, the shape and the bounds do not agree."""
    q = np.frombuffer(data, dtype=np.uint8)
    if len(shape) != 4 or q.size != int(np.prod(shape)) or lo.size != shape[1] or hi.size != shape[1]:
        return np.zeros((0, 0, 0, 0), np.float32)
    view = (1, -1, 1, 1)
    with np.errstate(invalid="ignore"):
        return (lo.reshape(view) + q.reshape(shape).astype(np.float32) / 255 * (hi - lo).reshape(view)).astype(
            np.float32
        )


def _f16(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    values = np.frombuffer(data, dtype=np.float16).astype(np.float32)
    expected = int(np.prod(shape)) if shape else 0
    if values.size != expected:  # a damaged or mismatched capture: show nothing rather than raise
        return np.zeros((0,) * max(1, len(shape)), np.float32)
    return values.reshape(shape)


def _whole(value: float | None) -> int | None:
    """A positive count, or None."""
    return int(value) if value is not None and value >= 1 else None


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
