"""A line chart drawn with plotext: downsampled min/max envelopes, NaN/±Inf markers, never raises on bad values."""

from __future__ import annotations

import contextlib
import io
import math
import threading
from dataclasses import dataclass, field, replace
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
    marker: str = "hd"  # plotext's marker: "hd" draws a thin line; a compare of many runs repeats colours with others
    dim: bool = False  # drawn faint: a compare's other runs while one is picked

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


def prepare(line: Line, points: int, log_y: bool, scale: float = 1.0) -> Plotted:
    """Downsample one line to `points` buckets and split it into drawable data and non-finite markers.

    The y values are multiplied by `scale` (100 draws fractions as percent). On a log axis they come back as log10:
    plotext's own log scale loses its limits once ticks are set.
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

    def y(values: np.ndarray) -> np.ndarray:
        values = values * scale if scale != 1 else values
        return np.log10(values) if log_y else to_plot_range(values)

    return Plotted(
        line,
        steps=series.step[keep],
        last=y(series.last[keep]),
        band_steps=series.step[band],
        band_min=y(series.min[band]),
        band_max=y(series.max[band]),
        marks={glyph: at for glyph, at in marks.items() if len(at)},
    )


def last_steps(lines: list[Line], window: int | None) -> list[Line]:
    """The lines cut to the chart's last `window` steps (after the latest step of any line minus `window`)."""
    ends = [np.max(line.steps) for line in lines if len(line.steps)]
    if not window or not ends:
        return lines
    start = max(ends) - window
    out = []
    for line in lines:
        steps = np.asarray(line.steps).ravel()
        n = min(len(steps), len(np.asarray(line.values).ravel()))
        keep = np.flatnonzero(steps[:n] > start)

        def cut(values: np.ndarray | None, keep: np.ndarray = keep) -> np.ndarray | None:
            return None if values is None else np.asarray(values).ravel()[keep]

        out.append(
            replace(
                line,
                steps=steps[keep],
                values=cut(line.values),
                low=cut(line.low),
                high=cut(line.high),
                nan=cut(line.nan),
            )
        )
    return out


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


def format_value(value: float, digits: int = 3) -> str:
    """A short tick label: `digits` significant digits (all of a whole number's: 1550, not 1.55e3), an exponent
    outside 1e-3..1e5 (1e6, 2.5e-4).
    """
    if 1 <= abs(value) < 1e5:
        digits = max(digits, int(math.log10(abs(value))) + 1)
    text = f"{value:.{digits}g}"
    if value == 0 or (1e-3 <= abs(value) < 1e5 and "e" not in text):
        return text
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def format_step(step: float, digits: int = 3) -> str:
    """A short step label: 950, 1k, 1500, 12k, 2.5M (`digits` significant digits before the unit)."""
    for unit, scale in (("G", 1e9), ("M", 1e6)):
        if abs(step) >= scale * 0.9995:  # 999_999 reads 1M, not 1e+03k
            return f"{step / scale:.{digits}g}{unit}"
    if abs(step) >= 1e4 or (abs(step) >= 1e3 and step % 1e3 == 0):
        return f"{step / 1e3:.{digits}g}k"
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


def legend_fit(title: str, labels: list[str], width: int) -> tuple[str, list[str], str]:
    """The title, legend labels and separator that fit in `width` cells: the spacing goes first, then the title
    takes what room the labels leave it, down to 12 cells (`learning-ra…`); then the labels are cut (`tr…`) and the
    title with them, never under 5 cells while a label keeps more than its first letter (labels say which line is
    which: `━ s ━ s` says nothing); a narrow chart keeps a short title and legend.
    """

    def size(title: str, labels: list[str], sep: str) -> int:
        pieces = ([title] if title else []) + [f"━ {label}" for label in labels]
        return sum(map(len, pieces)) + len(sep) * max(len(pieces) - 1, 0)

    def cut(text: str, k: int) -> str:
        return text if len(text) <= k else text[: k - 1].rstrip() + "…" if k > 1 else text[:k]

    if size(title, labels, "  ") <= width:
        return title, labels, "  "
    for k, least in ((999, 12), (12, 12), (8, 8), (5, 8), (3, 5)):
        short = [cut(label, k) for label in labels]
        room = width - size("", short, " ") - (1 if short else 0)  # the title's, and the space after it
        if room >= min(least, len(title)):
            return cut(title, room), short, " "
    short = [cut(label, 1) for label in labels]  # the labels' first letters, the title what room is left
    room = width - size("", short, " ") - (1 if short else 0)
    return (cut(title, room) if room >= 2 else ""), short, " "


