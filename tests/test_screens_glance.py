"""The first glance at the other screens (issue 13): what Model, Diagnostics, System, Activations and Gradients
show at 80x24 on the sample runs, and the CLI's order of runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import TabbedContent

from tests import apps
from tui.app import MiranteApp
from tui.sources import FollowSource

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_runs"


def lines_of(widget) -> list[str]:
    """The lines a widget shows on screen now, as plain text."""
    return [widget.render_line(y).text for y in range(widget.size.height)]


def drive(store: Path, size: tuple[int, int], script) -> None:
    apps.drive(MiranteApp(FollowSource(store), store=store), size, script, tries=200)


# -- 1. Model: the last layers can be reached at 80x24


def test_the_model_tables_last_row_can_be_reached_at_80x24():
    async def script(app, pilot):
        await pilot.press("3")
        await pilot.pause(0.2)
        table = app.query_one("#table")
        last = str(table.get_row_at(table.row_count - 1)[0]).strip()
        assert last == "fc"
        assert not any(line.strip().startswith(last) for line in lines_of(table))
        await pilot.press("pagedown", "pagedown")  # the table has the keys as soon as the pane shows
        await pilot.pause(0.2)
        assert table.region.bottom <= app.query_one("#status").region.y  # the table is on screen, not cut off
        totals = app.query_one("#totals")
        shown = " ".join(line.strip() for line in lines_of(totals))
        assert shown == " ".join(str(totals.render()).split())  # the totals fit their lines at 80 columns
        assert any(line.strip().startswith("fc ") for line in lines_of(table))
        await pilot.press("1")  # the focused table does not keep its pane in front
        await pilot.pause(0.1)
        assert app.query_one(TabbedContent).active == "OverviewPane"

    drive(SAMPLES / "smallcnn-shapes.mirante", (80, 24), script)


# -- 2. Diagnostics: Up/Down move in the list at once; the pane keys still switch panes


def test_the_diagnostics_list_takes_up_and_down_at_once_and_pane_keys_switch():
    async def script(app, pilot):
        await pilot.press("5")
        await pilot.pause(0.2)
        checks = app.query_one("#checks")
        detail = app.query_one("#detail")
        first = str(detail.render())
        row = checks.cursor_row
        await pilot.press("down")
        await pilot.pause(0.1)
        assert checks.cursor_row == row + 1
        assert str(detail.render()) != first  # the detail follows the cursor
        await pilot.press("1")
        await pilot.pause(0.1)
        assert app.query_one(TabbedContent).active == "OverviewPane"
        await pilot.press("5")
        await pilot.pause(0.1)
        assert checks.has_focus
        await pilot.press("6")
        await pilot.pause(0.1)
        assert app.query_one(TabbedContent).active == "SystemPane"

    drive(SAMPLES / "smallcnn-shapes.mirante", (80, 24), script)


# -- 3. `mirante ls` and a bare `mirante watch`: runs in the order they started, whatever their files' times


def two_runs_touched_out_of_order(directory: Path, end: str | None) -> None:
    """Run "early" started first but its file was written last; "late" started 1000 s later, its file is older."""
    import dataclasses
    import os

    from engine import events as ev
    from tests.runs import make_events, write_run

    for name, shift, mtime in (("early", 0.0, 2_000_000_000), ("late", 1000.0, 1_900_000_000)):
        events = [dataclasses.replace(e, wall_time=e.wall_time + shift) for e in make_events(steps=20, end=end)]
        events[0] = dataclasses.replace(events[0], name=name)
        assert isinstance(events[0], ev.RunStarted)
        write_run(directory / f"{name}.mirante", events=events)
        os.utime(directory / f"{name}.mirante", (mtime, mtime))


def test_ls_lists_runs_newest_start_first(tmp_path, capsys):
    from tui.cli import main

    two_runs_touched_out_of_order(tmp_path, end="finished")
    assert main(["ls", str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["late", "early"]


def test_a_bare_watch_picks_the_run_that_started_last(tmp_path, monkeypatch):
    from engine.store import RunReader
    from tui.cli import newest_running

    two_runs_touched_out_of_order(tmp_path, end=None)
    monkeypatch.setattr(RunReader, "writer_alive", lambda self: True)  # both still being written
    assert newest_running(tmp_path).name == "late.mirante"


# -- 4. System: only the metrics the run recorded, titled in words with their units


def test_the_system_screen_shows_only_recorded_metrics_titled_in_words():
    async def script(app, pilot):
        await pilot.press("6")
        await pilot.pause()
        charts = [app.query_one(f"#sys{i}") for i in range(4)]
        shown = [c for c in charts if c.display]
        assert len(shown) == 2  # a CPU run records cpu/rss_gb and cpu/util_pct, nothing of a GPU
        texts = ["\n".join(lines_of(c)) for c in shown]
        assert not any("no metric" in t or "no data yet" in t for t in texts)
        heads = [t.splitlines()[0] for t in texts]
        assert heads[0].startswith("CPU memory (RSS, GB)") and heads[1].startswith("CPU use (%)")
        assert all(c.size.height >= 17 for c in shown)  # the two panels take the pane's height between them

    drive(SAMPLES / "smallcnn-shapes.mirante", (80, 24), script)


# -- 6. lr-find: no suggestion in the live legend before the check has made one


def test_a_live_lr_find_suggests_nothing_before_its_verdict(tmp_path, monkeypatch):
    from engine.store import RunReader
    from tests.runs import write_run

    with RunReader(SAMPLES / "lrfind-smallcnn.mirante") as run:  # the sweep a third of the way through
        events = [e for e in run.follow(0, limit=None) if e.step <= 120 and type(e).__name__ != "RunEnded"]
    store = tmp_path / "sweeping.mirante"
    write_run(store, events=events)
    monkeypatch.setattr(RunReader, "writer_alive", lambda self: True)  # its trainer is still sweeping
    app = MiranteApp(FollowSource(store), store=store)

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.state.last_seq == events[-1].seq:
                    break
            await apps.until(pilot, lambda: app.query_one(TabbedContent).active == "DiagnosticsPane")  # at a redraw
            chart = "\n".join(lines_of(app.query_one("#range")))
            assert "suggested" not in chart
            assert "no suggestion yet" in chart.splitlines()[0]

    asyncio.run(main())


# -- 7. The README counts the sample runs it ships


def test_the_readme_counts_the_sample_runs():
    import re

    words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    said = re.search(r"`sample_runs/` holds (\w+) real runs", (ROOT / "README.md").read_text()).group(1)
    assert said == words[len(list(SAMPLES.glob("*.mirante")))]


# -- 5. Activations: readable labels, the colour scale and how many channels are shown; Gradients: a heatmap that
# uses the space, its rows and columns labelled


def colours_of(strip) -> set[tuple[int, int, int]]:
    return {
        tuple(seg.style.color.triplet) for seg in strip if seg.style and seg.style.color and seg.style.color.triplet
    }


def test_the_activation_grids_say_what_they_show_at_80x24():
    import re

    from tui.widgets.heatmap import colour_table

    async def script(app, pilot):
        await pilot.press("4")
        await pilot.pause()
        view = app.query_one("#view")
        head = next(line for line in lines_of(view) if "conv1" in line)
        assert re.search(r"conv1 · 32x32 · \d+ of 32 channels", head), head  # not all 32 fit at 80x24
        assert view.region.right <= 80
        await pilot.press("v", "v", "v")  # maps, Grad-CAM, confusion, filters
        await pilot.pause()
        filters = app.query_one("#filters")
        assert lines_of(filters)[0].startswith("conv1 filters")
        for grid, row in ((filters, 0),):
            head = lines_of(grid)[row]
            assert "min" in head and "max" in head, head  # the colour scale: each map from its min to its max
            scale = colours_of(grid.strips()[row])
            low, high = colour_table("viridis")[0], colour_table("viridis")[-1]
            assert tuple(low) in scale and tuple(high) in scale

    drive(SAMPLES / "smallcnn-shapes.mirante", (80, 24), script)


def test_the_gradient_heatmap_fills_its_space_with_layers_and_steps_labelled():
    async def script(app, pilot):
        await pilot.press("2")
        await pilot.pause()
        heat = app.query_one("#heat")
        lines = [line.rstrip() for line in lines_of(heat)]
        names = app.state.layer_names
        assert lines[0].startswith(names[0])  # the first layer labels the top row
        labelled = [line.split()[0] for line in lines[:-1] if line and not line.startswith(" ")]
        assert set(names) <= set(labelled)  # every layer has its row and its name (11 layers fit at 160x48)
        assert max(line.count("▀") for line in lines) >= heat.size.width * 3 // 4  # the probes fill the width
        steps = list(app.state.layers.steps)
        assert lines[-1].split()[-1] == f"{steps[-1]:,}" and f"step {steps[0]:,}" in lines[-1]
        assert sum("▀" in line for line in lines) >= heat.size.height - 2  # and the height

    drive(SAMPLES / "smallcnn-shapes.mirante", (160, 48), script)


def test_a_gradient_heatmap_too_short_for_its_layers_says_how_many_it_shows():
    async def script(app, pilot):
        await pilot.press("2")
        await pilot.pause()
        heat = app.query_one("#heat")
        lines = lines_of(heat)
        rows = 2 * (heat.size.height - 1)  # two layers a line above the step axis
        assert len(app.state.layer_names) > rows
        assert lines[-1].startswith(f"first {rows} of {len(app.state.layer_names)}")

    drive(SAMPLES / "resnet18-shapes.mirante", (80, 24), script)


def test_the_gradients_flags_show_whole_at_80x24():
    async def script(app, pilot):
        await pilot.press("2")
        await pilot.pause()
        table = app.query_one("#layers")
        assert "vanishing" in {str(table.get_row_at(i)[-1]) for i in range(table.row_count)}
        # every column within the table's width (else "vanishing" shows as "vanishin" at 80 columns)
        assert table.virtual_size.width <= table.scrollable_content_region.width, (table.virtual_size, table.size)

    drive(SAMPLES / "plainnet-sigmoid.mirante", (80, 24), script)
