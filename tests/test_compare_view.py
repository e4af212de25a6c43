"""The compare view (issue 17): runs the tests train (two learning rates, two seeds of one, a batch of 64),
read as the app reads them, then drawn by the app in Pilot tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import compare
from tui.compare import AXIS_SCALE, CompareState
from tui.sources import CompareSource

RUNS = {  # name: (lr, seed, batch size)
    "low": (0.01, 0, 32),
    "high": (0.2, 0, 32),
    "high-seed1": (0.2, 1, 32),
    "high-b64": (0.2, 0, 64),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny smallcnn runs on 240 shapes images, 2 epochs, trained here on one thread."""
    import torch

    import engine.data
    from engine import train
    from engine.config import TrainConfig

    directory = tmp_path_factory.mktemp("compare") / "runs"
    original = engine.data.build_data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train, "build_data", lambda *a, **k: original(*a, **{**k, "shapes_count": 240}))
            for name, (lr, seed, batch) in RUNS.items():
                config = TrainConfig(
                    model="smallcnn",
                    dataset="shapes",
                    epochs=2,
                    batch_size=batch,
                    lr=lr,
                    seed=seed,
                    runs_dir=str(directory),
                    name=name,
                    log_every=2,
                    probe_every=2,
                    capture_every=10,
                    device="cpu",
                    workers=0,
                )
                assert train.run(config.validate()) == 0
    finally:
        torch.set_num_threads(threads)
    return {name: directory / f"{name}.mirante" for name in RUNS}


def read_all(source: CompareSource, state: CompareState) -> CompareState:
    for _ in range(100):
        state.apply_many(source.read(0.01))
        if source.done:
            return state
    raise AssertionError("the compare source never finished")


def opened(paths: list[Path]) -> CompareState:
    return read_all(CompareSource(paths, sleep=lambda s: None), CompareState(paths))


def test_the_table_read_from_the_states_is_the_table_read_from_the_stores(runs):
    state = opened(list(runs.values()))
    for row, stored in zip(state.rows(), map(compare.read_row, runs.values()), strict=True):
        assert (row.name, row.status, row.best_val_acc, row.best_epoch) == (
            stored.name,
            stored.status,
            stored.best_val_acc,
            stored.best_epoch,
        )
        assert row.final_train_loss == stored.final_train_loss
        assert row.img_per_s == pytest.approx(stored.img_per_s)
        assert row.wall_s == pytest.approx(stored.wall_s)
    assert state.status() == "4 finished" and state.keys() == ["batch_size", "lr", "seed"]


def test_runs_that_differ_only_by_seed_are_one_line_with_a_band(runs):
    state = opened([runs["low"], runs["high"], runs["high-seed1"]])
    assert state.groups() == [[0], [1, 2]]
    assert state.group_label([1, 2]) == "lr=0.2 x2 seeds" and state.group_label([0]) == "lr=0.01 seed=0"
    lines, lacking = state.curves("train loss")
    assert len(lines) == 2 and not lacking
    band = lines[1]
    assert band.low is not None and np.all(band.low <= band.values + 1e-12) and np.all(band.values <= band.high + 1e-12)
    assert np.any(band.high - band.low > 0)  # two seeds: not the same losses
    own = [state.curve(run, "train loss", False, "") for run in (1, 2)]
    at = len(band.values) // 2  # the band's mean is the two seeds' mean there
    x = band.steps[at]
    ys = [np.interp(x, c.x, c.y) for c in own]
    assert band.values[at] == pytest.approx(np.mean(ys), rel=0.05)


def test_samples_seen_put_a_batch_64_run_at_twice_the_x_of_a_batch_32_run(runs):
    state = opened([runs["high"], runs["high-b64"]])
    state.axis = "samples"
    b32, b64 = (state.curve(run, "train loss", False, "") for run in (0, 1))
    steps32, steps64 = (state.members[run].state.series("train/loss").step for run in (0, 1))
    common = np.intersect1d(steps32, steps64)
    assert len(common) > 3
    x32 = b32.x[np.searchsorted(steps32, common)]
    x64 = b64.x[np.searchsorted(steps64, common)]
    assert np.array_equal(x64, 2 * x32) and np.array_equal(x32, common * 32)
    state.axis = "epoch"
    b32, b64 = (state.curve(run, "train loss", False, "") for run in (0, 1))
    assert b32.x[-1] == b64.x[-1] == 2 * AXIS_SCALE["epoch"]  # both ran 2 epochs: the same x at the end