def swatch(color: Any, marker: str = "hd", colored: bool = True) -> Text:
    """A legend's sample of a line: `━` in its colour (its own marker where it has one: a compare's repeats)."""
    glyph = "━" if marker == "hd" else marker
    return Text.from_ansi(plt.colorize(glyph, pixel=plt.pixel(color)).string()) if colored else Text(glyph)


def header(title: str, lines: list[Line], color: bool, width: int = 10**6) -> Text:
    """Title and legend on one row: `title  ━ train  ━ val`, shortened to fit `width` (titles and labels may be
    a store's strings).

    Only the title is bold, as a span of its own: a style over the whole row would hide the swatches' colours once
    the row is cut into segments (`text_to_strip` keeps the first of overlapping spans).
    """
    named = [line for line in lines if line.label]
    title, labels, sep = legend_fit(printable(title), [printable(line.label) for line in named], width)
    text = Text()
    text.append(title, style="bold" if color else "")
    for line, label in zip(named, labels, strict=True):
        text.append(sep if text.plain else "")
        text.append_text(swatch(line.color, line.marker, color))
        text.append(f" {label}")
    text.truncate(width)
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
        glyph = marker(p.line.marker, line_color, "dim" if p.line.dim else None)
        fig.draw(fig.signal(xs, ys, marker=glyph).lines().density("full"))


def draw_marks(fig: Figure, plotted: list[Plotted], y_lo: float, y_hi: float, color: bool) -> None:
    """Draw the non-finite markers: NaN and +Inf at the top of the y range, -Inf at the bottom."""
    for p in plotted:
        for glyph, steps in p.marks.items():
            y = y_lo if glyph == NEG_INF_MARK else y_hi
            xs = steps.astype(np.float64).tolist()
            fig.draw(fig.signal(xs, [y] * len(xs), marker=marker(glyph, MARK_COLOR if color else None)))


Y_GAP = 1.0  # rows between two y labels: adjacent rows are fine, one row must not hold two
X_GAP = 2  # blank cells between two x labels


def candidate_ticks(lo: float, hi: float, log: bool, integer: bool = False) -> list[np.ndarray]:
    """Sets of round tick positions around [lo, hi], coarse to fine (on a log axis, positions are log10)."""
    if log:
        first, last = math.floor(lo) - 1, math.ceil(hi) + 1
        sets = [np.arange(first - first % k, last + k, k, dtype=np.float64) for k in (3, 2, 1)]
        exponents = np.arange(first, last + 1, dtype=np.float64)
        for mantissas in ((1, 3), (1, 2, 5)):
            sets.append(np.sort(np.add.outer(exponents, np.log10(mantissas)).ravel()))
        if hi - lo < 1:  # under a decade: round values, placed on the log axis
            sets += [np.log10(t) for t in candidate_ticks(10.0**lo, 10.0**hi, False) if (t > 0).all()]
        return sets
    magnitude = math.floor(math.log10(hi - lo))
    sets = []
    for exponent in range(magnitude + 1, magnitude - 3, -1):
        for m in (5, 2.5, 2, 1):
            step = m * 10.0**exponent
            if integer and step != round(step):
                continue
            k = np.arange(math.floor(lo / step) - 1, math.ceil(hi / step) + 2)
            sets.append(k * step)
    return sets


