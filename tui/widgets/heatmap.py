"""Heatmaps, activation-map grids and images drawn with Unicode half-blocks (two pixels per cell), NaN-safe."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np
from rich.color import Color
from rich.style import Style
from rich.text import Span, Text

from engine.export import printable
from tui.widgets.base import CachedLines

HALF_BLOCK = "▀"  # foreground paints the upper pixel, background the lower one
SHADES = " .:-=+*#%@"  # without colour (NO_COLOR): one ASCII character per cell, by value
NAN_CHAR = "×"
NAN_RGB = (255, 0, 255)  # magenta: no colour map here uses it
# matplotlib's viridis sampled at 0, 1/8, ..., 1; interpolated to LEVELS entries
CMAPS = {
    "viridis": [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 145, 140),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    "gray": [(0, 0, 0), (255, 255, 255)],
}
LEVELS = 256
MIN_MAP_PX = 8  # maps shrink down to this many pixels (longer side) before some are left out of the grid
ABSENT = -1  # packed colour of the missing lower pixel under an odd last row


@cache
def colour_table(cmap: str) -> np.ndarray:
    """The colour map as a [LEVELS, 3] uint8 table, linearly interpolated between its stops."""
    if cmap not in CMAPS:
        raise ValueError(f"unknown colour map {cmap!r}; known: {', '.join(CMAPS)}")
    stops = np.array(CMAPS[cmap], dtype=np.float64)
    at = np.linspace(0, len(stops) - 1, LEVELS)
    channels = [np.interp(at, np.arange(len(stops)), stops[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)


def normalize(matrix: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scale to 0..1 between lo and hi (default: the finite min and max), +Inf -> 1, -Inf -> 0, NaN stays NaN.

    A bound that is missing or not finite falls back to the data's own (0 and 1 when nothing is finite).
    """
    m = np.asarray(matrix, dtype=np.float64)
    finite = m[np.isfinite(m)]
    if lo is None or not math.isfinite(lo):
        lo = float(finite.min()) if finite.size else 0.0
    if hi is None or not math.isfinite(hi):
        hi = float(finite.max()) if finite.size else 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        # halves: hi - lo may overflow near 1e308
        t = (m / 2 - lo / 2) / (hi / 2 - lo / 2) if hi > lo else np.where(np.isnan(m), np.nan, 0.0)
    t = np.where(m == np.inf, 1.0, np.where(m == -np.inf, 0.0, t))
    return np.clip(t, 0.0, 1.0)  # NaN passes through np.clip


