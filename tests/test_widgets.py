"""The render widgets: pure render functions (exact output, NaN/Inf safety, sizes) and the Textual widgets mounted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from tui.widgets import (
    Chart,
    Heatmap,
    Line,
    MapGrid,
    Sparkline,
    render_chart,
    render_heatmap,
    render_image,
    render_maps,
    sparkline,
)
from tui.widgets.heatmap import grid_layout

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")
FIRST_VIRIDIS, LAST_VIRIDIS = Color.from_rgb(68, 1, 84), Color.from_rgb(253, 231, 37)
MAGENTA = Color.from_rgb(255, 0, 255)


def lines_of(text: Text) -> list[str]:
    return text.plain.split("\n")


def style_at(text: Text, index: int) -> Style:
    """The combined style of the character at `index`."""
    return sum(
        (Style.parse(s.style) if isinstance(s.style, str) else s.style for s in text.spans if s.start <= index < s.end),
        Style(),
    )


def has_colour(text: Text) -> bool:
    return any(isinstance(s.style, Style) and (s.style.color or s.style.bgcolor) for s in text.spans)


def y_tick_values(text: Text) -> list[float]:
    """The numbers on the y axis: whatever stands left of a '┤' tick."""
    return [float(line.split("┤")[0]) for line in lines_of(text) if "┤" in line and line.split("┤")[0].strip()]


def noisy_line(label: str = "train", n: int = 500, color: str = "cyan", seed: int = 0) -> Line:
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    return Line(label, steps, np.exp(-steps / 200) + 0.1 * rng.random(n), color)


# sparkline


def test_sparkline_maps_the_range_onto_the_eight_bars():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8).plain == "▁▂▃▄▅▆▇█"


def test_sparkline_marks_nan_and_infinities():
    text = sparkline([0, NAN, 7, INF, -INF], 10)
    assert text.plain == "▁×█↑↓"
    assert style_at(text, 1).color == Color.parse("red")


def test_sparkline_empty_and_zero_width():
    assert sparkline([], 10).plain == ""
    assert sparkline(np.array([]), 10).plain == ""
    assert sparkline([1, 2, 3], 0).plain == ""


def test_sparkline_flat_series_sits_in_the_middle():
    assert sparkline([3, 3, 3], 10).plain == "▄▄▄"


def test_sparkline_long_input_keeps_each_bucket_max():
    values = np.zeros(1000)
    values[555] = 1.0
    text = sparkline(values, 10)
    assert text.plain == "▁▁▁▁▁█▁▁▁▁"


def test_sparkline_long_input_respects_the_width_and_keeps_nan_visible():
    values = np.arange(10_000, dtype=float)
    values[123] = NAN
    text = sparkline(values, 37)
    assert len(text.plain) == 37
    assert text.plain[0] == "×" and text.plain[-1] == "█"


def test_sparkline_log_scale_and_non_positive_values():
    assert sparkline([1, 10, 100, 0], 4, log=True).plain == "▁▅█↓"


# chart


def test_chart_has_the_requested_size_title_and_ticks():
    text = render_chart([noisy_line(), noisy_line("val", color="orange", seed=1)], 120, 20, title="loss")
    rows = lines_of(text)
    assert len(rows) == 20
    assert all(len(row) <= 120 for row in rows)
    assert "loss" in rows[0] and "train" in rows[0] and "val" in rows[0]
    assert "step" in text.plain
    assert "100" in text.plain  # an x tick
    assert y_tick_values(text)


def test_chart_marks_nan_and_infinities_without_raising():
    line = noisy_line()
    line.values[100], line.values[300], line.values[400] = NAN, INF, -INF
    text = render_chart([line], 100, 16, title="loss")
    assert len(lines_of(text)) == 16
    for marker in "×▲▼":
        assert marker in text.plain


def test_chart_all_nan_and_empty_give_a_message():
    all_nan = render_chart([Line("a", np.arange(50), np.full(50, NAN))], 40, 8)
    assert "all values are NaN" in all_nan.plain
    assert len(lines_of(all_nan)) == 8
    assert "no data yet" in render_chart([], 40, 8).plain
    assert "no data yet" in render_chart([Line("a", np.array([]), np.array([]))], 40, 8).plain


def test_chart_without_colour_is_plain():
    lines = [noisy_line(), noisy_line("val", color="orange", seed=1)]
    assert has_colour(render_chart(lines, 80, 16, title="loss"))
    plain = render_chart(lines, 80, 16, title="loss", color=False)
    assert plain.spans == [] and not has_colour(plain)
    assert "\x1b" not in plain.plain


def test_chart_keeps_a_single_spike_among_100k_points():
    rng = np.random.default_rng(0)
    values = 1.0 + 0.01 * rng.random(100_000)
    values[54_321] = 1e6
    text = render_chart([Line("loss", np.arange(100_000), values)], 80, 16, color=False)
    assert max(y_tick_values(text)) >= 5e5
    top_row = next(line for line in lines_of(text) if line.lstrip().startswith("1e6┤"))
    assert set(top_row.split("┤")[1]) & set("▖▗▘▙▚▛▜▝▞▟▀▄▌▐█")  # the spike is drawn, not just the axis stretched


def test_chart_log_axis_drops_non_positive_values():
    steps = np.arange(200)
    values = 10.0 ** np.linspace(-6, 2, 200)
    values[::7] = 0.0
    values[3] = -1.0
    text = render_chart([Line("grad", steps, values)], 60, 14, log_y=True, color=False)
    ticks = y_tick_values(text)
    assert ticks and min(ticks) < 1e-3 and max(ticks) >= 10
    assert "no positive values" in render_chart([Line("g", steps, -np.ones(200))], 60, 14, log_y=True).plain


def test_chart_is_quiet_on_a_flat_series(capsys):
    text = render_chart([Line("lr", np.arange(100), np.full(100, 0.1))], 60, 10, color=False)
    assert "0.1" in text.plain
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("size", [(9, 20), (80, 2), (0, 0)])
def test_chart_too_small_asks_to_enlarge(size):
    assert render_chart([noisy_line()], *size).plain == "enlarge"[: size[0]]


@pytest.mark.parametrize("size", [(10, 3), (12, 4), (20, 6), (30, 9)])
def test_chart_small_sizes_fit(size):
    width, height = size
    rows = lines_of(render_chart([noisy_line()], width, height, title="a long title that does not fit"))
    assert len(rows) == height
    assert all(len(row) <= width for row in rows)


# heatmap


def test_heatmap_pairs_rows_into_half_blocks_with_the_colour_map_ends():
    matrix = np.arange(12, dtype=float).reshape(4, 3)
    lines = render_heatmap(matrix, lo=0, hi=11)
    assert [line.plain for line in lines] == ["▀▀▀", "▀▀▀"]
    assert style_at(lines[0], 0).color.triplet == FIRST_VIRIDIS.triplet
    assert style_at(lines[1], 2).bgcolor.triplet == LAST_VIRIDIS.triplet


def test_heatmap_odd_rows_leave_the_last_lower_half_empty():
    lines = render_heatmap(np.ones((3, 2)))
    assert len(lines) == 2
    assert style_at(lines[1], 0).bgcolor is None


def test_heatmap_marks_nan_and_clamps_infinities():
    matrix = np.array([[NAN, INF, -INF], [0.0, 1.0, 0.5]])
    line = render_heatmap(matrix, lo=0, hi=1)[0]
    assert style_at(line, 0).color.triplet == MAGENTA.triplet
    assert style_at(line, 1).color.triplet == LAST_VIRIDIS.triplet
    assert style_at(line, 2).color.triplet == FIRST_VIRIDIS.triplet
    assert render_heatmap(matrix, lo=0, hi=1, color=False)[0].plain[0] == "×"


def test_heatmap_constant_and_all_nan_matrices():
    lines = render_heatmap(np.full((2, 4), 5.0))
    assert style_at(lines[0], 3).color.triplet == FIRST_VIRIDIS.triplet
    assert render_heatmap(np.full((2, 2), NAN), color=False)[0].plain == "××"
    assert render_heatmap(np.empty((0, 0))) == []


def test_heatmap_without_colour_uses_the_ascii_ramp():
    lines = render_heatmap(np.array([[0.0, 0.5, 0.6, 1.0], [0.0, 0.5, 0.6, 1.0]]), color=False)
    assert [line.plain for line in lines] == [" =+@"]  # " .:-=+*#%@": any terminal draws it
    assert not has_colour(lines[0])


# maps and images


def test_maps_32_channels_all_fit_at_80x24():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(32, 32, 32)).astype(np.float16)
    maps[3, 4, 5] = NAN
    maps[5] = 0.0
    lines = render_maps(maps, 80, 24)
    assert len(lines) <= 24
    assert all(line.cell_len <= 80 for line in lines)
    titles = " ".join(line.plain for line in lines)
    assert " 0 " in f" {titles} " and "31" in titles
    assert grid_layout(32, 32, 32, 80, 24).shown == 32


def test_maps_show_what_fits_with_their_titles():
    maps = np.random.default_rng(1).random((64, 32, 32))
    titles = [f"ch{i}" for i in range(64)]
    lines = render_maps(maps, 60, 20, titles=titles, color=False)
    assert len(lines) <= 20 and all(len(line.plain) <= 60 for line in lines)
    assert "ch0" in lines[0].plain
    assert 0 < grid_layout(64, 32, 32, 60, 20).shown < 64


def test_maps_tiny_and_degenerate_inputs():
    maps = np.ones((4, 8, 8))
    lines = render_maps(maps, 10, 3, color=False)
    assert 0 < len(lines) <= 3 and all(len(line.plain) <= 10 for line in lines)
    assert render_maps(np.empty((0, 4, 4)), 40, 10)[0].plain == "no maps"
    assert render_maps(maps, 2, 1)[0].plain == "en"


def test_image_rgb_grey_and_nan():
    image = np.zeros((3, 4, 4))
    image[0] = 1.0  # pure red
    lines = render_image(image)
    assert [line.plain for line in lines] == ["▀▀▀▀"] * 2
    assert style_at(lines[0], 0).color.triplet == (255, 0, 0)
    grey = render_image(np.linspace(0, 1, 8).reshape(1, 2, 4))
    assert len(set(style_at(grey[0], 3).color.triplet)) == 1
    image[1, 0, 0] = NAN
    assert style_at(render_image(image)[0], 0).color.triplet == MAGENTA.triplet
    assert render_image(image, color=False)[0].plain[0] == "×"


# the Textual widgets


class WidgetsApp(App):
    """All four widgets stacked, as a screen would hold them."""

    CSS = "Chart { height: 9; } Heatmap { height: 7; } MapGrid { height: 1fr; }"

    def compose(self) -> ComposeResult:
        yield Sparkline(id="spark")
        yield Chart(id="chart")
        yield Heatmap(id="heat")
        yield MapGrid(id="maps")


def fill_with_bad_values(app: App) -> None:
    values = np.linspace(0, 1, 300)
    values[[10, 20, 30]] = [NAN, INF, -INF]
    app.query_one(Sparkline).set_values(values)
    app.query_one(Chart).set_lines([Line("loss", np.arange(300), values)], title="loss")
    grads = np.log10(np.random.default_rng(0).random((64, 200)))
    grads[5, 5] = NAN
    app.query_one(Heatmap).set_matrix(grads, lo=-3, hi=0)
    maps = np.random.default_rng(0).random((16, 16, 16)).astype(np.float16)
    maps[0, 0, 0] = np.float16("nan")
    app.query_one(MapGrid).set_maps(maps)


def painted(widget: Widget) -> str:
    """The text Textual paints for the widget."""
    strips = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return "\n".join(strip.text for strip in strips)


def run_app(size: tuple[int, int], fill: bool) -> dict[str, str]:
    """Mount the widgets at `size`, optionally feed them bad values, and return what each renders."""

    async def main() -> dict[str, str]:
        app = WidgetsApp()
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            if fill:
                fill_with_bad_values(app)
                await pilot.pause()
            return {w.id: painted(w) for w in app.query("#spark, #chart, #heat, #maps")}

    return asyncio.run(main())


def test_widgets_mount_empty_at_80x24():
    rendered = run_app((80, 24), fill=False)
    assert rendered["spark"].strip() == ""
    assert "no data yet" in rendered["chart"]


def test_widgets_render_nan_data_at_80x24():
    rendered = run_app((80, 24), fill=True)
    assert "×" in rendered["spark"] and "↑" in rendered["spark"]
    assert "loss" in rendered["chart"]
    assert "▀" in rendered["heat"] and "▀" in rendered["maps"]


def test_widgets_render_at_a_tiny_size():
    run_app((10, 3), fill=True)


def test_chart_widget_follows_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")

    async def main() -> list[Strip]:
        app = WidgetsApp()
        async with app.run_test(size=(80, 24)) as pilot:
            app.query_one(Chart).set_lines([noisy_line()], title="loss")
            await pilot.pause()
            return app.query_one(Chart).strips()

    strips = asyncio.run(main())
    assert "loss" in strips[0].text
    assert not any(segment.style and segment.style.color for strip in strips for segment in strip)
