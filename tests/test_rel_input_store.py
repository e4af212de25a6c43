"""Strings from a store never reach the terminal raw: escape sequences are shown as escapes, markup as text.

The store is crafted with RunWriter (the CLI no longer takes such names): its run name, model, dataset,
layer names, config values, device, captures' layers, a Diagnostic and the end reason hold "[/]", "[bold]",
a title change and a screen clear.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from engine import events as ev
from tests.apps import text_of
from tests.runs import make_events, write_run

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J"  # clears the screen
H = f"[/][bold]{TITLE}{CLEAR}"
SHOWN = "[/][bold]\\x1b]0;pwned\\x07\\x1b[2J"  # H as it must be shown: markup as text, control codes escaped
LAYERS = (f"conv1{H}", "fc[/]")


def hostile_events() -> list[ev.Event]:
    out = []
    for e in make_events(steps=1200, end="failed"):
        if isinstance(e, ev.RunStarted):
            summary = {
                "params": 1234,
                "macs": 5678,
                "train_flops": H,  # not a number: left out, not a crash
                "layers": [
                    [f"net.{H}", f"Conv2d{H}", 1, [8, 32, 32], 216, 221184],
                    ["fc[/]", "[bold]", 1, [], 10, 10],
                    ["bad", "row", 1, [], H, 1],
                ],
            }
            e = dataclasses.replace(
                e,
                name=f"run{H}",
                model=f"model{H}",
                dataset=f"data{H}",
                layers=LAYERS + e.layers[2:],
                config=dict(e.config) | {"optimizer": H, "schedule": H, "dataset": H, "world_size": 2, "backend": H},
                model_summary=summary,
                device={"type": "cpu", "name": f"cpu{H}"},
            )
        elif isinstance(e, (ev.Activation, ev.Filters)):
            e = dataclasses.replace(e, layer=LAYERS[0])
        elif isinstance(e, ev.Diagnostic):
            e = dataclasses.replace(e, code=f"code{H}", message=f"message{H}", evidence={f"key{H}": H, "n": [H]})
        elif isinstance(e, ev.System):
            e = dataclasses.replace(e, metrics={f"cpu/{H}": 1.0})
        elif isinstance(e, ev.RunEnded):
            e = dataclasses.replace(e, reason=f"reason{H}")
        out.append(e)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "hostile.mirante"
    write_run(path, events=hostile_events())
    return path


def assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, repr(text)


def test_ls_shows_escape_sequences_as_escapes(capsys, store):
    from tui.cli import main

    assert main(["ls", str(store.parent)]) == 0
    out, err = capsys.readouterr()
    assert_escaped(out + err)
    row = out.splitlines()[1]
    assert f"model{SHOWN}" in row and f"data{SHOWN}" in row


def test_printable_escapes_control_codes_only():
    from engine.export import printable

    assert printable(H) == SHOWN
    assert printable("plain ünïcode [x] 1.5") == "plain ünïcode [x] 1.5"
    assert printable("a\nb\tc\x7f\x9b\u202e") == "a\\nb\\tc\\x7f\\x9b\\u202e"


def test_an_lr_find_report_escapes_the_verdict(tmp_path):
    from tui.lrfind import report

    events = make_events(steps=50, end="finished")
    end = events.pop()
    seq = ev.Sequencer(last_seq=events[-1].seq, clock=lambda: end.wall_time)
    events += [
        ev.Diagnostic(**seq.header(50), level="ok", code="lr-find", message=H, evidence={}),
        dataclasses.replace(end, seq=end.seq + 1),
    ]
    write_run(tmp_path / "lr.mirante", events=events)
    text = report(tmp_path / "lr.mirante", color=False)
    assert_escaped(text)
    assert SHOWN in text


def table_text(table) -> str:
    return "\n".join(" | ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))


def visit_every_pane(store: Path, kind: str) -> dict[str, str]:
    """Open the store in the app (followed or replayed), show each pane, and return what its widgets show."""
    from tui.app import MiranteApp
    from tui.sources import FollowSource, ReplaySource

    source = FollowSource(store) if kind == "follow" else ReplaySource(store, speed=1e6)
    app = MiranteApp(source, store=store)
    widgets = {
        "1": {"info": text_of, "worst": text_of},
        "2": {"layers": table_text},
        "3": {"table": table_text},
        "4": {"view": text_of, "caption": text_of},
        "5": {"checks": table_text, "diagnostics": table_text, "detail": text_of},
        "6": {"sys0": text_of},
    }
    seen: dict[str, str] = {}

    async def main() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.source.done and app.state.ended is not None:
                    break
            assert app.state.ended is not None
            for key, shown in widgets.items():
                await pilot.press(key)
                await pilot.pause(0.2)
                if key == "5":  # the detail of the run's own check, with its hostile code, message and evidence
                    checks = app.query_one("#checks")
                    row = [k.value for k in checks.rows].index(f"code{H}")
                    checks.move_cursor(row=row)
                    await pilot.pause(0.2)
                for widget, read in shown.items():
                    for _ in range(20):  # a pane just shown may not have been laid out yet
                        seen[widget] = read(app.query_one(f"#{widget}"))
                        if seen[widget].strip():
                            break
                        await pilot.pause(0.05)
                seen[f"status {key}"] = text_of(app.query_one("#status"))
            await pilot.press("q")

    asyncio.run(main())
    return seen


@pytest.mark.parametrize("kind", ["follow", "replay"])
def test_every_pane_shows_a_hostile_store_literally(store, kind):
    seen = visit_every_pane(store, kind)
    for text in seen.values():
        assert_escaped(text)
    info = seen["info"]
    assert f"run{SHOWN}" in info and f"model{SHOWN} on data{SHOWN}" in info and f"cpu{SHOWN}" in info
    assert f"message{SHOWN}" in seen["worst"]
    assert f"conv1{SHOWN}" in seen["layers"] and "fc[/]" in seen["layers"]
    assert SHOWN in seen["table"] and "fc[/]" in seen["table"] and "[bold]" in seen["table"]
    assert "conv1[/]" in seen["view"]  # the layer's name over its maps
    assert f"message{SHOWN}" in seen["checks"] and f"code{SHOWN}" in seen["diagnostics"]
    assert f"message{SHOWN}" in seen["detail"] and f"key{SHOWN}" in seen["detail"]
    assert "cpu/[/][bold]" in seen["sys0"]
    assert f"run{SHOWN}" in seen["status 1"] and f"reason{SHOWN}" in seen["status 1"]  # tui/app.py's status line


def test_ls_says_on_stderr_which_store_is_missing_events(tmp_path, capsys):
    import sqlite3

    from tui.cli import main

    path = tmp_path / "gap.mirante"
    write_run(path, make_events(steps=50))
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM events WHERE seq = (SELECT seq FROM events WHERE kind = 'LayerStats' LIMIT 1)")
    assert main(["ls", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "damaged" in out.splitlines()[1]
    assert err.strip() == f"mirante: {path}: damaged run store: 1 event missing from the sequence"


def test_the_headless_log_escapes_strings_from_the_run(capsys):
    import io

    from engine.progress import Progress

    out = io.StringIO()
    progress = Progress(out=out)
    for event in hostile_events():
        progress.handle(event)
    assert_escaped(out.getvalue())
    assert SHOWN in out.getvalue()


def strings_for_numbers() -> list[ev.Event]:
    """A run whose config holds strings (and a NaN) wherever numbers belong."""
    out = []
    for e in make_events(steps=600, end="finished"):
        if isinstance(e, ev.RunStarted):
            config = {key: "[/]" for key in e.config} | {"diagnostics": "[/]", "lr": "[/]", "grow_fail": "x"}
            e = dataclasses.replace(e, config=config | {"momentum": float("nan"), "val_fraction": [1]})
        out.append(e)
    return out


def test_the_checks_take_only_numbers_from_a_config():
    from engine.diagnostics import Diagnostics

    checks = Diagnostics()
    for event in strings_for_numbers():
        checks.observe(event)
    checks.finish(600)


@pytest.mark.parametrize("kind", ["follow", "replay"])
def test_the_app_opens_a_run_whose_config_holds_strings_for_numbers(tmp_path, kind):
    from engine.store import RunReader
    from tui.app import MiranteApp
    from tui.snapshot import load
    from tui.sources import FollowSource, ReplaySource

    path = tmp_path / "s.mirante"
    write_run(path, events=strings_for_numbers())
    with RunReader(path) as reader:
        assert load(reader) is None  # the writer's checks cannot be trusted: the app runs its own
    source = FollowSource(path) if kind == "follow" else ReplaySource(path, speed=1e6)
    app = MiranteApp(source, store=path)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.source.done and app.state.ended is not None:
                    break
            for key in "123456":
                await pilot.press(key)
                await pilot.pause(0.1)
            await pilot.press("q")

    asyncio.run(main())
    assert app.state.ended is not None and app.state.ended.status == "finished"
