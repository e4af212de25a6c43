"""A line chart drawn with plotext: downsampled min/max envelopes, NaN/±Inf markers, never raises on bad values."""

from __future__ import annotations

import contextlib
import io
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotext as plt
from rich.text import Text

from engine.export import printable
from engine.store import downsample
from tui.widgets.base import CachedLines

MIN_WIDTH, MIN_HEIGHT = 10, 3
# plotext's C kernel aborts the process on NaN and its tick code fails on ranges that overflow: values are clipped here
CLIP = 1e150
NAN_MARK, POS_INF_MARK, NEG_INF_MARK = "×", "▲", "▼"
MARK_COLOR = "red"
# plotext keeps one global figure; the lock keeps two renders (say from a worker thread) from interleaving on it
_PLOTEXT_LOCK = threading.Lock()
Figure = Any  # plotext's figure object (plotext.figure); plotext exports no type for it


@dataclass
class Line:
    """One series of a chart: steps and values, downsampled at render time.

    `low`, `high` and `nan`, when given, are each point's extremes and NaN count: the points are
    buckets of a longer series, and the envelope and NaN markers come from them (with smoothing,
    the line is the EMA and the envelope the raw values).
    """

    label: str
    steps: np.ndarray
    values: np.ndarray
    color: str = "cyan"  # a plotext colour: one of the 16 terminal names ("cyan", "red+", ...), 0-255, or (r, g, b)
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    nan: np.ndarray | None = None

    @classmethod
    def of(cls, label: str, buckets: Any, color: str = "cyan", smooth: bool = False) -> Line:
        """A line from a bounded series' buckets (`tui.series.Buckets`): its last values, or its EMA."""
        values = buckets.smooth if smooth else buckets.last
        return cls(label, buckets.step, values, color, low=buckets.min, high=buckets.max, nan=buckets.nan)


@dataclass
class Plotted:
    """What one Line contributes to the plot, every array finite (and positive on a log axis)."""

    line: Line
    steps: np.ndarray  # bucket steps where `last` is drawable
    last: np.ndarray
    band_steps: np.ndarray  # bucket steps whose min..max spread is drawn as the faint envelope
    band_min: np.ndarray
    band_max: np.ndarray
    marks: dict[str, np.ndarray] = field(default_factory=dict)  # marker glyph -> steps where it applies

    def y_values(self) -> np.ndarray:
        return np.concatenate([self.last, self.band_min, self.band_max])

    def all_steps(self) -> np.ndarray:
        return np.concatenate([self.steps, self.band_steps, *self.marks.values()])


def drawable(values: np.ndarray, log_y: bool) -> np.ndarray:
    """Mask of the values plotext can take: finite, and positive on a log axis."""
    ok = np.isfinite(values)
    return ok & (values > 0) if log_y else ok


def prepare(line: Line, points: int, log_y: bool) -> Plotted:
    """Downsample one line to `points` buckets and split it into drawable data and non-finite markers.

    On a log axis the y values come back as log10: plotext's own log scale loses its limits once ticks are set.
    """
    steps = np.asarray(line.steps).ravel()
    values = np.asarray(line.values, dtype=np.float64).ravel()
    n = min(len(steps), len(values))
    envelope = {
        k: None if v is None else np.asarray(v).ravel()[:n] for k, v in (("low", line.low), ("high", line.high))
    }
    nan = None if line.nan is None else np.asarray(line.nan).ravel()[:n]
    series = downsample(line.label, steps[:n], values[:n], points=points, nan=nan, **envelope)
    keep = drawable(series.last, log_y)
    band = drawable(series.min, log_y) & drawable(series.max, log_y) & (series.max > series.min)
    marks = {
        NAN_MARK: series.step[series.nan > 0],
        POS_INF_MARK: series.step[series.max == np.inf],
        NEG_INF_MARK: series.step[series.min == -np.inf],
    }
    y = np.log10 if log_y else to_plot_range
    return Plotted(
        line,
        steps=series.step[keep],
        last=y(series.last[keep]),
        band_steps=series.step[band],
        band_min=y(series.min[band]),
        band_max=y(series.max[band]),
        marks={glyph: at for glyph, at in marks.items() if len(at)},
    )


def to_plot_range(values: np.ndarray) -> np.ndarray:
    """Clip finite values so that plotext's range arithmetic cannot overflow."""
    return np.clip(values, -CLIP, CLIP)


