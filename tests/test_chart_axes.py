"""Chart axes that can be read at 80x24 (issue 13): enough y and x labels, units, percent, coloured legends."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from rich.color import Color
from rich.text import Text
from textual.app import App, ComposeResult

from tests.runs import write_run
from tui.app import MiranteApp
from tui.sources import FollowSource
from tui.widgets import Chart, Line, render_chart

# the sizes the Overview gives its charts at 80x24 (38x7 to 40x9) and at 160x48 (80x20)
SIZES = [(38, 7), (39, 8), (40, 8), (40, 9), (80, 20)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("axes") / "run.mirante"
    write_run(path, steps=2500)
    return path


def overview(store, size: tuple[int, int]) -> dict[str, Text]:
    """The Overview's charts once the whole run is read, as Text (one row a strip, with its styles)."""

    async def main() -> dict[str, Text]:
        app = MiranteApp(FollowSource(store), store=store)
        async with app.run_test(size=size) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.source.done and app.state.ended is not None:
                    break
            await pilot.pause(0.2)
            charts = {}
            for name in ("loss", "accuracy", "lr"):
                strips = app.query_one(f"#{name}").strips()
                charts[name] = Text("\n").join(Text.assemble(*((s.text, s.style) for s in strip)) for strip in strips)
            return charts

    return asyncio.run(main())


def rows_of(text: Text) -> list[str]:
    return text.plain.split("\n")


def y_labels(text: Text) -> list[str]:
    """The y tick labels: what stands left of each `┤`."""
    return [row.split("┤")[0].strip() for row in rows_of(text) if "┤" in row]


def x_labels(text: Text) -> list[str]:
    """The x tick labels: the words of the row under the x axis (`└`), the axis title left out."""
    rows = rows_of(text)
    axis = next(i for i, row in enumerate(rows) if "└" in row)
    return [word for word in rows[axis + 1].split() if word != "step"] if axis + 1 < len(rows) else []


def loss_lines() -> list[Line]:
    steps = np.arange(3000)
    train = 2.3 * np.exp(-steps / 500) + 0.05
    return [Line("train", steps, train, "cyan"), Line("val", np.array([999, 1999, 2999]), np.array([0.5, 0.2, 0.1]))]


