"""The Activations pane on a real capture: any layer from the tree, each image, channels ordered and enlarged,
Grad-CAM, the confusion matrix and the filters, at 80x24; and NO_COLOR in a real terminal draws them in ASCII."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import apps
from tests import test_terminal as terminal
from tui import captures
from tui.app import MiranteApp
from tui.sources import FollowSource

ROOT = Path(__file__).resolve().parents[1]
RAMP = set(" .:-=+*#%@")


@pytest.fixture
def run(captured_copy) -> Path:
    return captured_copy


def lines(widget) -> list[str]:
    return [widget.render_line(y).text for y in range(widget.size.height)]


def drive(store: Path, script, size=(80, 24)) -> None:
    apps.drive(MiranteApp(FollowSource(store), store=store), size, script, tries=200)


def test_any_layer_each_image_channels_gradcam_confusion_and_filters_at_80x24(run):
    async def script(app, pilot):
        await pilot.press("4")
        await pilot.pause()
        pane, view = app.query_one("ActivationsPane"), app.query_one("#view")
        caption = apps.text_of(app.query_one("#caption"))
        assert caption.startswith("capture 3/3 · step 20 · image 1/10 · maps"), caption
        shown = "\n".join(lines(view))
        assert "conv1 · 32x32 ·" in shown and "of 32 channels" in shown  # the first conv first
        capture = app.state.capture_at()
        first = captures.guess(capture, 0)
        assert captures.class_name(app.state.classes, first.label) + " ->" in shown  # the image's class, the guess

        await pilot.press("slash", *"conv4", "enter")  # find a layer by name
        await pilot.pause()
        assert pane.picked == "conv4"
        assert "conv4 · 16x16" in "\n".join(lines(view))
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert "image 2/10" in apps.text_of(app.query_one("#caption"))
        await pilot.press("o")  # by mean activation: the strongest channel first, under the cursor
        await pilot.pause()
        maps = app.state.latest_maps("conv4").maps[1]
        strongest = int(np.argmax(maps.reshape(len(maps), -1).mean(axis=1)))
        text = "\n".join(lines(view))
        assert "by mean" in text and f">{strongest}" in text
        await pilot.press("z")  # enlarge it
        await pilot.pause()
        text = "\n".join(lines(view))
        assert f"conv4 channel {strongest} (1 of 64 by mean)" in text.replace("\n", " "), text
        await pilot.press("v")
        await pilot.pause()
        text = "\n".join(lines(view))
        assert "looks at:" in text and "likeliest:" in text and "Grad-CAM on conv5" in text.replace("\n", " ")
        await pilot.press("v")
        await pilot.pause()
        text = "\n".join(lines(view))
        assert "confusion, validation of epoch" in text
        for name in app.state.classes:  # every class names its row (cut to fit, at 80 columns)
            assert any(line.strip().startswith(name[:14]) for line in text.splitlines()), name
        assert "worst:" in text
        await pilot.press("v")
        await pilot.pause()
        assert "conv1 filters" in "\n".join(lines(app.query_one("#filters")))
        await pilot.press("left")  # an earlier capture
        await pilot.pause()
        assert apps.text_of(app.query_one("#caption")).startswith("capture 2/3 · step 10")

    drive(run, script)


def test_the_layer_tree_groups_stages_and_blocks():
    names = ["input", "conv1", "layer1.0", "layer1.0.conv1", "layer1.0.conv2", "layer1.1", "layer1.1.conv1",
             "layer2.0", "layer2.0.conv1", "layer2.0.downsample.0", "layer2.1", "layer2.1.conv1"]  # fmt: skip
    tree = captures.layer_tree(names)
    top = [(n.label, n.layer) for n in tree.children]
    assert top == [("input", "input"), ("conv1", "conv1"), ("layer1", None), ("layer2", None)]
    stage = tree.children[2]
    assert [(n.label, n.layer) for n in stage.children] == [("0", "layer1.0"), ("1", "layer1.1")]
    block = tree.children[3].children[0]
    assert [(n.label, n.layer) for n in block.children] == [("conv1", "layer2.0.conv1"),
                                                            ("downsample.0", "layer2.0.downsample.0")]  # fmt: skip
    assert sorted(n.layer for n in tree.walk() if n.layer) == sorted(names)  # every layer once
    assert captures.find_layers(names, "CONV1")[:2] == ["conv1", "layer1.0.conv1"]


def test_the_worst_pairs_say_the_commonest_mistakes():
    m = np.array([[8, 2, 0], [5, 5, 0], [0, 0, 10]], dtype=float)
    assert captures.worst_pairs(m, ("a", "b", "c")) == ["b as a: 5 (50% of b)", "a as b: 2 (20% of a)"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_no_color_draws_the_maps_in_ascii_in_a_real_terminal(run):
    store = run
    socket = f"mirante-act-{os.getpid()}"
    env = f"TERM=xterm-256color PYTHONPATH={ROOT} NO_COLOR=1"

    def tmux(*args: str) -> str:
        return terminal.tmux(socket, *args)

    tmux("new-session", "-d", "-x", "80", "-y", "24", f"env {env} {sys.executable} -m tui.cli watch {store}")
    try:
        screen = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "finished" not in screen:
            screen = tmux("capture-pane", "-p")
            time.sleep(0.3)
        tmux("send-keys", "4")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "conv1 · 32x32 ·" not in screen:
            time.sleep(0.3)
            screen = tmux("capture-pane", "-p")
        assert "conv1 · 32x32 ·" in screen, screen
        rows = [row[38:] for row in screen.splitlines()[4:20]]  # the grid, right of the tree and the image
        drawn = [row for row in rows if row.strip() and set(row) <= RAMP and len(set(row) - {" "}) >= 3]
        assert len(drawn) >= 6, screen  # map rows in the ASCII ramp, several levels each
        assert "▀" not in screen and "Traceback" not in screen
    finally:
        tmux("kill-server")


def test_v_in_the_pane_visualizes_the_picked_layer_and_shows_what_its_filters_respond_to(run, monkeypatch):
    from tui import visual

    monkeypatch.setattr(visual, "STEPS", 16)  # the job's gradient ascent: a few steps are enough to see it work

    async def script(app, pilot):
        await pilot.press("4", "slash", *"conv5", "enter", "V")
        pane = app.query_one("ActivationsPane")
        assert pane.job is not None and pane.job.layer == "conv5"
        assert apps.text_of(app.query_one("#caption")).startswith("visualizing conv5")
        await apps.until(pilot, lambda: pane.job is None, timeout=120)  # the child: torch's import, 16 steps
        assert pane.view == "filters" and "conv5" in app.state.visualized
        text = "\n".join(lines(app.query_one("#view")))
        assert "conv5: what each filter responds to most" in text and "▀" in text

    drive(run, script, size=(100, 30))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
@pytest.mark.parametrize(("colorterm", "sequence", "not_sequence"), [("truecolor", "48;2;", "48;5;"),
                                                                     (None, "48;5;", "48;2;")])  # fmt: skip
def test_maps_are_true_colour_where_the_terminal_says_so_and_256_colours_elsewhere(
    run, colorterm, sequence, not_sequence
):
    socket = f"mirante-colours-{os.getpid()}-{colorterm}"
    colour = f"COLORTERM={colorterm}" if colorterm else "-u COLORTERM"
    command = f"env {colour} TERM=xterm-256color PYTHONPATH={ROOT} {sys.executable} -m tui.cli watch {run}"
    terminal.tmux(socket, "new-session", "-d", "-x", "80", "-y", "24", command)
    try:
        terminal.wait_for(lambda: "finished" in terminal.tmux(socket, "capture-pane", "-p"), 60, "the run")
        terminal.tmux(socket, "send-keys", "4")
        terminal.wait_for(lambda: "conv1 ·" in terminal.tmux(socket, "capture-pane", "-p"), 20, "the maps")
        escaped = terminal.tmux(socket, "capture-pane", "-p", "-e")
        assert escaped.count(sequence) > 100 and not_sequence not in escaped  # the map cells' backgrounds
    finally:
        terminal.tmux(socket, "kill-server")


def test_the_view_draws_one_by_one_maps_many_channels_and_says_when_the_terminal_is_too_small():
    from tui.widgets.capture import CaptureView, Frame

    rng = np.random.default_rng(0)
    image = rng.random((3, 32, 32))
    view = CaptureView()
    view.frame = Frame(image=image, image_lines=["cat -> dog 40% (wrong)"], maps=rng.random((64, 1, 1)),
                       titles=[str(i) for i in range(64)], heading="layer4.1.conv2 · 1x1", total=2048)  # fmt: skip
    lines = [line.plain for line in view.draw(80, 20, color=True)]
    assert any("layer4.1.conv2 · 1x1" in line and "of 2048 channels" in line for line in lines), lines
    assert sum(line.count("▀") for line in lines) > 64  # every 1x1 map a cell (and the image)
    assert [line.plain for line in view.draw(12, 3, color=True)] == ["enlarge the "]
