"""CachedLines: a widget drawn by a pure function into lines of Text, cached and handed to Textual as strips."""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from engine.export import printable


def literal(value: object, style: str | Style = "") -> Text:
    """A string from a store as Text: no markup is read in it, and its control characters show as escapes."""
    return Text(printable(value), style=style)


def as_style(style: str | Style) -> Style:
    return Style.parse(style) if isinstance(style, str) else style


def text_to_strip(text: Text) -> Strip:
    """One line of Text as a Strip, one segment per span: our lines (half-blocks, plotext runs) have spans that do
    not overlap, and cutting them directly is ~10x cheaper than Textual's general conversion of a Text.
    """
    plain, base = text.plain, as_style(text.style)
    segments, pos = [], 0
    for span in sorted(text.spans, key=lambda s: s.start):
        start = max(span.start, pos)  # an overlapping span (not made here) loses its overlap, never raises
        if start >= span.end:
            continue
        if start > pos:
            segments.append(Segment(plain[pos:start], base))
        style = as_style(span.style)
        segments.append(Segment(plain[start : span.end], base + style if base else style))
        pos = span.end
    if pos < len(plain):
        segments.append(Segment(plain[pos:], base))
    return Strip(segments)


class CachedLines(Widget):
    """Subclasses implement `draw(width, height, color) -> list[Text]`; their data setters call `changed()`.

    Textual asks for lines on every repaint (scrolls, focus, other widgets changing); drawing a chart or a heatmap
    costs milliseconds, so the strips are kept until the data, the size or the colour mode changes.
    """

    def __init__(
        self, *, color: bool | None = None, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.color = color  # None: follow the app (no colour under NO_COLOR)
        self._version = 0  # bumped by changed(), part of the cache key
        self._cache: tuple[tuple[int, int, int, bool], list[Strip]] | None = None

    def changed(self) -> None:
        """Drop the cached drawing and repaint; called by the data setters."""
        self._version += 1
        self.refresh()

    def strips(self) -> list[Strip]:
        """The widget's lines at its current size, drawn again only when something they depend on changed."""
        color = self.color if self.color is not None else not self.app.no_color
        key = (self._version, self.size.width, self.size.height, color)
        if self._cache is None or self._cache[0] != key:
            lines = self.draw(self.size.width, self.size.height, color)
            self._cache = (key, [text_to_strip(line) for line in lines[: self.size.height]])
        return self._cache[1]

    def render_line(self, y: int) -> Strip:
        strips = self.strips()
        if y < len(strips):
            return strips[y].crop(0, self.size.width)
        return Strip.blank(self.size.width, self.visual_style.rich_style)  # Textual's filters need a style here

    def draw(self, width: int, height: int, color: bool) -> list[Text]:
        """The widget's content for a width x height area, one Text per line."""
        raise NotImplementedError
