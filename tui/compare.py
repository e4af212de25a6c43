"""A compare: several runs, each a `RunState` folded from its own store, drawn over each other. Pure: no Textual.

`CompareState` folds `Tagged` items (a run's index and its event or snapshot) into one state per
run, and says what the compare screens show: the table of runs (`engine.compare`'s rows, read
from the states), each run's colour, the curves of a metric on an x axis (runs that differ only
by seed as one mean line with a min..max band), and a layers x runs matrix at a step. It has the
few properties the app's status line and key handling read of a state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import compare
from engine.compare import AXES, RunRow
from engine.diagnostics import ZERO_SHARE_PREFIX
from engine.names import SUFFIX
from tui.snapshot import Snapshot
from tui.sources import Added, Failed, Gone, Tagged
from tui.state import DEFAULT_SMOOTHING, RunState
from tui.widgets import Line

# a run's colour by its place in the compare (stable: a run added later changes no other's); past the palette the
# colours come round again with a marker of their own
PALETTE = ("cyan", "orange", "green", "magenta", "yellow", "blue+", "white", 141)
MARKERS = ("hd", "•", "+", "o")
AXIS_SCALE = {"step": 1, "samples": 1, "epoch": 1000, "wall": 10}  # x as whole numbers for the charts: 0.001 epoch
AXIS_TITLE = {"step": "step", "samples": "samples", "epoch": "epoch", "wall": "seconds"}
# the curves: what a chart draws of each run (a Step scalar, an Epoch field, a layer's gradient norm)
CURVES = {
    "train loss": ("scalar", "train/loss"),
    "val loss": ("epoch", "val_loss"),
    "val acc": ("epoch", "val_acc"),
    "learning rate": ("scalar", "lr"),
    "img/s": ("scalar", "throughput/img_s"),
    "grad norm": ("layer", ""),
}
LAYER_METRICS = ("grad norm", "update/weight", "dead-ReLU share")
BEST_FIRST = ("best val acc", "img/s")  # sorted high to low at first; the other columns low to high
BAND_POINTS = 200  # the grid a seed group's mean and band are drawn on


@dataclass
class Member:
    path: Path
    state: RunState
    error: str | None = None
    hidden: bool = False


@dataclass
class Curve:
    """One line of a compare chart, before it is a Line: whose, and its x (scaled) and y."""

    runs: list[int]
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    nan: np.ndarray | None = None


@dataclass
class Picture:
    """A layers x runs matrix: rows (layer names), one column per shown run, the step it is read at."""

    rows: list[str]
    columns: list[int]
    matrix: np.ndarray
    missing: list[int] = field(default_factory=list)  # shown runs that have none of this metric


class CompareState:
    """The runs of a compare, each a RunState; which are shown, picked, and how the table is sorted."""

    def __init__(
        self,
        paths: Iterable[Path] = (),
        clock: Callable[[], float] = time.time,
        smoothing: float = DEFAULT_SMOOTHING,
    ) -> None:
        self.clock = clock
        self.smoothing = smoothing
        self.members: list[Member] = []
        self.picked: int | None = None  # the run the user picked: drawn over the others, which go faint
        self.axis = "step"
        self.sort = ("", False)  # (column, descending); "" keeps the runs in the order they were given
        self.version = 0
        self.last_seq = 0  # events folded, over all runs
        self.ended = None  # what the app reads of a single run's state: a compare is no one run
        self.is_range_test = False
        self._memo: dict[Any, tuple[int, Any]] = {}  # what was worked out at which version (rows, labels, curves)
        for path in paths:
            self.add(Path(path))

    def add(self, path: Path) -> int:
        self.members.append(Member(path, RunState(clock=self.clock, smoothing=self.smoothing)))
        self.version += 1
        return len(self.members) - 1

    # -- folding

    def apply(self, tagged: Tagged) -> None:
        self.version += 1
        item = tagged.item
        if isinstance(item, Added):
            if tagged.run >= len(self.members):
                self.add(item.path)
            return
        member = self.members[tagged.run]
        if isinstance(item, Snapshot):
            item.state.clock = self.clock
            if item.state.smoothing != self.smoothing:
                item.state.set_smoothing(self.smoothing, None)
            member.state = item.state
        elif isinstance(item, Gone):
            member.state.writer_gone = True
        elif isinstance(item, Failed):
            member.error = item.error
        else:
            member.state.apply(item)
            self.last_seq += 1

    def apply_many(self, items: Iterable[Tagged]) -> None:
        for item in items:
            self.apply(item)

    # -- what the status line reads

    @property
    def states(self) -> list[RunState]:
        return [m.state for m in self.members]

    @property
    def name(self) -> str:
        return f"compare of {len(self.members)} run{'s' * (len(self.members) != 1)}"

    def status(self) -> str:
        """How many runs are in each state: "2 running, 3 finished"."""
        counts: dict[str, int] = {}
        for row in self.rows():
            counts[row.status] = counts.get(row.status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in counts.items()) or "no runs"

    @property
    def step(self) -> int:
        """The furthest step of any run."""
        return max((s.step for s in self.states), default=0)

    @property
    def live(self) -> bool:
        return any(s.live for s in self.states)

    @property
    def elapsed(self) -> float:
        return max((s.elapsed for s in self.states), default=0.0)

    # -- the table of runs

    def _once(self, key: Any, version: int, work: Callable[[], Any]) -> Any:
        """`work()`, worked out again only when `version` moved since it was last (a redraw asks many times)."""
        kept = self._memo.get(key)
        if kept is None or kept[0] != version:
            kept = self._memo[key] = (version, work())
        return kept[1]

    def rows(self) -> list[RunRow]:
        return self._once("rows", self.version, lambda: [row_of(m) for m in self.members])

    def keys(self) -> list[str]:
        """The config keys on which the runs differ."""
        return self._once("keys", self.version, lambda: compare.differing_keys(self.rows()))

    def labels(self) -> list[str]:
        return self._once("labels", self.version, lambda: compare.labels(self.rows(), self.keys()))

    def order(self) -> list[int]:
        """The runs in the table's order: as given, or sorted by the sort column (runs without a value last)."""
        rows = self.rows()
        column, descending = self.sort
        if not column:
            return list(range(len(rows)))
        values = [_sort_value(r, column) for r in rows]
        known = [i for i, v in enumerate(values) if v is not None]
        known.sort(key=lambda i: values[i], reverse=descending)
        return known + [i for i, v in enumerate(values) if v is None]

    def columns(self) -> list[str]:
        """The table's columns, in the order the Runs pane shows them: the run, its figures, the differing keys."""
        return ["run", *compare.FIGURES, *self.keys()]

    def next_sort(self) -> str:
        """Sort by the next column of the table (any of them); the first after the last, or when none."""
        columns = self.columns()
        at = columns.index(self.sort[0]) + 1 if self.sort[0] in columns else 0
        column = columns[at % len(columns)]
        self.sort = (column, column in BEST_FIRST)
        self.version += 1
        return column

    def reverse_sort(self) -> None:
        self.sort = (self.sort[0], not self.sort[1])
        self.version += 1

    def toggle_hidden(self, run: int) -> bool:
        self.members[run].hidden = not self.members[run].hidden
        self.version += 1
        return self.members[run].hidden

    def show_all(self) -> None:
        for m in self.members:
            m.hidden = False
        self.version += 1

    def pick(self, run: int | None) -> None:
        if run != self.picked:
            self.picked = run
            self.version += 1

    def step_picked(self, delta: int) -> int:
        """Move the pick to the next (or previous) run in the table's order; the first when none was picked."""
        order = self.order()
        at = order.index(self.picked) + delta if self.picked in order else 0
        self.pick(order[at % len(order)])
        return self.picked

    def next_axis(self) -> str:
        self.axis = AXES[(AXES.index(self.axis) + 1) % len(AXES)]
        self.version += 1
        return self.axis

    # -- drawing

    def color(self, run: int) -> tuple[Any, str]:
        """A run's (colour, marker)."""
        return PALETTE[run % len(PALETTE)], MARKERS[run // len(PALETTE) % len(MARKERS)]

    def groups(self) -> list[list[int]]:
        """The shown runs in groups that differ only by seed, each group in the table's order."""
        rows = self.rows()
        shown = [i for i in self.order() if not self.members[i].hidden and self.members[i].error is None]
        groups = compare.seed_groups([rows[i] for i in shown])
        return [[shown[j] for j in group] for group in groups]

    def group_label(self, group: list[int]) -> str:
        """A group's (or, given alone, a run's) name in a legend: `lr=0.1 x3 seeds`."""
        seedless = self._once("seedless", self.version, lambda: compare.seedless_labels(self.rows(), self.keys()))
        return compare.group_label(group, self.labels(), seedless)

    def curves(self, metric: str, smooth: bool = False, layer: str = "") -> tuple[list[Line], list[int]]:
        """The lines of one metric, one per group (a seed group's mean, its band the runs' min..max), the picked
        run's group last and the others faint while one is picked; and the runs that lack the metric or the axis."""
        lines: list[tuple[bool, Line]] = []
        lacking = []
        for group in self.groups():
            curves = []
            for run in group:
                curve = self.curve(run, metric, smooth, layer)
                if curve is None:
                    lacking.append(run)
                else:
                    curves.append(curve)
            if not curves:
                continue
            color, marker = self.color(group[0])
            picked = self.picked in group
            line = _band_line(curves) if len(curves) > 1 else _one_line(curves[0])
            line.color, line.marker, line.dim = color, marker, self.picked is not None and not picked
            lines.append((picked, line))
        lines.sort(key=lambda pair: pair[0])  # the picked group drawn last, over the others
        return [line for _, line in lines], lacking

    def curve(self, run: int, metric: str, smooth: bool, layer: str) -> Curve | None:
        """One run's points of `metric` on the compare's x axis; None when it has none or cannot be put on the axis.
        Worked out again only when that run moved: a live run among finished ones costs its own curves alone."""
        state = self.members[run].state
        key = ("curve", run, metric, smooth, layer, self.axis, state.smoothing)
        return self._once(key, state.version, lambda: self._curve(state, run, metric, smooth, layer))

    def _curve(self, state: RunState, run: int, metric: str, smooth: bool, layer: str) -> Curve | None:
        kind, name = CURVES[metric]
        low = high = nan = None
        if kind == "scalar":
            if name not in state.scalars:
                return None
            b = state.series(name)
            steps, values, low, high, nan = b.step, (b.smooth if smooth else b.last), b.min, b.max, b.nan
        elif kind == "epoch":
            steps, values = state.epoch_series(name)
        else:
            if layer not in state.layer_names or not state.layers.steps:
                return None
            matrix = state.layers.matrix()
            column = state.layer_names.index(layer)
            if column >= matrix.shape[1]:
                return None
            steps, values = np.asarray(state.layers.steps), matrix[:, column].astype(np.float64)
        if not len(steps) or not np.isfinite(values).any() and not (nan is not None and nan.any()):
            return None
        x = compare.x_of(np.asarray(steps), self.axis, state.config, state.step_clock())
        if x is None:
            return None
        return Curve([run], np.round(x * AXIS_SCALE[self.axis]), values, low, high, nan)

    def layer_names(self) -> list[str]:
        """Every layer of the shown runs, in the first run's order, then the others' new ones."""
        names: dict[str, None] = {}
        for group in self.groups():
            for run in group:
                names.update(dict.fromkeys(self.members[run].state.layer_names))
        return list(names)

    def probe_steps(self) -> list[int]:
        """The steps a layers x runs picture can be read at: the kept probes of the shown run with the most."""
        runs = [run for group in self.groups() for run in group]
        return max((self.members[r].state.layers.steps for r in runs), key=len, default=[])

    def layers(self, metric: str, step: int | None) -> Picture:
        """`metric` of every layer (rows) of every shown run (columns, in the table's order) at `step` (each run's
        latest if None)."""
        runs = [run for group in self.groups() for run in group]
        rows = self._layer_rows(metric, runs)
        matrix = np.full((len(rows), len(runs)), np.nan)
        missing = []
        for j, run in enumerate(runs):
            values = self._layer_values(self.members[run].state, metric, step)
            if not values:
                missing.append(run)
            for i, name in enumerate(rows):
                matrix[i, j] = values.get(name, math.nan)
        return Picture(rows, runs, matrix, missing)

    def _layer_rows(self, metric: str, runs: list[int]) -> list[str]:
        if metric != "dead-ReLU share":
            return self.layer_names()
        names: dict[str, None] = {}
        for run in runs:
            scalars = self.members[run].state.scalars
            names.update(dict.fromkeys(n[len(ZERO_SHARE_PREFIX) :] for n in scalars if n.startswith(ZERO_SHARE_PREFIX)))
        return list(names)

    @staticmethod
    def _layer_values(state: RunState, metric: str, step: int | None) -> dict[str, float]:
        if metric == "dead-ReLU share":
            out = {}
            for name, series in state.scalars.items():
                if name.startswith(ZERO_SHARE_PREFIX):
                    b = series.buckets()
                    i = len(b.step) if step is None else int(np.searchsorted(b.step, step, side="right"))
                    if i:
                        out[name[len(ZERO_SHARE_PREFIX) :]] = float(b.last[i - 1])
            return out
        values = state.layers.at(step, ratios=metric == "update/weight")
        if values is None:
            return {}
        return {name: float(v) for name, v in zip(state.layer_names, values, strict=False)}


def row_of(member: Member) -> RunRow:
    """The table's row of a run, from its state (what `engine.compare.read_row` reads from its store)."""
    state, path = member.state, member.path
    name = state.started.name if state.started else path.name.removesuffix(SUFFIX)
    if member.error is not None:
        return RunRow(path, name, "?", "?", "unreadable", error=member.error)
    started = state.started
    row = RunRow(
        path=path,
        name=name,
        model=started.model if started else "?",
        dataset=started.dataset if started else "?",
        status=state.status(),
        config=state.config,
        steps=state.step,
    )
    if state.first_wall is not None and state.last_wall is not None:
        row.wall_s = state.last_wall - state.first_wall
    best = state.best_epoch("val_acc")
    if best is not None:
        row.best_val_acc, row.best_epoch = best.val_acc, best.epoch
    loss = state.series("train/loss").last
    finite = loss[np.isfinite(loss)]
    row.final_train_loss = float(finite[-1]) if len(finite) else None
    rates = state.series("throughput/img_s").last
    rates = rates[np.isfinite(rates)]
    row.img_per_s = float(np.median(rates)) if len(rates) else None
    worst = [f for f in state.worst_diagnostics(1) if f.level in compare.LEVELS]
    row.worst = f"{worst[0].level} {worst[0].code}" if worst else None
    return row


def _sort_value(row: RunRow, column: str) -> tuple[int, Any] | None:
    """A row's value in a column as it sorts: numbers as numbers, before text; None when it has none."""
    fields = {"run": "name", "best val acc": "best_val_acc", "best epoch": "best_epoch", "img/s": "img_per_s"}
    fields |= {"final train loss": "final_train_loss", "wall s": "wall_s", "status": "status", "worst": "worst"}
    value = getattr(row, fields[column]) if column in fields else row.config.get(column)
    if isinstance(value, bool) or value is None:
        return None if value is None else (1, str(value))
    if isinstance(value, (int, float)):
        return None if math.isnan(value) else (0, value)
    return (1, compare.text(value))


def _one_line(curve: Curve) -> Line:
    return Line("", curve.x, curve.y, low=curve.low, high=curve.high, nan=curve.nan)


def _band_line(curves: list[Curve]) -> Line:
    """Several runs as one line: their mean on a shared grid, the band from their min to their max."""
    grid, mean, low, high = compare.band([(c.x, c.y) for c in curves], points=BAND_POINTS)
    return Line("", np.round(grid), mean, low=low, high=high)