def padded_range(values: np.ndarray) -> tuple[float, float]:
    """(lo, hi) of the values, widened when they are (nearly) equal so plotext never sees an empty range."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1e-300):
        pad = abs(lo) * 0.1 or 0.5
        return lo - pad, hi + pad
    return lo, hi


def nice_ticks(lo: float, hi: float, count: int) -> np.ndarray:
    """About `count` round tick positions (1, 2, 2.5 or 5 times a power of ten apart) inside [lo, hi]."""
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = np.arange(first, hi + step * 1e-6, step)
    return np.round(ticks / step) * step


def decade_ticks(lo: float, hi: float, count: int) -> np.ndarray:
    """Ticks for a log10 axis: whole decades (thinned to about `count`), round ticks when under two decades."""
    first, last = math.ceil(lo), math.floor(hi)
    if last - first < 1:
        return nice_ticks(lo, hi, count)
    stride = max(1, math.ceil((last - first + 1) / count))
    return np.arange(first, last + 1, stride, dtype=np.float64)


def format_value(value: float) -> str:
    """A short tick label: 3 significant digits, an exponent outside 1e-3..1e5 (1e6, 2.5e-4)."""
    text = f"{value:.3g}"
    if value == 0 or (1e-3 <= abs(value) < 1e5 and "e" not in text):
        return text
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def format_step(step: float) -> str:
    """A short step label: 950, 1k, 1500, 12k, 2.5M."""
    for unit, scale in (("G", 1e9), ("M", 1e6)):
        if abs(step) >= scale * 0.9995:  # 999_999 reads 1M, not 1e+03k
            return f"{step / scale:.3g}{unit}"
    if abs(step) >= 1e4 or (abs(step) >= 1e3 and step % 1e3 == 0):
        return f"{step / 1e3:.3g}k"
    return f"{step:.0f}"


def box_message(message: str, width: int, height: int, title: str = "") -> Text:
    """A width x height box with `title` in its top border and `message` on its middle row."""
    inner = width - 2
    title, message = printable(title), printable(message)  # a chart's title may be a store's string
    top = f"─ {title} " if title else ""
    lines = ["┌" + (top[:inner]).ljust(inner, "─") + "┐"]
    lines += ["│" + " " * inner + "│" for _ in range(height - 2)]
    lines.append("└" + "─" * inner + "┘")
    middle = height // 2 if height > 2 else 0
    if height > 2:
        lines[middle] = "│" + message[:inner].center(inner) + "│"
    return Text("\n".join(lines))


def empty_message(plotted: list[Plotted], lines: list[Line], log_y: bool) -> str:
    """Why nothing can be drawn, or "" when something can."""
    if any(len(p.last) or len(p.band_min) for p in plotted):
        return ""
    values = [np.asarray(line.values, dtype=np.float64).ravel() for line in lines]
    if not any(len(v) for v in values):
        return "no data yet"
    if all(np.isnan(v).all() for v in values if len(v)):
        return "all values are NaN"
    return "no positive values for a log axis" if log_y else "no finite values"


def header(title: str, lines: list[Line], color: bool) -> Text:
    """Title and legend on one row: `title  ━ train  ━ val` (titles and labels may be a store's strings)."""
    text = Text(printable(title), style="bold" if color else "")
    for line in lines:
        if line.label:
            text.append("  " if text.plain else "")
            sample = plt.colorize("━", pixel=plt.pixel(line.color)).string() if color else "━"
            text.append_text(Text.from_ansi(sample))
            text.append(f" {printable(line.label)}")
    return text


def marker(glyph: str, color: str | None, style: str | None = None) -> plt.marker:
    """A plotext marker, uncoloured when `color` is None."""
    return plt.marker(glyph, plt.pixel(color, style=style)) if color else plt.marker(glyph)


def draw_line(fig: Figure, p: Plotted, color: bool) -> None:
    """Draw one line: its min..max envelope as faint vertical strokes, then its `last` values as the line."""
    line_color = p.line.color if color else None
    if len(p.band_steps):
        xs = np.repeat(p.band_steps, 2).astype(np.float64).tolist()
        ys = np.column_stack([p.band_min, p.band_max]).ravel().tolist()
        band = fig.signal(xs, ys, marker=marker("hd", line_color, "dim")).lines()
        for i in range(2, len(xs), 2):  # keep only the min->max stroke of each bucket
            band.line(i, False)
        fig.draw(band)
    if len(p.steps):
        xs, ys = p.steps.astype(np.float64).tolist(), p.last.tolist()
        fig.draw(fig.signal(xs, ys, marker=marker("hd", line_color)).lines().density("full"))


def draw_marks(fig: Figure, plotted: list[Plotted], y_lo: float, y_hi: float, color: bool) -> None:
    """Draw the non-finite markers: NaN and +Inf at the top of the y range, -Inf at the bottom."""
    for p in plotted:
        for glyph, steps in p.marks.items():
            y = y_lo if glyph == NEG_INF_MARK else y_hi
            xs = steps.astype(np.float64).tolist()
            fig.draw(fig.signal(xs, [y] * len(xs), marker=marker(glyph, MARK_COLOR if color else None)))


LOG_X_SCALE = 1000  # with log_x, x values are LOG_X_SCALE * log10(x): integers, as the downsampling wants


def log_x_steps(x: np.ndarray) -> np.ndarray:
    """Positive x values as the integer steps a `log_x` chart takes."""
    return np.round(LOG_X_SCALE * np.log10(np.asarray(x, dtype=np.float64))).astype(np.int64)


def set_axes(
    fig: Figure,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    size: tuple[int, int],
    log_y: bool,
    log_x: bool = False,
) -> None:
    """Fix both axes' limits and put round, short tick labels on them (y in log10 units when `log_y`)."""
    width, height = size
    x_count = max(2, width // 14)
    if log_x:
        x_ticks = LOG_X_SCALE * decade_ticks(x_range[0] / LOG_X_SCALE, x_range[1] / LOG_X_SCALE, x_count)
        x_labels = [format_value(10.0 ** (t / LOG_X_SCALE)) for t in x_ticks]
    else:
        x_ticks = nice_ticks(*x_range, x_count)
        x_labels = [format_step(t) for t in x_ticks]
    y_count = max(2, min(6, height // 3))
    y_ticks = decade_ticks(*y_range, y_count) if log_y else nice_ticks(*y_range, y_count)
    y_labels = [format_value(10.0**t if log_y else t) for t in y_ticks]
    fig.ruler("x").lim(*x_range).ticks(x_ticks.tolist(), x_labels)
    fig.ruler("y").lim(*y_range).ticks(y_ticks.tolist(), y_labels)


def build_plot(
    plotted: list[Plotted], width: int, height: int, x_label: str, log_y: bool, color: bool, log_x: bool = False
) -> str:
    """Draw the prepared lines into a width x height plotext figure and return it as an (ANSI) string."""
    ys = np.concatenate([p.y_values() for p in plotted])
    y_range = padded_range(ys)
    x_range = padded_range(np.concatenate([p.all_steps() for p in plotted]).astype(np.float64))
    fig = plt.figure
    fig.clear()
    fig.plot_size(width, height)
    fig.theme("simple" if color else "colorless")
    for p in plotted:
        draw_line(fig, p, color)
    draw_marks(fig, plotted, *y_range, color)
    set_axes(fig, x_range, y_range, (width, height), log_y, log_x)
    if x_label and height >= 8:
        fig.label(x_label)
    return fig.build().string(colorless=not color).rstrip("\n")


def plot_text(
    plotted: list[Plotted], width: int, height: int, x_label: str, log_y: bool, color: bool, log_x: bool = False
) -> Text:
    """The plot as a Text; plotext's notes to stdout/stderr are swallowed so they never scribble on the screen."""
    sink = io.StringIO()
    with _PLOTEXT_LOCK, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            out = build_plot(plotted, width, height, x_label, log_y, color, log_x)
        except Exception as exc:  # a bug in the plotting library must not take the monitor down: show it instead
            return box_message(f"chart error: {exc}", width, height)
    return Text.from_ansi(out) if color else Text(out)


def render_chart(
    lines: list[Line],
    width: int,
    height: int,
    *,
    title: str = "",
    log_y: bool = False,
    x_label: str = "step",
    color: bool = True,
    log_x: bool = False,
) -> Text:
    """Render `lines` into exactly `height` rows of at most `width` cells (or a short hint when too small).

    With `log_x` the lines' steps are `log_x_steps` of positive x values, labelled in decades.
    """
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return Text("enlarge"[: max(width, 0)])
    plotted = [prepare(line, width, log_y) for line in lines]
    message = empty_message(plotted, lines, log_y)
    if message:
        return box_message(message, width, height, title)
    head = header(title, lines, color)
    if not head.plain or height < 6:
        return plot_text(plotted, width, height, x_label, log_y, color, log_x)
    head.truncate(width)
    return Text("\n").join([head, plot_text(plotted, width, height - 1, x_label, log_y, color, log_x)])


class Chart(CachedLines):
    """A plotext line chart filling the widget; data comes in through `set_lines`.

    Drawings are cached: after changing a line's arrays in place, call `set_lines` again.
    """

    def __init__(
        self, *, color: bool | None = None, x_label: str = "step", log_x: bool = False, **kwargs: str | None
    ) -> None:
        super().__init__(color=color, **kwargs)
        self.lines: list[Line] = []
        self.title = ""
        self.log_y = False
        self.x_label = x_label
        self.log_x = log_x

    def set_lines(self, lines: list[Line], *, title: str = "", log_y: bool = False) -> None:
        """Replace the lines and redraw."""
        self.lines, self.title, self.log_y = list(lines), title, log_y
        self.changed()

    def draw(self, width: int, height: int, color: bool) -> list[Text]:
        text = render_chart(
            self.lines,
            width,
            height,
            title=self.title,
            log_y=self.log_y,
            x_label=self.x_label,
            color=color,
            log_x=self.log_x,
        )
        return text.split("\n", allow_blank=True)