def pack(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 colours packed into one int64 each (0xRRGGBB)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def to_rgb(t: np.ndarray, cmap: str) -> np.ndarray:
    """Packed colours of normalized values through a colour map; NaN becomes the NaN marker colour."""
    table = pack(colour_table(cmap))
    levels = np.rint(np.nan_to_num(t) * (LEVELS - 1)).astype(np.int64)
    return np.where(np.isnan(t), pack(np.array(NAN_RGB)), table[levels])


@lru_cache(maxsize=65536)
def cell_style(top: int, bottom: int) -> Style:
    """Style of one half-block cell from packed colours; no background when the lower pixel is absent."""
    fg = Color.from_rgb(top >> 16, (top >> 8) & 255, top & 255)
    bg = None if bottom == ABSENT else Color.from_rgb(bottom >> 16, (bottom >> 8) & 255, bottom & 255)
    return Style(color=fg, bgcolor=bg)


def split_pairs(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower pixel rows of each text line; an odd last row gets an ABSENT lower half."""
    top, bottom = packed[0::2], packed[1::2]
    if len(bottom) < len(top):
        bottom = np.vstack([bottom, np.full((1, packed.shape[1]), ABSENT, dtype=packed.dtype)])
    return top, bottom


def half_block_lines(packed: np.ndarray) -> list[Text]:
    """Lines of "▀" cells from a [H, W] array of packed colours, one span per run of equal cells."""
    lines = []
    for top, bottom in zip(*split_pairs(packed), strict=True):
        key = top * (1 << 25) + (bottom + 1)
        starts = np.flatnonzero(np.diff(key, prepend=-1))
        ends = np.append(starts[1:], len(key))
        runs = zip(starts.tolist(), ends.tolist(), strict=True)
        spans = [Span(s, e, cell_style(int(top[s]), int(bottom[s]))) for s, e in runs]
        lines.append(Text(HALF_BLOCK * len(key), spans=spans, end=""))
    return lines


def shade_lines(t: np.ndarray) -> list[Text]:
    """Lines of shade characters, one per cell from the mean of its two pixels; "×" where either is NaN."""
    lines = []
    for i in range(0, t.shape[0], 2):
        pair = t[i : i + 2]
        mean = pair.mean(axis=0)  # NaN when either pixel is NaN
        index = np.rint(np.nan_to_num(mean) * (len(SHADES) - 1)).astype(np.int64)
        chars = np.where(np.isnan(mean), NAN_CHAR, np.array(list(SHADES))[index])
        lines.append(Text("".join(chars.tolist()), end=""))
    return lines


def as_2d(matrix: np.ndarray) -> np.ndarray:
    """The input as a float64 [H, W] array (a vector becomes one row, a scalar one cell)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim < 2:
        return m.reshape(1, -1)
    return m.reshape(m.shape[0], math.prod(m.shape[1:]))


def render_heatmap(
    matrix: np.ndarray, *, lo: float | None = None, hi: float | None = None, color: bool = True, cmap: str = "viridis"
) -> list[Text]:
    """ceil(rows / 2) lines of one cell per column; lo maps to the first colour of `cmap`, hi to the last."""
    m = as_2d(matrix)
    if m.size == 0:
        return []
    t = normalize(m, lo, hi)
    return half_block_lines(to_rgb(t, cmap)) if color else shade_lines(t)


def render_image(image: np.ndarray, color: bool = True) -> list[Text]:
    """An image [3, H, W] (RGB) or [1, H, W] / [H, W] (grey), min-max scaled, as true-colour half-blocks.

    Other channel counts are cut to the first three (RGBA) or the first one (two channels).
    """
    t = image_levels(image)
    if t is None:
        return []
    if not color:
        return shade_lines(t.mean(axis=0))
    return half_block_lines(image_packed(t))


def image_levels(image: np.ndarray) -> np.ndarray | None:
    """The image as [3, H, W] or [1, H, W] min-max scaled to 0..1 (NaN kept), or None when it is not an image."""
    img = np.asarray(image, dtype=np.float64)
    img = img[None] if img.ndim == 2 else img
    if img.ndim != 3 or img.size == 0:
        return None
    return normalize(img[:3] if img.shape[0] >= 3 else img[:1])


def image_packed(t: np.ndarray) -> np.ndarray:
    """Packed colours [H, W] of an image scaled by `image_levels`; a pixel with a NaN channel in the NaN colour."""
    rgb = np.rint(np.nan_to_num(t) * 255).astype(np.uint8)
    rgb = np.repeat(rgb, 3, axis=0) if rgb.shape[0] == 1 else rgb
    packed = pack(np.moveaxis(rgb, 0, -1))
    packed[np.isnan(t).any(axis=0)] = pack(np.array(NAN_RGB))
    return packed


def unpack(packed: np.ndarray) -> np.ndarray:
    """Packed colours back to [..., 3] uint8."""
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1).astype(np.uint8)


def image_rgb(image: np.ndarray) -> np.ndarray | None:
    """An image as `render_image` colours it, as pixels [H, W, 3] uint8 (for a terminal graphics protocol)."""
    t = image_levels(image)
    return None if t is None else unpack(image_packed(t))


def heat_rgb(matrix: np.ndarray, lo: float | None = None, hi: float | None = None, cmap: str = "viridis") -> np.ndarray:
    """A heatmap as `render_heatmap` colours it, as pixels [H, W, 3] uint8."""
    return unpack(to_rgb(normalize(as_2d(matrix), lo, hi), cmap))


@dataclass(frozen=True)
class GridLayout:
    """How a set of maps is laid out: a grid of cols x rows maps, each drawn map_w x map_h pixels."""

    cols: int
    rows: int
    map_w: int
    map_h: int
    shown: int  # maps that fit; the rest are left out


def layout_for(count: int, map_h: int, map_w: int, width: int, height: int, side: int) -> GridLayout:
    """The grid for maps whose longer side is drawn `side` pixels (aspect kept), one blank column between maps."""
    longest = max(map_h, map_w)
    w, h = max(1, round(map_w * side / longest)), max(1, round(map_h * side / longest))
    cols = (width + 1) // (w + 1)
    rows = height // (1 + math.ceil(h / 2))  # a title row, then two pixel rows per text row
    return GridLayout(cols, rows, w, h, min(count, cols * rows))


def grid_layout(count: int, map_h: int, map_w: int, width: int, height: int) -> GridLayout:
    """The largest map size that shows all `count` maps; below MIN_MAP_PX, show as many as fit instead."""
    longest = max(map_h, map_w)
    smallest = min(MIN_MAP_PX, longest)
    for side in range(longest, smallest - 1, -1):
        layout = layout_for(count, map_h, map_w, width, height, side)
        if layout.shown == count:
            return layout
    layout = layout_for(count, map_h, map_w, width, height, smallest)
    for side in range(smallest - 1, 0, -1):  # a tiny pane: shrink further rather than show nothing
        if layout.shown:
            break
        layout = layout_for(count, map_h, map_w, width, height, side)
    return layout


def resize_mean(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Shrink [H, W] to [h, w] by averaging blocks (NaN in a block makes it NaN, so it stays visible)."""
    if m.shape == (h, w):
        return m
    rows = np.arange(h) * m.shape[0] // h
    cols = np.arange(w) * m.shape[1] // w
    sums = np.add.reduceat(np.add.reduceat(m, rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, m.shape[0])), np.diff(np.append(cols, m.shape[1])))
    with np.errstate(invalid="ignore"):
        return sums / counts


def render_map(m: np.ndarray, layout: GridLayout, color: bool) -> list[Text]:
    """One map shrunk to the layout's size, then scaled to its own finite min/max (±Inf clamped to them first)."""
    finite = m[np.isfinite(m)]
    clamped = np.clip(m, finite.min(), finite.max()) if finite.size else m
    return render_heatmap(resize_mean(clamped, layout.map_h, layout.map_w), color=color)


def render_maps(
    maps: np.ndarray,
    width: int,
    height: int,
    *,
    titles: list[str] | None = None,
    color: bool = True,
    heading: str | None = None,
    total: int | None = None,
    noun: str = "channels",
) -> list[Text]:
    """As many maps [C, H, W] as fit in width x height cells, in a grid, each with its title (default: its index).

    With a `heading`, the first line says what the grid is, how many of the `total` maps (default: C) it shows,
    and its colour scale.
    """
    arr = np.asarray(maps, dtype=np.float64)  # float16 activations: averaging in float16 would overflow
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.size == 0:
        return [Text("no maps"[: max(width, 0)])]
    lines = height - (heading is not None)
    layout = grid_layout(arr.shape[0], arr.shape[1], arr.shape[2], width, lines)
    if layout.shown == 0:
        return [Text("enlarge"[: max(width, 0)])]
    names = titles if titles is not None else [str(i) for i in range(arr.shape[0])]
    out: list[Text] = []
    if heading is not None:
        total = max(total or 0, arr.shape[0])
        out.append(grid_heading(heading, layout.shown, total, noun, arr[: layout.shown], width, color))
    for first in range(0, layout.shown, layout.cols):
        indices = range(first, min(first + layout.cols, layout.shown))
        out.append(title_row([names[i] if i < len(names) else "" for i in indices], layout.map_w, color))
        blocks = [render_map(arr[i], layout, color) for i in indices]
        out.extend(Text(" ").join(parts) for parts in zip(*blocks, strict=True))
    return out


def colour_scale(color: bool, cmap: str = "viridis", cells: int = 8) -> Text:
    """The colour map from its lowest to its highest colour in `cells` cells (shades without colour)."""
    if not color:
        return Text("".join(SHADES[1 + round(i * (len(SHADES) - 2) / max(1, cells - 1))] for i in range(cells)))
    table = colour_table(cmap)[np.linspace(0, LEVELS - 1, cells).round().astype(int)]
    return Text.assemble(*(("█", Style(color=Color.from_rgb(*map(int, rgb)))) for rgb in table))


def grid_heading(label: str, shown: int, total: int, noun: str, maps: np.ndarray, width: int, color: bool) -> Text:
    """`conv1 · 18 of 32 channels · min ████ max per map · values -0.41 to 3.2`: the parts that fit the width."""
    text = Text(printable(label))
    count = Text(f"{shown} of {total} {noun}" if shown < total else f"{total} {noun}")
    finite = maps[np.isfinite(maps)]
    values = Text(f"values {g(float(finite.min()))} to {g(float(finite.max()))}" if finite.size else "")
    scales = [  # the colour scale, shorter until it fits
        Text.assemble("min ", colour_scale(color, cells=cells), end)
        for end in (" max per map", " max")
        for cells in range(8, 2, -1)
    ]
    for choices in ([count], scales, [values]):
        for part in choices:
            if part.plain and len(text) + 3 + len(part) <= width:
                text = Text.assemble(text, " · ", part)
                break
    text.truncate(width)
    text.end = ""
    return text


def g(value: float) -> str:
    return f"{value:.2g}"


def title_row(names: list[str], map_w: int, color: bool) -> Text:
    """Titles (a store's layer names: control characters escaped) cut or padded to the map width, one blank column
    apart."""
    text = Text(" ".join(printable(name)[:map_w].ljust(map_w) for name in names), end="")
    if color:
        text.stylize("dim")
    return text


class Heatmap(CachedLines):
    """A heatmap of a matrix (e.g. layers x time), stretched to fill the widget.

    With row labels, each row's label is at its left; with column steps, the bottom line is the step axis. Columns
    that do not fit are averaged in groups (the newest column always last); rows that do not fit are left out.
    """

    matrix: np.ndarray = np.empty((0, 0))
    lo: float | None = None
    hi: float | None = None
    rows: list[str] | None = None
    steps: list[int] | None = None
    columns: list[Text] | None = None

    def set_matrix(
        self,
        matrix: np.ndarray,
        *,
        lo: float | None = None,
        hi: float | None = None,
        rows: list[str] | None = None,
        steps: list[int] | None = None,
        columns: list[Text] | None = None,
    ) -> None:
        """Replace the matrix (its fixed colour range, row labels, and the step of each column or a short label of
        each: a compare's runs) and redraw."""
        self.matrix, self.lo, self.hi = as_2d(matrix), lo, hi
        self.rows, self.steps, self.columns = rows, steps, columns
        self.changed()

    def draw(self, width: int, height: int, color: bool) -> list[Text]:
        m = self.matrix
        named = self.columns is not None and len(self.columns) == m.shape[1] and height >= 3
        axis = named or (self.steps is not None and len(self.steps) == m.shape[1] and height >= 3)
        label_w = min(max(map(len, map(printable, self.rows or [""]))), width // 4) if self.rows else 0
        cols, lines = width - (label_w + 1 if label_w else 0), height - axis
        if cols <= 0 or lines <= 0 or m.size == 0:
            return []
        lo, hi = self.lo, self.hi
        finite = m[np.isfinite(m)]
        if finite.size:  # a missing bound comes from the whole matrix, not just the visible part
            lo = float(finite.min()) if lo is None else lo
            hi = float(finite.max()) if hi is None else hi
        # rows: whole text lines each when there is room, else the pixel rows shared out; beyond that, cut
        r = m.shape[0]
        shown = m[: 2 * lines]
        if r <= lines:
            pixel_counts = 2 * np.diff(np.arange(r + 1) * lines // r)
        else:
            pixel_counts = np.diff(np.arange(len(shown) + 1) * 2 * lines // len(shown))
        first_pixels = np.concatenate([[0], np.cumsum(pixel_counts)[:-1]])
        # columns: newer columns when they do not fit in groups of one; otherwise stretched to the width
        firsts = group_starts(shown.shape[1], cols)
        grouped = np.add.reduceat(np.nan_to_num(shown, nan=0.0, posinf=0.0, neginf=0.0), firsts, axis=1)
        sizes = np.diff(np.append(firsts, shown.shape[1]))
        with np.errstate(invalid="ignore"):
            averaged = grouped / sizes
        for j, (a, n) in enumerate(zip(firsts, sizes, strict=True)):  # NaN and ±Inf are shown, not averaged away
            block = shown[:, a : a + n]
            for bad in (np.nan, np.inf, -np.inf):
                hit = np.isnan(block).any(axis=1) if bad is np.nan else (block == bad).any(axis=1)
                averaged[hit, j] = bad
        reps = max(1, cols // len(firsts))
        pixels = np.repeat(averaged, pixel_counts, axis=0)
        out = render_heatmap(np.repeat(pixels, reps, axis=1), lo=lo, hi=hi, color=color)
        if label_w:  # each row's name on the line where it starts (of two starting on a line, the upper one)
            labels = [""] * len(out)
            for name, first in reversed(list(zip(self.rows or [], first_pixels.tolist(), strict=False))):
                labels[first // 2] = printable(name)
            style = "dim" if color else ""
            out = [
                Text(label[:label_w].ljust(label_w) + " ", style=style, end="") + line
                for label, line in zip(labels + [""] * len(out), out, strict=False)
            ]
        if named and self.columns is not None:
            out.append(column_labels(self.columns, firsts, reps, label_w + 1 if label_w else 0))
        elif axis and self.steps is not None:
            shown_steps = [self.steps[a] for a in firsts]
            shown_steps[-1] = self.steps[-1]  # the axis ends at the newest step, in the last group of columns
            line = step_axis(shown_steps, reps, label_w + 1 if label_w else 0, width)
            if label_w and len(shown) < r:  # the rows that did not fit are said, under the labels
                line = Text(f"first {len(shown)} of {r}"[:label_w].ljust(label_w), end="") + line[label_w:]
            out.append(line)
        return out


def group_starts(n: int, cols: int) -> np.ndarray:
    """Where each of at most `cols` groups of n columns starts: equal groups, the last one ending at n."""
    groups = min(n, cols)
    return (np.arange(groups) * n) // groups


def column_labels(labels: list[Text], firsts: np.ndarray, reps: int, indent: int) -> Text:
    """Each shown column's label centred under it (cut to its width); grouped columns show their first's."""
    out = Text(" " * indent, end="")
    for a in firsts.tolist():
        label = labels[a][:reps] if reps else Text("")
        pad = reps - label.cell_len
        out.append(" " * (pad // 2))
        out.append_text(label)
        out.append(" " * (pad - pad // 2))
    return out


def step_axis(steps: list[int], reps: int, indent: int, width: int) -> Text:
    """`step 120 ... 500` under the columns: the first column's step at the left, the last one's at the right."""
    first, last = f"step {steps[0]:,}", f"{steps[-1]:,}"
    span = min(width - indent, len(steps) * reps)
    if len(first) + len(last) + 1 > span:
        return Text((" " * indent + last)[:width], end="")
    middle = ""
    if len(steps) > 2 and span > 3 * (len(first) + len(last)):
        mid = f"{steps[len(steps) // 2]:,}"
        at = (len(steps) // 2) * reps - len(first)
        middle = " " * max(1, at - len(mid) // 2) + mid
    gap = span - len(first) - len(middle) - len(last)
    return Text(" " * indent + first + middle + " " * max(1, gap) + last, end="")


class MapGrid(CachedLines):
    """A grid of activation maps or filters [C, H, W], each scaled to its own range."""

    maps: np.ndarray = np.empty((0, 0, 0))
    titles: list[str] | None = None

    heading: str | None = None
    total: int | None = None
    noun = "channels"

    def set_maps(
        self,
        maps: np.ndarray,
        titles: list[str] | None = None,
        *,
        heading: str | None = None,
        total: int | None = None,
        noun: str = "channels",
    ) -> None:
        """Replace the maps (their titles, and the heading over the grid with how many of `total` it shows)."""
        self.maps, self.titles = np.asarray(maps), titles
        self.heading, self.total, self.noun = heading, total, noun
        self.changed()

    def draw(self, width: int, height: int, color: bool) -> list[Text]:
        return render_maps(
            self.maps,
            width,
            height,
            titles=self.titles,
            color=color,
            heading=self.heading,
            total=self.total,
            noun=self.noun,
        )


class Picture(CachedLines):
    """One image ([3, H, W] or [1, H, W]) in true colour half-blocks, shrunk to fit, under a title."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._image: np.ndarray | None = None
        self._title = ""

    def set_image(self, image: np.ndarray | None, title: str = "") -> None:
        self._image, self._title = image, title
        self.changed()

    def draw(self, width: int, height: int, color: bool) -> list[Text]:
        if self._image is None or self._image.ndim != 3 or height < 2:
            return [Text(printable(self._title) or "no image yet")]
        image = self._image
        rows, cols = max(1, 2 * (height - 1)), max(1, width)
        step = max(1, -(-image.shape[1] // rows), -(-image.shape[2] // cols))  # ceil: nearest-pixel shrink
        return [Text(printable(self._title), style="bold")] + render_image(image[:, ::step, ::step], color=color)
