"""The Activations pane's drawing: a layer's channels for one image, one channel enlarged, Grad-CAM over the image,
and the confusion matrix as a table of counts coloured by share. One widget, its mode picked by the pane."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.color import Color
from rich.style import Style
from rich.text import Text

from engine.export import printable
from tui.captures import overlay
from tui.widgets.base import CachedLines
from tui.widgets.heatmap import colour_table, render_heatmap, render_image, render_maps

SIDE = 18  # columns of the image beside the maps


@dataclass
class Frame:
    """Everything one drawing of the capture view needs; made by the pane from the run's state."""

    mode: str = "maps"
    message: str = ""  # said instead of a drawing when there is nothing to draw
    image: np.ndarray | None = None  # [3, H, W] (or [1, H, W]) the captured image
    image_lines: list[str] = field(default_factory=list)  # what is said under the image: its class, the guess
    maps: np.ndarray | None = None  # [C, H, W] of one image, in the order shown
    titles: list[str] = field(default_factory=list)
    heading: str = ""
    total: int | None = None  # the layer's channel count (maps may hold fewer)
    channel: np.ndarray | None = None  # [H, W] the enlarged channel
    channel_lines: list[str] = field(default_factory=list)
    cams: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (title, [H, W] in 0..1)
    probs_line: str = ""
    matrix: np.ndarray | None = None  # K x K counts
    classes: tuple[str, ...] = ()
    pairs: list[str] = field(default_factory=list)
    matrix_title: str = ""
    visual: np.ndarray | None = None  # [F, C, H, W] in 0..1: what each filter responds to (titles: the filters)