CASES = {
    "loss": (loss_lines(), {}),
    "flat": ([Line("lr", np.arange(500), np.full(500, 0.1), "green")], {}),
    "log": (loss_lines(), {"log_y": True}),
    "lr to 0": ([Line("lr", np.arange(2000), np.linspace(0.05, 0.0, 2000), "green")], {}),
    "short run": ([Line("train", np.arange(20), np.linspace(2.3, 1.9, 20))], {}),
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("case", CASES)
def test_at_least_three_y_labels_and_two_x_labels(case, size):
    lines, options = CASES[case]
    text = render_chart(lines, *size, title="loss", color=False, **options)
    rows = rows_of(text)
    assert len(rows) == size[1] and all(len(row) <= size[0] for row in rows)
    ys, xs = y_labels(text), x_labels(text)
    assert len(ys) >= 3 and len(set(ys)) == len(ys), text.plain
    assert len(xs) >= 2 and len(set(xs)) == len(xs), text.plain
    assert all(label for label in ys)


def test_y_labels_are_in_order_and_inside_the_data():
    text = render_chart(CASES["lr to 0"][0], 40, 8, color=False)
    values = [float(v) for v in y_labels(text)]
    assert values == sorted(values, reverse=True)
    assert min(values) >= 0 and max(values) <= 0.05 + 1e-12


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_overview_charts_have_readable_axes(store, size):
    for name, chart in overview(store, size).items():
        assert len(y_labels(chart)) >= 3, (name, chart.plain)
        assert len(x_labels(chart)) >= 2, (name, chart.plain)
        assert "step" in chart.plain
        head = chart.split("\n")[0]
        swatches = [span.style.color for span in head.spans if head.plain[span.start : span.end] == "━"]
        assert swatches and all(swatches), (name, head.spans)  # coloured like their lines


class ChartApp(App):
    CSS = "Chart { height: 12; }"

    def compose(self) -> ComposeResult:
        yield Chart()


def chart_strips(lines: list[Line], size: tuple[int, int] = (80, 24), **options) -> list:
    async def main() -> list:
        app = ChartApp()
        async with app.run_test(size=size) as pilot:
            app.query_one(Chart).set_lines(lines, title="loss", **options)
            await pilot.pause()
            return app.query_one(Chart).strips()

    return asyncio.run(main())


BLOCKS = set("▖▗▘▙▚▛▜▝▞▟▀▄▌▐█")


def test_legend_swatches_have_their_lines_colour_in_256_and_true_colour():
    steps = np.arange(200)
    colours = {
        "cyan": Color.parse("color(6)"),
        208: Color.parse("color(208)"),
        (255, 128, 0): Color.from_rgb(255, 128, 0),
    }
    lines = [Line(f"l{i}", steps, np.sin(steps / 20 + i) + 3 * i, colour) for i, colour in enumerate(colours)]
    strips = chart_strips(lines)
    swatches = [seg.style.color if seg.style else None for seg in strips[0] if seg.text == "━"]
    drawn = {seg.style.color for strip in strips[1:] for seg in strip if seg.style and set(seg.text) & BLOCKS}
    assert swatches == list(colours.values())
    assert set(swatches) <= drawn  # each swatch has the colour its line is drawn in


def test_legend_and_lines_are_uncoloured_under_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    strips = chart_strips([Line("train", np.arange(50), np.arange(50.0), 208)])
    assert "━ train" in strips[0].text
    assert not any(seg.style and seg.style.color for strip in strips for seg in strip)


def test_a_chart_wider_and_taller_than_80x24_fills_its_size_without_a_terminal():
    """plotext limits a plot to the terminal's size, 80x24 when none answers (tests, pipes): a full-screen chart."""
    text = render_chart(loss_lines(), 150, 40, title="loss", color=False)
    rows = rows_of(text)
    assert len(rows) == 40 and all(len(row) == 150 for row in rows[1:])
    assert rows[-1].endswith("step") and rows[-2].strip().startswith("└") and len(rows[-2].rstrip()) > 140


@pytest.mark.parametrize(
    ("size", "title", "shown"),
    [
        ((30, 4), "loss", "loss  ━ train  ━ val"),
        ((16, 5), "loss", "loss ━ tr… ━ val"),
        ((17, 3), "learning rate", "lear… ━ tr… ━ val"),
        ((16, 3), "learning rate", "learnin… ━ t ━ v"),
    ],
)
def test_a_small_chart_keeps_a_shortened_title_and_legend(size, title, shown):
    text = render_chart(loss_lines(), *size, title=title, color=False)
    rows = rows_of(text)
    assert rows[0] == shown
    assert len(rows) == size[1] and all(len(row) <= size[0] for row in rows)
    assert len(y_labels(text)) >= 2


def test_a_long_title_is_cut_before_the_legend_labels():
    lines = [Line("smoothed loss", np.arange(50), np.linspace(2, 1, 50)), Line("suggested 0.05", [0, 1], [1, 2])]
    head = rows_of(render_chart(lines, 48, 10, title="learning-rate range test", color=False))[0]
    assert head == "learning-rate… ━ smoothed loss ━ suggested 0.05", head


def test_the_overview_charts_keep_their_titles_and_legends_at_60x16(store):
    for name, chart in overview(store, (60, 16)).items():
        head = chart.plain.split("\n")[0]
        assert head.startswith({"loss": "loss", "accuracy": "acc", "lr": "learn"}[name]), (name, chart.plain)
        assert "━" in head, (name, chart.plain)


def test_a_unit_reads_after_the_y_labels_when_percent_and_in_the_title_otherwise():
    steps = np.arange(300)
    text = render_chart([Line("val", steps, np.linspace(10, 97, 300))], 40, 9, title="accuracy", unit="%", color=False)
    assert all(label.endswith("%") for label in y_labels(text)) and len(y_labels(text)) >= 3
    text = render_chart([Line("img/s", steps, np.full(300, 1500.0))], 40, 9, title="throughput", unit="img/s")
    assert rows_of(text)[0].startswith("throughput (img/s)")
    assert "1500" in y_labels(text)  # not 1.5e3
    assert "step" in rows_of(text)[-1]


def test_the_chart_widget_takes_a_unit():
    strips = chart_strips([Line("rss", np.arange(50), np.linspace(1, 2, 50))], unit="GB")
    assert strips[0].text.startswith("loss (GB)")


def test_fractions_asked_as_percent_read_0_to_100_percent():
    steps = np.arange(300)
    lines = [Line("train", steps, np.linspace(0.1, 0.97, 300)), Line("val", np.array([99, 199, 299]), [0.5, 0.8, 0.9])]
    for size in SIZES:
        text = render_chart(lines, *size, title="accuracy", percent=True, color=False)
        values = [float(label.rstrip("%")) for label in y_labels(text)]
        assert len(values) >= 3 and all(label.endswith("%") for label in y_labels(text)), text.plain
        assert max(values) > 1 and min(values) >= 0 and max(values) <= 100, text.plain


def test_the_chart_widget_draws_percent():
    strips = chart_strips([Line("val", np.arange(50), np.linspace(0.2, 0.9, 50))], percent=True)
    labels = [strip.text.split("┤")[0].strip() for strip in strips if "┤" in strip.text]
    assert len(labels) >= 3 and all(label.endswith("%") for label in labels), labels
    assert max(float(label.rstrip("%")) for label in labels) >= 50


def test_a_window_draws_only_the_last_steps():
    text = render_chart(loss_lines(), 80, 20, title="loss", window=500, color=False)
    assert rows_of(text)[0].startswith("loss · last 500")
    steps = [float(label.rstrip("k")) * (1000 if label.endswith("k") else 1) for label in x_labels(text)]
    assert min(steps) >= 2499 and max(steps) <= 2999, x_labels(text)
    assert max(float(v) for v in y_labels(text)) < 0.5  # the early, high losses are left out


def test_the_chart_widget_windows():
    async def main() -> tuple[str, str]:
        app = ChartApp()
        async with app.run_test(size=(100, 40)) as pilot:
            chart = app.query_one(Chart)
            chart.set_lines(loss_lines(), title="loss")
            chart.set_window(500)
            await pilot.pause()
            head = chart.strips()[0].text
            chart.set_window(None)
            await pilot.pause()
            return head, chart.strips()[0].text

    head, after = asyncio.run(main())
    assert head.startswith("loss · last 500") and after.startswith("loss  ━")


def test_an_overview_chart_maximized_fills_the_screen(store):
    async def main() -> tuple[tuple[int, int], Text]:
        app = MiranteApp(FollowSource(store), store=store)
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.source.done and app.state.ended is not None:
                    break
            chart = app.query_one("#loss", Chart)
            assert chart.toggle_full_screen()
            await pilot.pause(0.5)
            strips, size = chart.strips(), (chart.size.width, chart.size.height)
            assert not chart.toggle_full_screen()
            await pilot.pause(0.2)
            assert chart.size.height < 12
            text = Text("\n").join(Text.assemble(*((s.text, s.style) for s in strip)) for strip in strips)
            return size, text

    size, text = asyncio.run(main())
    assert size[0] >= 76 and size[1] >= 18
    assert len(y_labels(text)) >= 4 and len(x_labels(text)) >= 4, text.plain


def test_an_axis_of_fractions_is_labelled_in_its_own_units():
    """x as epochs (x 1000, as a compare draws them): the labels read epochs 1, 2, not steps 1k, 2k."""
    x = np.linspace(0, 2.5, 200)
    chart = render_chart([Line("a", np.round(1000 * x), np.sin(4 * x))], 60, 12, x_scale=1000, x_label="epoch")
    axis = chart.plain.splitlines()[-1]
    assert axis.split()[:2] == ["1", "2"] and axis.rstrip().endswith("epoch"), axis
    assert "k" not in axis


def test_a_line_drawn_with_a_marker_of_its_own_shows_it_in_the_legend_and_on_the_plot():
    x = np.arange(50)
    text = render_chart([Line("a", x, np.sin(x / 5)), Line("b", x, np.cos(x / 5), "orange", marker="+")], 50, 10)
    assert text.plain.splitlines()[0] == "━ a  + b"
    assert "+" in "".join(text.plain.splitlines()[1:-2])


def test_a_dim_line_is_drawn_faint():
    x = np.arange(50)
    text = render_chart([Line("", x, np.sin(x / 5), dim=True)], 50, 10)
    assert any("dim" in str(span.style) for span in text.spans)
    bright = render_chart([Line("", x, np.sin(x / 5))], 50, 10)
    assert not any("dim" in str(span.style) for span in bright.spans)


def test_the_same_lines_given_again_are_not_drawn_again_but_changed_ones_are():
    chart = Chart()
    x = np.arange(10)
    y = np.sin(x / 3)
    calls = []
    chart.changed = lambda: calls.append(1)
    chart.set_lines([Line("a", x, y)], title="t")
    chart.set_lines([Line("a", x.copy(), y.copy())], title="t")
    assert len(calls) == 1
    y[3] = 5.0  # changed in place, then given again
    chart.set_lines([Line("a", x, y)], title="t")
    assert len(calls) == 2
    chart.set_lines([Line("a", x, y, dim=True)], title="t")
    chart.set_lines([Line("a", x, y, dim=True)], title="u")
    assert len(calls) == 4
