"""Pictures at full resolution through a terminal graphics protocol: titled images in a grid, lines of text over
and under them. The Activations pane shows it instead of its half-block drawing where the terminal speaks Sixel or
Kitty's protocol (tui.graphics picks the textual-image widget that draws them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widgets import Static

from tui.captures import overlay
from tui.widgets.base import literal
from tui.widgets.capture import Frame, wrap
from tui.widgets.heatmap import colour_table, heat_rgb, image_rgb

MIN_COLS = 6  # a picture narrower than this is left out (and counted under the grid)


@dataclass
class Panel:
    title: str
    rgb: np.ndarray  # [H, W, 3] uint8


@dataclass
class Sheet:
    """What the view shows: lines over the grid, the pictures, lines under it."""

    head: list[str] = field(default_factory=list)
    panels: list[Panel] = field(default_factory=list)
    under: list[str] = field(default_factory=list)

    def same(self, other: Sheet | None) -> bool:
        return (
            other is not None
            and (self.head, self.under) == (other.head, other.under)
            and [p.title for p in self.panels] == [p.title for p in other.panels]
            and all(np.array_equal(a.rgb, b.rgb) for a, b in zip(self.panels, other.panels, strict=True))
        )


@dataclass(frozen=True)
class Arrangement:
    per_row: int
    cols: int  # cells across each picture
    rows: int  # cells down each picture (its title is one more)
    shown: int


def sheet_of(frame: Frame) -> Sheet | None:
    """The pictures of a frame, for a graphics protocol: the enlarged channel, Grad-CAM, the visualized filters,
    each beside the image where it has one. None for the views that stay in cells (the channel grid, with its
    titles and dead marks; the confusion matrix, a table)."""
    if frame.message:
        return None
    image = image_rgb(frame.image) if frame.image is not None else None
    seen = [Panel("image", image)] if image is not None else []
    if frame.mode == "channel" and frame.channel is not None:
        return Sheet(frame.channel_lines, seen + [Panel("channel", heat_rgb(frame.channel))], frame.image_lines)
    if frame.mode == "gradcam" and frame.image is not None and frame.cams:
        table = colour_table("viridis")
        cams = [Panel(title, image_rgb(overlay(frame.image, cam, table))) for title, cam in frame.cams]
        return Sheet([], seen + cams, frame.image_lines + [frame.probs_line])
    if frame.mode == "visualized" and frame.visual is not None:
        filters = [Panel(title, image_rgb(v)) for title, v in zip(frame.titles, frame.visual, strict=False)]
        return Sheet([frame.heading], filters, [])
    return None


def picture_rows(cols: int, aspect: float, cell: tuple[int, int]) -> int:
    """Cells down a picture `cols` cells across, its height/width `aspect`, in cells `cell` (w, h) pixels."""
    return max(1, round(cols * cell[0] * aspect / cell[1]))


def arrange(count: int, aspect: float, width: int, height: int, cell: tuple[int, int]) -> Arrangement:
    """How `count` pictures fit in `width` x `height` cells, each a title line over it: the layout that makes
    them largest with all shown; when none shows them all at MIN_COLS across, as many as fit at that size."""
    best = None
    for per_row in range(1, count + 1):
        lines = math.ceil(count / per_row)
        cols = (width - (per_row - 1)) // per_row
        rows_room = height // lines - 1
        while cols >= MIN_COLS and picture_rows(cols, aspect, cell) > rows_room:
            cols -= 1
        if cols >= MIN_COLS and (best is None or cols > best.cols):
            best = Arrangement(per_row, cols, picture_rows(cols, aspect, cell), count)
    if best is not None:
        return best
    cols = MIN_COLS
    per_row = max(0, (width + 1) // (cols + 1))
    rows = picture_rows(cols, aspect, cell)
    return Arrangement(per_row, cols, rows, min(count, per_row * max(0, height // (rows + 1))))


def cell_pixels() -> tuple[int, int]:
    """A terminal cell's size in pixels, as textual-image measured it at import (10x20 when it could not)."""
    try:
        from textual_image._terminal import get_cell_size

        size = get_cell_size()
        return (size.width, size.height)
    except Exception:  # noqa: BLE001 - textual-image missing or no terminal: the size it assumes then
        return (10, 20)


def scaled(rgb: np.ndarray, width: int, height: int):
    """The pixels as a PIL image of exactly `width` x `height`, nearest pixel: a map's pixels stay sharp squares
    (textual-image would smooth them when it scales)."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(rgb)).resize((max(1, width), max(1, height)), Image.NEAREST)


class PictureView(Vertical):
    DEFAULT_CSS = """
    PictureView #pictures-head, PictureView #pictures-under { height: auto; }
    PictureView #pictures-grid { height: 1fr; grid-gutter: 0 1; }
    PictureView .panel { height: auto; width: auto; }
    PictureView .panel-title { height: 1; }
    """

    def __init__(self, widget: type, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.widget = widget  # textual-image's SixelImage or TGPImage
        self.sheet: Sheet | None = None
        self._placed: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="pictures-head")
        yield Grid(id="pictures-grid")
        yield Static(id="pictures-under")

    def show(self, sheet: Sheet) -> None:
        if sheet.same(self.sheet):
            return
        self.sheet = sheet
        self._placed = None
        self.place()

    def on_resize(self) -> None:
        self.place()

    def place(self) -> None:
        """Lay the sheet out for the view's size: the text wrapped, the pictures as large as fit."""
        sheet, (width, height) = self.sheet, self.size
        if sheet is None or width < 1 or height < 1:
            return
        if self._placed == (width, height):
            return
        self._placed = (width, height)
        head, under = wrap(sheet.head, width), wrap(sheet.under, width)
        grid = self.query_one("#pictures-grid", Grid)
        cell = cell_pixels()
        panels = sheet.panels
        aspect = max(p.rgb.shape[0] / max(1, p.rgb.shape[1]) for p in panels) if panels else 1.0
        fit = arrange(len(panels), aspect, width, max(0, height - len(head) - len(under) - 1), cell)
        if fit.shown < len(panels):
            under = under + [f"{len(panels) - fit.shown} more not shown: a larger terminal shows them"]
        self.query_one("#pictures-head", Static).update(Text("\n").join(map(literal, head)))
        self.query_one("#pictures-under", Static).update(Text("\n").join(map(literal, under)))
        grid.styles.grid_size_columns = max(1, fit.per_row)
        grid.styles.grid_columns = str(fit.cols)
        grid.styles.grid_rows = str(fit.rows + 1)
        grid.remove_children()
        grid.mount_all(self._panel(p, fit, cell) for p in panels[: fit.shown])

    def _panel(self, panel: Panel, fit: Arrangement, cell: tuple[int, int]) -> Vertical:
        picture = self.widget(scaled(panel.rgb, fit.cols * cell[0], fit.rows * cell[1]))
        picture.styles.width, picture.styles.height = fit.cols, fit.rows
        return Vertical(Static(literal(panel.title[: fit.cols]), classes="panel-title"), picture, classes="panel")