def unique_labels(ticks: np.ndarray, label: Any) -> list[str]:
    """`label(tick)` for each tick, with more digits where 3 are not enough to tell them apart."""
    for digits in (3, 4, 5, 6, 8):
        labels = [label(t, digits) for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def pick_ticks(
    lo: float,
    hi: float,
    cells: int,
    *,
    log: bool,
    label: Any,
    want: int,
    least: int,
    across: bool,
    loose: bool,
    room: float = 1.0,
    integer: bool = False,
) -> tuple[np.ndarray, list[str], float, float]:
    """Round ticks for an axis `cells` long: (positions, labels, lo, hi), lo and hi widened only if `loose` must.

    `across`: labels sit side by side (the x axis) and must not touch; otherwise one label a row (the y axis).
    Only ticks in the first `room` fraction of the axis are kept (the x axis' title takes the rest); with `integer`,
    only whole numbers (steps).
    Sets with at least `least` labels come first; then the nearest `want` labels, with short labels and limits
    widened as little as can be (tight limits are tried first, widened ones only when no tight set has `least`).
    """
    best: tuple[float, ...] | None = None
    choice = None
    for widen in (False, True) if loose else (False,):
        for candidates in candidate_ticks(lo, hi, log, integer):
            if widen:
                below, above = candidates[candidates <= lo], candidates[candidates >= hi]
                if not len(below) or not len(above):
                    continue
                a, b = float(below.max()), float(above.min())
            else:
                a, b = lo, hi
            ticks = candidates[(candidates >= a - 1e-9 * (b - a)) & (candidates <= a + room * (b - a) * (1 + 1e-9))]
            if not len(ticks) or len(ticks) > cells:
                continue
            gaps = np.diff(ticks) / (b - a) * (cells - 1)  # cells between neighbouring ticks
            if len(gaps) and gaps.min() < (X_GAP + 1 if across else Y_GAP):  # cheap test first: labels cost more
                continue
            labels = unique_labels(ticks, label)
            if across and len(gaps):
                half = np.array([len(t) / 2 for t in labels])
                if (gaps - half[1:] - half[:-1] < X_GAP).any():
                    continue
            # near `want` labels, short ones, the axis widened as little as can be
            widened = (b - a) / (hi - lo) - 1
            score = (len(ticks) < least, abs(len(ticks) - want) + 0.25 * max(map(len, labels)) + 3 * widened)
            if best is None or score < best:
                best, choice = score, (ticks, labels, a, b)
        if best is not None and not best[0]:
            break
    if choice is None:  # nothing round fits: the two ends
        ticks = np.array([lo, hi]) if cells > 1 else np.array([lo])
        return ticks, unique_labels(ticks, label), lo, hi
    return choice


def value_label(log: bool, suffix: str = "") -> Any:
    """A y (or log x) tick's label: the value, and the unit when it reads after a number ("50%")."""
    return lambda t, digits: format_value(10.0**t if log else t, digits) + suffix


LOG_X_SCALE = 1000  # with log_x, x values are LOG_X_SCALE * log10(x): integers, as the downsampling wants


def log_x_steps(x: np.ndarray) -> np.ndarray:
    """Positive x values as the integer steps a `log_x` chart takes."""
    return np.round(LOG_X_SCALE * np.log10(np.asarray(x, dtype=np.float64))).astype(np.int64)


@dataclass
class Axes:
    """Where the ticks go and what they say, decided before plotext draws (positions in plot units)."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]  # the data's range, widened to round ticks when too few fall inside it
    x_ticks: list[float]
    x_labels: list[str]
    y_ticks: list[float]
    y_labels: list[str]
    x_title: str  # written at the right end of the x tick row; "" when it does not fit there


def plan_axes(
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    width: int,
    height: int,
    x_title: str,
    log_y: bool,
    log_x: bool = False,
    y_suffix: str = "",
    x_scale: float = 1.0,
) -> Axes:
    """Ticks for a width x height plot: at least three y labels (one a row at most) and two x labels that do not
    touch, the x axis' title after the last x label. Under 4 rows the x axis and its labels give their rows up.
    With `x_scale` other than 1 the x positions are x * x_scale (whole numbers, as the downsampling wants): an
    axis of fractions (epochs, seconds), labelled as values, not as steps.
    """
    show_x = height >= 4
    rows = height - 2 if show_x else height
    want = min(5, max(3, (rows + 1) // 2))  # a label every other row, five at most
    y_ticks, y_labels, y_lo, y_hi = pick_ticks(
        *y_range,
        rows,
        log=log_y,
        label=value_label(log_y, y_suffix),
        want=want,
        least=min(3, rows),
        across=False,
        loose=True,
    )
    if not show_x:
        return Axes(x_range, (y_lo, y_hi), [], [], y_ticks.tolist(), y_labels, "")
    cols = width - max(map(len, y_labels)) - 1  # the y labels and the y axis take the left columns
    room = (cols - len(x_title) - 5) / max(cols - 1, 1)  # the title, a space, half a label and a margin
    if room < 0.5:
        x_title, room = "", 1.0
    scale = LOG_X_SCALE if log_x else x_scale
    steps = not log_x and x_scale == 1
    for share in (room, 1.0):  # two labels come before the title: without them, the title gives its room up
        x_ticks, x_labels, *_ = pick_ticks(
            x_range[0] / scale,
            x_range[1] / scale,
            cols,
            log=log_x,
            label=format_step if steps else value_label(log_x),
            want=max(2, cols // 15),
            least=2,
            across=True,
            loose=False,
            room=share,
            integer=steps,
        )
        if len(x_ticks) >= 2:
            break
        x_title = ""
    return Axes(x_range, (y_lo, y_hi), (x_ticks * scale).tolist(), x_labels, y_ticks.tolist(), y_labels, x_title)


@dataclass(frozen=True)
class Style:
    """How a plot is drawn: the x axis' label, log scales, colour, the y labels' suffix ("%")."""

    x_label: str
    log_y: bool
    color: bool
    log_x: bool = False
    y_suffix: str = ""
    x_scale: float = 1.0


def build_plot(plotted: list[Plotted], width: int, height: int, style: Style) -> tuple[str, Axes]:
    """Draw the prepared lines into a width x height plotext figure: its (ANSI) string, and the axes it has.

    Only the left and bottom axes are drawn: the rows and columns of the top and right ones go to the data.
    """
    ys = np.concatenate([p.y_values() for p in plotted])
    x_range = padded_range(np.concatenate([p.all_steps() for p in plotted]).astype(np.float64))
    x_label, log_y, color = style.x_label, style.log_y, style.color
    axes = plan_axes(
        x_range, padded_range(ys), width, height, x_label, log_y, style.log_x, style.y_suffix, style.x_scale
    )
    fig = plt.figure
    fig.clear()
    fig.parent().limit(False, False)  # the widget's size, not the terminal's (80x24 when none answers, as in tests)
    fig.plot_size(width, height)
    fig.theme("simple" if color else "colorless")
    fig.axes(False, axis="x", side=1)
    fig.axes(False, axis="y", side=1)
    if not axes.x_ticks:
        fig.axes(False, axis="x", side=0)
    for p in plotted:
        draw_line(fig, p, color)
    draw_marks(fig, plotted, *axes.y_range, color)
    fig.ruler("x").lim(*axes.x_range).ticks(axes.x_ticks, axes.x_labels)
    fig.ruler("y").lim(*axes.y_range).ticks(axes.y_ticks, axes.y_labels)
    return fig.build().string(colorless=not color).rstrip("\n"), axes


def with_x_title(text: Text, title: str, width: int) -> Text:
    """Write the x axis' title at the right end of the last row (the x tick labels) when those cells are blank."""
    rows = text.split("\n", allow_blank=True)
    last = rows[-1]
    last.pad_right(width - len(last.plain))
    cut = width - len(title) - 1
    if title and cut > 0 and not last.plain[cut:].strip():
        rows[-1] = last[:cut] + Text(" " + title)
    return Text("\n").join(rows)


def plot_text(plotted: list[Plotted], width: int, height: int, style: Style) -> Text:
    """The plot as a Text; plotext's notes to stdout/stderr are swallowed so they never scribble on the screen."""
    sink = io.StringIO()
    with _PLOTEXT_LOCK, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            out, axes = build_plot(plotted, width, height, style)
        except Exception as exc:  # a bug in the plotting library must not take the monitor down: show it instead
            return box_message(f"chart error: {exc}", width, height)
    return with_x_title(Text.from_ansi(out) if style.color else Text(out), axes.x_title, width)


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
    unit: str = "",
    percent: bool = False,
    window: int | None = None,
    x_scale: float = 1.0,
) -> Text:
    """Render `lines` into exactly `height` rows of at most `width` cells (or a short hint when too small).

    With `log_x` the lines' steps are `log_x_steps` of positive x values, labelled in decades; with `x_scale`, they
    are x values times `x_scale`, rounded (epochs x 1000), labelled as x values. The y values' `unit`
    follows each y label when it is "%" ("50%"), the title otherwise ("throughput (img/s)"), as `log_y` does
    ("loss (log y)"). With `percent` the
    values are fractions drawn as percent: 0.968 reads 96.8%. With `window`, only the last `window` steps are drawn
    and the title says so ("loss · last 500").
    """
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return Text("enlarge"[: max(width, 0)])
    unit = "%" if percent else unit
    if window:
        lines = last_steps(lines, window)
        title = f"{title} · last {format_step(window)}" if title else f"last {format_step(window)}"
    plotted = [prepare(line, width, log_y, 100.0 if percent else 1.0) for line in lines]
    message = empty_message(plotted, lines, log_y)
    if message:
        return box_message(message, width, height, title)
    y_suffix = unit if unit == "%" else ""
    said = [unit] if unit and not y_suffix else []
    if log_y:  # the y labels alone do not tell a log axis at a glance
        said.append("log y")
    if said:
        title = f"{title} ({', '.join(said)})" if title else f"({', '.join(said)})"
    head = header(title, lines, color, width)
    rows = height - 1 if head.plain else height
    plot = plot_text(plotted, width, rows, Style(x_label, log_y, color, log_x, y_suffix, x_scale))
    return Text("\n").join([head, plot]) if head.plain else plot