def test_a_hidden_run_has_no_curve_and_a_picked_one_is_drawn_last_the_others_faint(runs):
    state = opened([runs["low"], runs["high"], runs["high-b64"]])
    assert len(state.curves("val acc")[0]) == 3
    state.toggle_hidden(0)
    lines, _ = state.curves("val acc")
    assert len(lines) == 2 and state.color(0)[0] not in [line.color for line in lines]
    state.pick(1)
    lines, _ = state.curves("val acc")
    assert lines[-1].color == state.color(1)[0] and not lines[-1].dim and all(line.dim for line in lines[:-1])


def test_the_layers_picture_has_one_column_per_shown_run(runs):
    state = opened(list(runs.values()))
    for metric in ("grad norm", "update/weight", "dead-ReLU share"):
        picture = state.layers(metric, None)
        assert picture.columns == [0, 1, 2, 3] and picture.matrix.shape == (len(picture.rows), 4), metric
        assert np.isfinite(picture.matrix).all() and not picture.missing, metric
    grads = state.layers("grad norm", None)
    assert grads.rows == list(state.members[0].state.layer_names)
    latest = state.members[2].state.layers.latest
    assert np.allclose(grads.matrix[:, 2], latest)
    first = state.probe_steps()[0]
    early = state.layers("grad norm", first)
    assert not np.allclose(early.matrix, grads.matrix)
    state.toggle_hidden(1)
    assert state.layers("grad norm", None).columns == [0, 2, 3]


def test_sorting_orders_the_table_and_the_pick_follows_it(runs):
    state = opened(list(runs.values()))
    assert state.next_sort() == "run"
    names = [state.rows()[i].name for i in state.order()]
    assert names == sorted(names)
    while state.sort[0] != "best val acc":
        state.next_sort()
    accs = [state.rows()[i].best_val_acc for i in state.order()]
    assert accs == sorted(accs, reverse=True)
    state.reverse_sort()
    assert [state.rows()[i].best_val_acc for i in state.order()] == sorted(accs)
    while state.sort[0] != "lr":  # any column: the differing keys too, numbers as numbers
        state.next_sort()
    assert [state.rows()[i].config["lr"] for i in state.order()] == [0.01, 0.2, 0.2, 0.2]
    assert state.columns()[-3:] == ["batch_size", "lr", "seed"] and state.next_sort() == "seed"
    first = state.step_picked(1)
    assert first == state.order()[0] and state.step_picked(1) == state.order()[1]


def test_a_run_whose_writer_died_without_ending_it_reads_crashed(tmp_path):
    import dataclasses

    from tests.runs import make_events, write_run

    events = make_events(steps=200, end=None)
    events[0] = dataclasses.replace(events[0], name="cut")
    write_run(tmp_path / "cut.mirante", events=events)
    assert opened([tmp_path / "cut.mirante"]).rows()[0].status == "crashed"


def test_a_store_that_cannot_be_read_is_a_row_that_says_so_and_draws_nothing(runs, tmp_path):
    bad = tmp_path / "bad.mirante"
    bad.write_bytes(b"not a store" * 100)
    import os

    os.utime(bad, (1, 1))  # old: not a store being created
    state = opened([runs["low"], bad])
    rows = state.rows()
    assert rows[1].status == "unreadable" and rows[1].error
    assert len(state.curves("train loss")[0]) == 1


def test_a_run_that_appears_in_a_watched_directory_joins(runs, tmp_path):
    import shutil

    directory = tmp_path / "watched"
    directory.mkdir()
    shutil.copy(runs["low"], directory / "low.mirante")
    source = CompareSource([directory / "low.mirante"], watch=[directory], sleep=lambda s: None, rescan_s=0.0)
    state = CompareState(source.paths)
    for _ in range(5):
        state.apply_many(source.read(0.01))
    assert len(state.members) == 1 and not source.done
    shutil.copy(runs["high"], directory / "high.mirante")
    for _ in range(5):
        state.apply_many(source.read(0.01))
    assert [m.path.name for m in state.members] == ["low.mirante", "high.mirante"]
    assert state.rows()[1].status == "finished" and state.labels() == ["lr=0.01", "lr=0.2"]