class CaptureView(CachedLines):
    frame = Frame(message="no capture yet")

    def set_frame(self, frame: Frame) -> None:
        self.frame = frame
        self.changed()

    def draw(self, width: int, height: int, color: bool) -> list[Text]:
        f = self.frame
        if width < 20 or height < 4:
            return [Text("enlarge the terminal to see the maps"[: max(0, width)])]
        if f.message:
            return [Text(printable(f.message)[:width])]
        if f.mode == "confusion":
            return confusion_lines(f, width, height, color)
        if f.mode == "gradcam":
            return gradcam_lines(f, width, height, color)
        if f.mode == "visualized" and f.visual is not None:
            from tui.visual import draw

            return ([Text(printable(f.heading)[:width])] + draw(f.visual, f.titles, width, color))[:height]
        side = min(SIDE, width // 4)
        left = picture_lines(f.image, f.image_lines, side, height, color)
        if f.mode == "channel" and f.channel is not None:
            right = enlarged_lines(f.channel, f.channel_lines, width - side - 1, height, color)
        elif f.maps is not None and f.maps.size:
            right = render_maps(
                f.maps, width - side - 1, height, titles=f.titles, color=color, heading=f.heading, total=f.total
            )
        else:
            right = [Text(printable(f.heading or "no maps for this layer")[: width - side - 1])]
        return beside(left, side, right, height)


def beside(left: list[Text], left_width: int, right: list[Text], height: int) -> list[Text]:
    """Two columns of lines side by side, the left one padded to its width, one blank column between."""
    out = []
    for i in range(min(height, max(len(left), len(right)))):
        a = left[i].copy() if i < len(left) else Text("")
        a.truncate(left_width, pad=True)
        line = Text.assemble(a, " ", right[i] if i < len(right) else Text(""))
        line.end = ""
        out.append(line)
    return out


def fit_image(image: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """The image [C, H, W] shrunk by whole steps (nearest pixel) to at most `cols` x 2*`rows` pixels."""
    step = max(1, -(-image.shape[1] // max(1, 2 * rows)), -(-image.shape[2] // max(1, cols)))
    return image[:, ::step, ::step]


def picture_lines(image: np.ndarray | None, said: list[str], width: int, height: int, color: bool) -> list[Text]:
    """The image in half-blocks, as large as `width` allows, then what is said about it, wrapped to the width."""
    if image is None or image.ndim != 3:
        return [Text("no image")]
    words = [Text(printable(line)[:width]) for line in wrap(said, width)]
    rows = max(1, min(width // 2, height - len(words)))
    return render_image(fit_image(image, width, rows), color=color) + words


def wrap(lines: list[str], width: int) -> list[str]:
    out = []
    for line in lines:
        while len(line) > width:
            cut = line.rfind(" ", 0, width + 1)
            cut = cut if cut > 0 else width
            out.append(line[:cut])
            line = line[cut:].lstrip()
        out.append(line)
    return out


def enlarged_lines(channel: np.ndarray, said: list[str], width: int, height: int, color: bool) -> list[Text]:
    """One channel [H, W] as large as fits (whole-pixel scaling, two pixels a line), under its description."""
    head = [Text(printable(line)[:width]) for line in wrap(said, width)]
    rows = max(1, height - len(head))
    h, w = channel.shape
    scale = max(1, min(width // max(1, w), (2 * rows) // max(1, h)))
    big = np.repeat(np.repeat(channel, scale, axis=0), scale, axis=1)
    if big.shape[1] > width or big.shape[0] > 2 * rows:  # larger than the space even at scale 1: shrink
        big = fit_image(big[None], width, rows)[0]
    return head + render_heatmap(big, color=color)


def gradcam_lines(f: Frame, width: int, height: int, color: bool) -> list[Text]:
    """The image and Grad-CAM over it for each class asked, side by side, each with its title; the likeliest
    classes under them."""
    if f.image is None or not f.cams:
        return [Text("no Grad-CAM in this capture"[:width])]
    panels = [("image", None), *f.cams]
    each = max(4, (width - (len(panels) - 1)) // len(panels))
    rows = max(1, min(each // 2, height - 3))
    table = colour_table("viridis")
    columns = []
    for title, cam in panels:
        if cam is None:
            picture = render_image(fit_image(f.image, each, rows), color=color)
        elif color:
            picture = render_image(fit_image(overlay(f.image, cam, table), each, rows), color=True)
        else:  # no colour: the map alone, in the ASCII ramp
            picture = render_heatmap(fit_image(cam[None], each, rows)[0], lo=0, hi=1, color=False)
        columns.append([Text(printable(title)[:each], style="bold" if color else "")] + picture)
    lines = columns[0]
    used = each
    for column in columns[1:]:
        lines = beside(lines, used, column, height)
        used += 1 + each
    out = lines + [Text(printable(line)[:width]) for line in wrap(f.image_lines + [f.probs_line], width)]
    return out[:height]


def confusion_lines(f: Frame, width: int, height: int, color: bool) -> list[Text]:
    """The confusion matrix: a row per true class, a column per predicted class, each cell its count coloured by
    its share of the row; then the most frequent mistakes."""
    m = f.matrix
    if m is None or m.size == 0:
        return [Text("no confusion matrix yet: it is counted at each validation"[:width])]
    k = m.shape[0]
    names = [f.classes[i] if i < len(f.classes) else str(i) for i in range(k)]
    cell = max(4, len(f"{int(m.max()):,}") + 1)
    label = min(max(len(n) for n in names), max(3, width - k * cell - 1), 14)
    if label + 1 + k * cell > width:  # too many classes for the width: numbers for names, narrow cells
        names, cell = [str(i) for i in range(k)], max(3, len(f"{int(m.max())}") + 1)
        label = len(str(k - 1))
    out = [Text(printable(line)[:width], style="bold" if color else "") for line in wrap([f.matrix_title], width)]
    header = " " * (label + 1) + "".join(printable(n)[: cell - 1].rjust(cell - 1) + " " for n in names)
    out.append(Text(header[:width], style="dim" if color else ""))
    table = colour_table("viridis")
    sums = m.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(sums > 0, m / sums, 0.0)
    for i in range(k):
        if len(out) >= height - 1:
            out.append(Text(f"... {k - i} more classes"[:width]))
            break
        line = Text(printable(names[i])[:label].rjust(label) + " ", style="dim" if color else "", end="")
        for j in range(k):
            text = f"{m[i, j]:,.0f}".rjust(cell - 1) + " "
            if color:
                rgb = table[int(round(shares[i, j] * 255))]
                dark = 0.3 * rgb[0] + 0.6 * rgb[1] + 0.1 * rgb[2] < 128
                fg = Color.from_rgb(255, 255, 255) if dark else Color.from_rgb(0, 0, 0)
                line.append(text, Style(color=fg, bgcolor=Color.from_rgb(*map(int, rgb)), bold=i == j))
            else:
                line.append(text if i != j else text[:-1] + "*")
        line.truncate(width)
        out.append(line)
    room = height - len(out)
    if room > 0 and f.pairs:
        said = "worst: " + "; ".join(f.pairs)
        out += [Text(line[:width]) for line in wrap([said], width)[:room]]
    return out