def same_lines(a: list[Line], b: list[Line]) -> bool:
    """Whether two lists of lines draw the same: the same labels, styles and values (NaN equal to NaN)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if (x.label, x.color, x.marker, x.dim) != (y.label, y.color, y.marker, y.dim):
            return False
        for u, v in ((getattr(x, k), getattr(y, k)) for k in ARRAYS):
            if (u is None) != (v is None):
                return False
            if u is not None and not np.array_equal(np.asarray(u), np.asarray(v), equal_nan=True):
                return False
    return True


def copied(line: Line) -> Line:
    """The line with copies of its arrays."""
    arrays = {k: None if getattr(line, k) is None else np.array(getattr(line, k)) for k in ARRAYS}
    return replace(line, **arrays)


ARRAYS = ("steps", "values", "low", "high", "nan")


class Chart(CachedLines):
    """A plotext line chart filling the widget; data comes in through `set_lines`.

    Drawings are cached: after changing a line's arrays in place, call `set_lines` again (lines that draw the same
    as the last ones given are not drawn again). `set_window(n)` shows only
    the last n steps of every line (None: all). `toggle_full_screen()` makes the chart fill the screen (with a
    height of 1fr, as the app's CSS gives it) and back: it is drawn again at that size, with more labels.
    """

    ALLOW_MAXIMIZE = True

    def __init__(
        self, *, color: bool | None = None, x_label: str = "step", log_x: bool = False, **kwargs: str | None
    ) -> None:
        super().__init__(color=color, **kwargs)
        self.lines: list[Line] = []
        self.title = ""
        self.log_y = False
        self.unit = ""
        self.percent = False
        self.window: int | None = None  # draw only the last `window` steps; None: every step
        self.x_label = x_label
        self.log_x = log_x
        self.x_scale = 1.0
        self._drawn: tuple[list[Line], tuple] | None = None  # copies of what set_lines was last given, and how

    def set_lines(
        self, lines: list[Line], *, title: str = "", log_y: bool = False, unit: str = "", percent: bool = False
    ) -> None:
        """Replace the lines and redraw; `unit` is the y values' ("%" reads after each y label, others in the title),
        `percent` draws fractions as percent (0.968 reads 96.8%).
        """
        settings = (title, log_y, unit, percent)
        if self._drawn is not None and same_lines(self._drawn[0], lines) and self._drawn[1] == settings:
            return  # nothing to draw again: a compare's validation charts between epochs, say
        self._drawn = ([copied(line) for line in lines], settings)  # copies: a caller may change its arrays in place
        self.lines, self.title, self.log_y, self.unit, self.percent = list(lines), title, log_y, unit, percent
        self.changed()

    def set_x(self, label: str, scale: float = 1.0) -> None:
        """The x axis' title, and the scale of the lines' x (see `render_chart`); redraws when either changed."""
        if (label, scale) != (self.x_label, self.x_scale):
            self.x_label, self.x_scale = label, scale
            self.changed()

    def toggle_full_screen(self) -> bool:
        """Fill the screen with this chart, or give the screen back; True when the chart now fills it.

        The chart itself is maximized, not the pane or tabs it sits in (Textual's default picks the outermost
        container that allows it).
        """
        if self.is_maximized:
            self.screen.minimize()
            return False
        return self.screen.maximize(self, container=False)

    def set_window(self, steps: int | None) -> None:
        """Show only the last `steps` steps of every line (None or 0: all of them), and redraw."""
        self.window = steps or None
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
            unit=self.unit,
            percent=self.percent,
            window=self.window,
            x_scale=self.x_scale,
        )
        return text.split("\n", allow_blank=True)