# -- the app in compare mode (Pilot) ------------------------------------------------------------------------------


def compare_app(paths: list[Path], **kwargs):
    from tui.app import MiranteApp

    return MiranteApp(CompareSource(paths, **kwargs))


def drive_compare(app, size, script) -> None:
    """Run the compare app until every run is read, then `await script(app, pilot)`."""
    import asyncio

    from tests.apps import until

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.source.done and not app._inbox, timeout=20)
            app.redraw(force=True)
            await pilot.pause()
            await script(app, pilot)

    asyncio.run(main())


def chart(app, name: str):
    from tui.widgets import Chart

    return app.query_one(f"#{name}", Chart)


def test_the_view_names_runs_by_what_differs_and_draws_the_seed_pair_as_one_line_with_a_band(runs):
    from tests.apps import text_of

    async def script(app, pilot):
        legend = text_of(app.query_one("#legend"))
        assert "━ lr=0.01" in legend and "━ lr=0.2 x2 seeds" in legend, legend
        lines = chart(app, "c-train").lines
        assert len(lines) == 2
        band = lines[1]
        assert np.any(band.high - band.low > 0)
        drawn = text_of(chart(app, "c-train"))
        assert drawn.splitlines()[0].startswith("train loss") and "step" in drawn.splitlines()[-1]
        status = text_of(app.query_one("#status"))
        assert "compare of 3 runs" in status and "3 finished" in status

    drive_compare(compare_app([runs["low"], runs["high"], runs["high-seed1"]]), (100, 30), script)


def test_the_x_key_puts_a_batch_64_run_at_twice_the_samples_of_a_batch_32_run(runs):
    from tests.apps import text_of

    async def script(app, pilot):
        while app.state.axis != "samples":
            await pilot.press("x")
        await pilot.pause()
        b32, b64 = chart(app, "c-train").lines
        steps32 = app.state.members[0].state.series("train/loss").step
        steps64 = app.state.members[1].state.series("train/loss").step
        common = np.intersect1d(steps32, steps64)
        x32 = b32.steps[np.searchsorted(steps32, common)]
        x64 = b64.steps[np.searchsorted(steps64, common)]
        assert np.array_equal(x64, 2 * x32)
        assert text_of(chart(app, "c-train")).splitlines()[-1].rstrip().endswith("samples")
        assert "x: samples" in text_of(app.query_one("#status"))

    drive_compare(compare_app([runs["high"], runs["high-b64"]]), (100, 30), script)


def test_hiding_a_run_from_the_table_removes_its_curve_and_the_cursor_picks_a_run(runs):
    from tests.apps import text_of

    async def script(app, pilot):
        assert len(chart(app, "c-vacc").lines) == 3
        await pilot.press("2")
        await pilot.pause()
        await pilot.press("down")  # the table's cursor: the second run
        await pilot.pause()
        assert app.state.picked == 1
        await pilot.press("h")
        await pilot.pause()
        table = text_of(app.query_one("#runs-head"))
        assert "3 runs, 2 shown" in table
        await pilot.press("1")
        await pilot.pause()
        lines = chart(app, "c-vacc").lines
        assert len(lines) == 2 and app.state.color(1)[0] not in [line.color for line in lines]
        assert "1 hidden" in text_of(app.query_one("#legend"))
        await pilot.press("a")
        await pilot.pause()
        lines = chart(app, "c-vacc").lines
        assert len(lines) == 3 and lines[-1].color == app.state.color(1)[0] and lines[0].dim  # picked: on top

    drive_compare(compare_app([runs["low"], runs["high"], runs["high-b64"]]), (100, 30), script)


def test_the_layers_heatmap_has_one_column_per_run(runs):
    from tests.apps import text_of
    from tui.widgets import Heatmap

    async def script(app, pilot):
        await pilot.press("3")
        await pilot.pause()
        heat = app.query_one("#layers-heat", Heatmap)
        names = list(app.state.members[0].state.layer_names)
        assert heat.matrix.shape == (len(names), 4) and heat.rows == names
        drawn = text_of(heat).splitlines()
        assert drawn[-1].split() == ["1", "2", "3", "4"]
        head = text_of(app.query_one("#layers-head"))
        assert f"log10 grad norm · {len(names)} layers x 4 runs · latest probes" in head
        for metric in ("update/weight", "dead-ReLU share"):
            await pilot.press("m")
            await pilot.pause()
            assert metric in text_of(app.query_one("#layers-head"))
            assert np.isfinite(heat.matrix).all()
        await pilot.press("left")
        await pilot.pause()
        assert "at step" in text_of(app.query_one("#layers-head"))
        legend = text_of(app.query_one("#layers-legend"))
        assert "1 ━ batch_size=32 lr=0.01 seed=0" in legend

    drive_compare(compare_app(list(runs.values())), (100, 30), script)


