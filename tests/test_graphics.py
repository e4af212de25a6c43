"""Pictures through a terminal graphics protocol: which one is picked (asked of a terminal played by the test in a
pty), how they are laid out, and what a terminal receives: the Kitty protocol's PNGs decoded back to the pixels of
the captured image and the enlarged channel, Sixel's images at the size laid out."""

from __future__ import annotations

import base64
import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.store import RunReader
from tests import apps
from tests.test_control import env, kill_group, wait_for
from tui import graphics
from tui.app import MiranteApp
from tui.sources import FollowSource
from tui.state import maps_of
from tui.widgets.capture import Frame
from tui.widgets.heatmap import colour_table, heat_rgb, image_rgb
from tui.widgets.pictures import MIN_COLS, arrange, scaled, sheet_of

ROOT = Path(__file__).resolve().parents[1]
CELL = (10, 20)  # the pixel size of a cell in the test's terminal: 800x480 pixels for 80x24


class Terminal:
    """A pty the size of an 80x24 terminal with 10x20-pixel cells, read into a buffer by a thread; `answers` maps
    a query the program writes to what the terminal says back."""

    def __init__(self, command: list[str], cwd: Path, answers: dict[bytes, bytes] | None = None, **extra) -> None:
        self.main, side = os.openpty()
        fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 80 * CELL[0], 24 * CELL[1]))
        self.answers = answers or {}
        self.output = bytearray()
        self.proc = subprocess.Popen(
            command, cwd=cwd, stdin=side, stdout=side, stderr=side, start_new_session=True,
            env=env() | {"TERM": "xterm-256color", "COLORTERM": "truecolor"} | extra,
        )  # fmt: skip
        os.close(side)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.main], [], [], 0.5)
                if not ready:
                    if self.proc.poll() is not None:
                        return
                    continue
                chunk = os.read(self.main, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk
            asked = sorted((chunk.find(query), answer) for query, answer in self.answers.items() if query in chunk)
            for _, answer in asked:  # answered in the order asked, as a terminal does
                os.write(self.main, answer)

    def keys(self, *keys: str) -> None:
        for key in keys:
            os.write(self.main, key.encode())
            time.sleep(0.3)

    def close(self) -> None:
        kill_group(self.proc)
        os.close(self.main)


def detected(tmp_path: Path, answers: dict[bytes, bytes]) -> str:
    """The protocol `auto` picks in a terminal that answers `answers`."""
    code = "from tui import graphics; print('picked', graphics.protocol_name(graphics.image_widget('auto')))"
    term = Terminal([sys.executable, "-c", code], tmp_path, answers, MIRANTE_IMAGES="auto")
    try:
        wait_for(lambda: b"picked" in term.output and term.proc.poll() is not None, 30, "the pick")
    finally:
        term.close()
    return re.search(rb"picked (\w+)", bytes(term.output)).group(1).decode()


DA1 = graphics.DA1  # "who are you": a Sixel terminal lists 4 among what it can do
KITTY_QUERY = b"\x1b_G"


def test_auto_picks_what_the_terminal_says_it_speaks(tmp_path):
    assert detected(tmp_path, {DA1: b"\x1b[?63;1;2;4;6;9c"}) == "sixel"
    kitty = {DA1: b"\x1b[?62;c", KITTY_QUERY: b"\x1b_Gi=31;OK\x1b\\"}
    assert detected(tmp_path, kitty) == "kitty"
    assert detected(tmp_path, {DA1: b"\x1b[?1;2c"}) == "cells"  # tmux, a plain xterm: neither
    assert detected(tmp_path, {}) == "cells"  # no answer at all (after graphics.WAIT)


def test_the_mode_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.setenv("MIRANTE_IMAGES", "kitty")
    assert graphics.mode_from(None) == "kitty" and graphics.mode_from("sixel") == "sixel"
    assert graphics.image_widget("cells") is None
    assert graphics.protocol_name(graphics.image_widget(None)) == "kitty"
    assert graphics.protocol_name(graphics.image_widget("sixel")) == "sixel"
    monkeypatch.setenv("NO_COLOR", "1")
    assert graphics.image_widget("auto") is None  # NO_COLOR: the ASCII drawing, even where pictures would show
    monkeypatch.setenv("MIRANTE_IMAGES", "png")
    with pytest.raises(graphics.GraphicsError, match="MIRANTE_IMAGES must be one of auto, sixel, kitty, cells"):
        graphics.mode_from(None)


def test_a_bad_images_mode_is_one_line_and_exit_2(tmp_path):
    run = ROOT / "sample_runs" / "smallcnn-shapes.mirante"
    for extra, args in (({"MIRANTE_IMAGES": "png"}, []), ({}, ["--images", "png"])):
        done = subprocess.run(
            [sys.executable, "-m", "tui.cli", "replay", str(run), *args],
            cwd=tmp_path, env=env() | extra, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done
        assert len(done.stderr.strip().splitlines()) <= 3 and "Traceback" not in done.stderr, done.stderr
        assert "png" in done.stderr


def test_pictures_are_laid_out_as_large_as_fit_and_the_rest_counted():
    one = arrange(1, 1.0, 58, 18, CELL)  # one square picture in 58x18 cells: as tall as the room allows
    assert (one.per_row, one.shown) == (1, 1) and one.rows <= 17 and one.cols * CELL[0] <= one.rows * CELL[1] + CELL[0]
    two = arrange(2, 1.0, 58, 18, CELL)
    assert two.per_row == 2 and 2 * two.cols + 1 <= 58 and two.rows + 1 <= 18
    many = arrange(64, 1.0, 58, 18, CELL)
    assert many.cols == MIN_COLS and many.shown < 64 and many.shown == many.per_row * (18 // (many.rows + 1))
    assert arrange(3, 1.0, 5, 18, CELL).shown == 0  # narrower than one picture: none, all counted


def test_the_views_with_pictures_and_those_that_stay_in_cells():
    rng = np.random.default_rng(0)
    image, channel = rng.random((3, 8, 8)), rng.standard_normal((4, 4))
    sheet = sheet_of(Frame(mode="channel", image=image, channel=channel, channel_lines=["conv1 channel 3"]))
    assert [p.title for p in sheet.panels] == ["image", "channel"] and sheet.head == ["conv1 channel 3"]
    assert np.array_equal(sheet.panels[0].rgb, image_rgb(image))
    assert np.array_equal(sheet.panels[1].rgb, heat_rgb(channel))
    assert set(map(tuple, sheet.panels[1].rgb.reshape(-1, 3))) <= set(map(tuple, colour_table("viridis")))
    cam = sheet_of(Frame(mode="gradcam", image=image, cams=[("looks at: cat", rng.random((8, 8)))], probs_line="p"))
    assert [p.title for p in cam.panels] == ["image", "looks at: cat"] and cam.under[-1] == "p"
    assert sheet_of(Frame(mode="maps", image=image, maps=rng.random((4, 4, 4)))) is None  # titles, dead marks
    assert sheet_of(Frame(mode="confusion", matrix=np.eye(3))) is None  # a table
    assert sheet_of(Frame(message="no capture yet")) is None


@pytest.fixture
def run(captured_copy) -> Path:
    return captured_copy


def test_the_pane_shows_pictures_where_the_terminal_draws_them(run):
    async def script(app, pilot):
        await pilot.press("4")
        await pilot.pause()
        pane = app.query_one("ActivationsPane")
        assert not pane.has_class("pictures")  # the channel grid stays in cells
        await pilot.press("z")
        await pilot.pause()
        pictures = app.query_one("#pictures")
        assert pane.has_class("pictures") and pictures.display and not app.query_one("#view").display
        assert [p.title for p in pictures.sheet.panels] == ["image", "channel"]
        assert len(pictures.query(app.graphics)) == 2
        assert "conv1 channel" in apps.text_of(pictures.query_one("#pictures-head"))
        await pilot.press("v")  # Grad-CAM
        await pilot.pause()
        assert pictures.sheet.panels[1].title.startswith("looks at:") and len(pictures.query(app.graphics)) >= 2
        await pilot.press("v")  # the confusion matrix: a table, in cells
        await pilot.pause()
        assert not pane.has_class("pictures") and app.query_one("#view").display

    apps.drive(MiranteApp(FollowSource(run), store=run, images="sixel"), (80, 24), script, tries=200)


def kitty_images(output: bytes) -> list[tuple[int, bytes]]:
    """The PNGs a program sent by the Kitty graphics protocol, each with its id, its chunks joined."""
    chunks: dict[int, list[bytes]] = {}
    for keys, payload in re.findall(rb"\x1b_G([^;\x1b]*);?([^\x1b]*)\x1b\\", output):
        fields = dict(kv.split(b"=", 1) for kv in keys.split(b",") if b"=" in kv)
        if b"f" in fields and b"i" in fields and fields.get(b"a") != b"q":  # not the query
            chunks.setdefault(int(fields[b"i"]), []).append(payload)
    return [(i, base64.b64decode(b"".join(parts))) for i, parts in chunks.items()]


def centres(got: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The pixel at the centre of each of the `shape[:2]` blocks a picture is made of."""
    rows = ((np.arange(shape[0]) + 0.5) * got.shape[0] / shape[0]).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * got.shape[1] / shape[1]).astype(int)
    return got[rows][:, cols]


def test_a_kitty_terminal_receives_the_captured_image_and_the_channel_pixel_for_pixel(run):
    from PIL import Image

    with RunReader(run) as reader:
        picture = maps_of(reader.activation("input")).maps[0]
        conv1 = maps_of(reader.activation("conv1")).maps[0][0]
    command = [sys.executable, "-m", "tui.cli", "replay", str(run), "--speed", "1000", "--images", "kitty"]
    term = Terminal(command, run.parent)
    try:
        wait_for(lambda: b"Activations" in term.output, 60, "the app")
        term.keys("4", "z")
        wait_for(lambda: len(kitty_images(bytes(term.output))) >= 2, 30, "two pictures")
        sent = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for _, png in kitty_images(bytes(term.output))]
        placeholders = bytes(term.output).decode("utf-8", "replace").count(chr(0x10EEEE))
    finally:
        term.close()
    for expected in (image_rgb(picture), heat_rgb(conv1)):  # [32, 32, 3]: the captured pixels, coloured
        matches = [got for got in sent if got.shape[0] >= 32 and np.array_equal(centres(got, expected.shape), expected)]
        assert matches, [got.shape for got in sent]
        got = matches[0]
        h, w = got.shape[:2]
        assert w % CELL[0] == 0 and h % CELL[1] == 0 and w >= 20 * CELL[0]  # whole cells, a large picture
        assert abs(w / h - 1.0) < 0.15  # the square map stays square
        assert np.array_equal(got, np.asarray(scaled(expected, w, h)))  # each pixel a sharp block: nothing smoothed
    assert placeholders >= 2 * 20  # the cells the pictures take are Kitty's placeholders


def test_a_sixel_terminal_receives_sixel_images_of_the_size_laid_out(run):
    command = [sys.executable, "-m", "tui.cli", "replay", str(run), "--speed", "1000", "--images", "sixel"]
    term = Terminal(command, run.parent)
    try:
        wait_for(lambda: b"Activations" in term.output, 60, "the app")
        term.keys("4", "z")
        wait_for(lambda: len(re.findall(rb"\x1bP[0-9;]*q", bytes(term.output))) >= 2, 30, "two sixel images")
        sizes = re.findall(rb'\x1bP[0-9;]*q"1;1;(\d+);(\d+)', bytes(term.output))
    finally:
        term.close()
    assert len(sizes) >= 2
    for w, h in sizes[:2]:
        assert int(w) % CELL[0] == 0 and int(w) >= 20 * CELL[0] and abs(int(w) / int(h) - 1.0) < 0.15
