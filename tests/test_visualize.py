"""`mirante visualize`: activation maximisation from a run's checkpoint, stored into the run; bad input in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from engine import events as ev
from engine import visualize
from engine.store import RunReader, RunWriter
from tui.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run(captured_copy) -> Path:
    return captured_copy


def test_visualize_draws_the_filters_and_stores_them_in_the_run(run, capsys):
    assert main(["visualize", str(run), "--layer", "conv5", "--filters", "0-3,7", "--steps", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conv5: 5 filters, the input each responds to most (24 steps")
    titles = [line.split() for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
    assert "stored in act.mirante" in out and titles == [["0", "1", "2", "3"], ["7"]]  # the grid's: the filters
    with RunReader(run) as reader:
        seen = reader.events_of("Visualized")
        summary = reader.summary()
    assert len(seen) == 1 and seen[0].filters == (0, 1, 2, 3, 7) and seen[0].shape == (5, 3, 32, 32)
    assert summary.status == "finished"  # an annotation after the end: the run is still the run it was


def test_gradient_ascent_raises_each_filters_mean_activation(run):
    model = visualize.load_model(run, torch.device("cpu"))
    layer = visualize.find_layer(model.net, "conv4")
    _, before = visualize.maximise(model.net, layer, [0, 5, 9], model.input_shape, steps=1)
    images, after = visualize.maximise(model.net, layer, [0, 5, 9], model.input_shape, steps=48)
    assert images.shape == (3, 3, 32, 32)
    assert (after > before + 0.1).all(), (before, after)


def test_a_live_run_is_visualized_but_not_written_to(run, capsys):
    holder = RunWriter(run, append=True)  # as a trainer holds its store
    try:
        assert main(["visualize", str(run), "--layer", "conv1", "--filters", "0", "--steps", "2", "--no-draw"]) == 0
    finally:
        holder.close()
    assert "not stored: the run's trainer is still writing it" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--layer", "conv9"], "no layer 'conv9' in the model; close ones: conv5, conv4"),
        (["--layer", "conv1", "--filters", "0-40"], "the layer has 32 filters (0-31)"),
        (["--layer", "conv1", "--filters", "a-b"], "write indices and ranges, as 0-63 or 3,5,7-9"),
        (["--layer", "fc"], "'fc' does not output maps"),
        (["--layer", "conv1", "--steps", "0"], "--steps must be positive"),
    ],
)
def test_bad_options_are_one_line(run, capsys, argv, said):
    assert main(["visualize", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err


def test_a_run_without_checkpoint_says_how_to_get_one(run, capsys):
    shutil.rmtree(run.with_suffix(".ckpt"))
    assert main(["visualize", str(run), "--layer", "conv1"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "saves one at each epoch's end" in err


def test_a_monitor_run_of_the_users_model_cannot_be_rebuilt(tmp_path, capsys):
    seq = ev.Sequencer()
    with RunWriter(tmp_path / "mine.mirante") as writer:
        writer.write(ev.RunStarted(**seq.header(0), name="mine", model="MyNet", dataset="custom",
                                   model_summary={"input_shape": [3, 32, 32]}))  # fmt: skip
    (tmp_path / "mine.ckpt").mkdir()
    (tmp_path / "mine.ckpt" / "last.pt").write_bytes(b"")
    assert main(["visualize", str(tmp_path / "mine.mirante"), "--layer", "conv1"]) == 2
    assert "its model 'MyNet' is not one mirante builds" in capsys.readouterr().err


def test_a_compare_shows_each_runs_visualized_filters(run, captured_run, capsys):
    from tests.test_compare_view import compare_app, drive_compare

    assert main(["visualize", str(run), "--layer", "conv5", "--filters", "0-7", "--steps", "4", "--no-draw"]) == 0
    capsys.readouterr()

    async def script(app, pilot):
        await pilot.press("4")
        await pilot.pause()
        rows = app.query_one("#filter-rows")
        text = "\n".join(strip.text for strip in rows.strips())
        assert text.startswith("conv5: what each filter responds to most")
        assert text.count("· step 20") == 1 and "▀" in text  # the run that has them, not the one without

    drive_compare(compare_app([run, captured_run]), (100, 30), script)