def test_sorting_by_key_orders_the_table(runs):
    from textual.widgets import DataTable

    async def script(app, pilot):
        await pilot.press("2")
        while app.state.sort[0] != "best val acc":
            await pilot.press("o")
        await pilot.pause()
        grid = app.query_one("#runs", DataTable)
        accs = [app.state.rows()[int(key.value)].best_val_acc for key in grid.rows]
        assert accs == sorted(accs, reverse=True)

    drive_compare(compare_app(list(runs.values())), (120, 30), script)


def synthetic(directory: Path, count: int) -> list[Path]:
    import dataclasses

    from tests.runs import make_events, write_run

    paths = []
    for i in range(count):
        events = make_events(steps=120)
        events[0] = dataclasses.replace(events[0], name=f"r{i}", config=events[0].config | {"lr": 0.001 * (i + 1)})
        write_run(directory / f"r{i}.mirante", events=events)
        paths.append(directory / f"r{i}.mirante")
    return paths


def test_64_runs_repeat_colours_with_a_marker_and_the_legend_says_how_many_it_leaves_out(tmp_path):
    from tests.apps import text_of

    paths = synthetic(tmp_path, 64)

    async def script(app, pilot):
        legend = text_of(app.query_one("#legend"))
        assert "more (2: runs)" in legend, legend
        lines = chart(app, "c-train").lines
        assert len(lines) == 64 and {line.marker for line in lines} == {"hd", "•", "+", "o"}
        pairs = {(str(line.color), line.marker) for line in lines}
        assert len(pairs) == 32  # 8 colours x 4 markers, then round again

    drive_compare(compare_app(paths), (80, 24), script)


def test_a_compare_of_one_run_an_unreadable_store_and_a_tiny_terminal_are_said_not_raised(runs, tmp_path):
    import os

    from textual.widgets import DataTable

    from tests.apps import text_of

    bad = tmp_path / "bad.mirante"
    bad.write_bytes(b"not a store" * 100)
    os.utime(bad, (1, 1))

    async def script(app, pilot):
        assert "1 unreadable" in text_of(app.query_one("#legend"))
        assert len(chart(app, "c-train").lines) == 1
        await pilot.press("2")
        await pilot.pause()
        grid = app.query_one("#runs", DataTable)
        assert "unreadable" in [str(cell) for cell in grid.get_row_at(1)]
        await pilot.resize_terminal(40, 12)
        await pilot.pause(0.3)
        assert app.screen.has_class("too-small")

    drive_compare(compare_app([runs["low"], bad]), (80, 24), script)


def test_a_run_being_written_updates_live_and_a_new_run_in_a_watched_directory_joins(tmp_path):
    import asyncio
    import dataclasses

    from engine.store import RunWriter
    from tests.apps import until
    from tests.runs import make_events

    events = make_events(steps=400, end=None)
    events[0] = dataclasses.replace(events[0], name="live")
    writer = RunWriter(tmp_path / "live.mirante", flush_interval=0.05)
    for event in events[:200]:
        writer.write(event)
    writer.flush()
    app = compare_app([tmp_path / "live.mirante"], watch=[tmp_path], rescan_s=0.2)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.state.members[0].state.step > 0, timeout=20)
            before = app.state.members[0].state.step
            for event in events[200:]:
                writer.write(event)
            writer.flush()
            await until(pilot, lambda: app.state.members[0].state.step > before, timeout=20)
            await until(pilot, lambda: chart(app, "c-train").lines[0].steps.max() > before, timeout=5)
            synthetic(tmp_path, 1)
            await until(pilot, lambda: len(app.state.members) == 2 and app.state.members[1].state.ended, timeout=20)
            await until(pilot, lambda: len(chart(app, "c-train").lines) == 2, timeout=5)
            assert app.state.status() == "1 running, 1 finished"

    try:
        asyncio.run(main())
    finally:
        writer.close()
