"""The table of runs a compare shows (engine/compare.py), over stores the tests write and the sample runs."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine import compare
from engine import events as ev
from engine.store import RunReader
from tests.runs import make_events, write_run

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"


def run_with(path: Path, steps: int = 1500, end: str | None = "finished", **config) -> Path:
    """A synthetic run whose RunStarted config has `config` over the usual one."""
    events = make_events(steps=steps, end=end)
    first = events[0]
    events[0] = dataclasses.replace(first, name=path.stem, config=first.config | config)
    write_run(path, events=events)
    return path


def test_csv_holds_what_the_stores_hold():
    rows = [compare.read_row(p) for p in compare.resolve([str(SAMPLES)])]
    parsed = list(csv.DictReader(io.StringIO(compare.to_csv(rows))))
    assert [r["run"] for r in parsed] == [r.name for r in rows] and len(parsed) == len(list(SAMPLES.glob("*.mirante")))
    for line, row in zip(parsed, rows, strict=True):
        with RunReader(row.path) as run:
            summary, epochs = run.summary(), run.epochs()
            losses = run.scalars("train/loss")[1]
            rates = run.scalars("throughput/img_s")[1]
            fails = [d for d in run.events_of("Diagnostic") if d.level == "fail"]
        assert line["status"] == summary.status
        accs = [e.val_acc for e in epochs if e.val_acc is not None]
        if accs:
            assert float(line["best val acc"]) == max(accs) == summary.best_val_acc
            assert int(line["best epoch"]) == next(e.epoch for e in epochs if e.val_acc == max(accs))
        else:
            assert line["best val acc"] == line["best epoch"] == ""
        assert float(line["final train loss"]) == losses[np.isfinite(losses)][-1]
        assert float(line["img/s"]) == pytest.approx(float(np.median(rates[np.isfinite(rates)])))
        assert float(line["wall s"]) == pytest.approx(summary.duration)
        if fails:
            assert line["worst"] == f"fail {fails[0].code}"
    by_name = {r["run"]: r for r in parsed}
    assert by_name["diverging-lr"]["worst"] == "fail divergence" and by_name["diverging-lr"]["status"] == "failed"
    assert by_name["plainnet-sigmoid"]["worst"] == "warn vanishing-gradients"
    assert by_name["plainnet-sigmoid"]["activation"] == "sigmoid" and by_name["smallcnn-shapes"]["activation"] == "relu"


def test_runs_are_named_by_what_differs(tmp_path):
    a = run_with(tmp_path / "a.mirante", lr=0.01, seed=0, log_every=10)
    b = run_with(tmp_path / "b.mirante", lr=0.5, seed=0, log_every=50)  # a cadence: not what the runs compare
    rows = [compare.read_row(p) for p in (a, b)]
    assert compare.differing_keys(rows) == ["lr"]
    assert [compare.label(r, ["lr"]) for r in rows] == ["lr=0.01", "lr=0.5"]
    header, body = compare.table(rows)
    assert header[:3] == ["run", "lr", "status"] and [line[1] for line in body] == [0.01, 0.5]
    d = run_with(tmp_path / "d.mirante", lr=0.5, seed=0, momentum=0.9)  # a key the others lack, at its default:
    assert compare.differing_keys([*rows, compare.read_row(d)]) == ["lr"]  # they were trained so (an older version)
    c = run_with(tmp_path / "c.mirante", lr=0.5, seed=1, momentum=0.5)  # ... at another value: it differs
    rows.append(compare.read_row(c))
    keys = compare.differing_keys(rows)
    assert keys == ["lr", "momentum", "seed"]
    assert compare.label(rows[2], keys) == "lr=0.5 momentum=0.5 seed=1"
    assert compare.label(rows[0], keys) == "lr=0.01 momentum=0.9 seed=0"


def test_runs_differing_in_many_keys_are_named_by_the_weightiest_keys_that_tell_them_apart():
    """The sample runs differ in ten keys: each is named by the model, learning rate and activation (each key taken
    splits runs the ones before it left together); the smallcnn runs those do not tell apart, by their names."""
    rows = [compare.read_row(p) for p in compare.resolve([str(SAMPLES)])]
    names = dict(zip([r.name for r in rows], compare.labels(rows, compare.differing_keys(rows)), strict=True))
    assert names["resnet18-shapes"] == "model=resnet18 lr=0.05 activation=relu"
    assert names["plainnet-sigmoid"] == "model=plainnet lr=0.05 activation=sigmoid"
    assert names["plainnet-relu"] == "model=plainnet lr=0.05 activation=relu"
    assert names["diverging-lr"] == "model=plainnet lr=5.0 activation=relu"
    for name in ("smallcnn-shapes", "smallcnn-seed1", "lrfind-smallcnn"):
        assert names[name] == name
    four = [r for r in rows if r.name in ("smallcnn-shapes", "smallcnn-seed1", "plainnet-relu", "plainnet-sigmoid")]
    keys = compare.differing_keys(four)
    assert keys == ["activation", "model", "seed", "steps"]
    assert compare.labels(four, keys) == [
        f"model={m} activation={a} seed={s}"
        for m, a, s in [(r.model, r.config["activation"], r.config["seed"]) for r in four]
    ]
    seedless = compare.seedless_labels(four, keys)
    groups = compare.seed_groups(four)
    pair = next(g for g in groups if len(g) == 2)
    assert compare.group_label(pair, compare.labels(four, keys), seedless) == "model=smallcnn activation=relu x2 seeds"


def test_runs_resolve_from_stores_names_and_directories(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    old = run_with(runs / "old.mirante")
    new = run_with(runs / "new.mirante")
    other = run_with(tmp_path / "elsewhere.mirante")
    assert compare.resolve(["old", str(other)], runs_dir=runs) == [old.resolve(), other.resolve()]
    assert compare.resolve(["old.mirante"], runs_dir=runs) == [old.resolve()]
    assert set(compare.resolve([], runs_dir=runs)) == {old.resolve(), new.resolve()}  # the runs directory
    assert compare.resolve([str(runs), "old"], runs_dir=runs).count(old.resolve()) == 1  # each store once
    assert len(compare.resolve([str(runs)], runs_dir=runs, last=1)) == 1
    with pytest.raises(compare.CompareError, match="nosuch: no such run"):
        compare.resolve(["nosuch"], runs_dir=runs)


def test_where_compares_numbers_as_numbers(tmp_path):
    rows = [compare.read_row(run_with(tmp_path / f"{i}.mirante", lr=lr, optimizer=o)) for i, (lr, o) in
            enumerate([(0.1, "sgd"), (0.01, "sgd"), (0.1, "adam")])]  # fmt: skip
    assert [r.name for r in rows if compare.matches(r, ["lr=1e-1"])] == ["0", "2"]
    assert [r.name for r in rows if compare.matches(r, ["lr=0.1", "optimizer=adam"])] == ["2"]
    assert not any(compare.matches(r, ["momentum=0.5"]) for r in rows)
    assert all(compare.matches(r, ["momentum=0.9"]) for r in rows)  # a key a run lacks reads as its default
    with pytest.raises(compare.CompareError, match="expected KEY=VALUE"):
        compare.parse_where(["lr"])


def test_a_store_that_cannot_be_read_is_a_row_that_says_so(tmp_path):
    good = run_with(tmp_path / "good.mirante", lr=0.1)
    bad = tmp_path / "bad.mirante"
    bad.write_bytes(b"not a store at all" * 10)
    empty = tmp_path / "empty.mirante"
    empty.touch()
    rows = [compare.read_row(p) for p in (good, bad, empty)]
    assert rows[0].error is None and rows[1].status == "unreadable" and rows[1].error
    assert compare.differing_keys(rows) == []  # only readable runs' configs count
    parsed = list(csv.DictReader(io.StringIO(compare.to_csv(rows))))
    assert parsed[1]["status"] == "unreadable" and parsed[1]["worst"] == rows[1].error


def test_json_has_every_run_whole_and_no_nan(tmp_path):
    events = make_events(steps=300, end="failed")
    events.append(ev.Step(seq=events[-1].seq + 1, wall_time=events[-1].wall_time, step=300,
                          scalars={"train/loss": math.nan}))  # fmt: skip
    write_run(tmp_path / "nan.mirante", events=events)
    rows = [compare.read_row(tmp_path / "nan.mirante"), compare.read_row(run_with(tmp_path / "b.mirante", lr=1.0))]
    doc = json.loads(compare.to_json(rows), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert doc["differing"] == ["lr"] and [r["label"] for r in doc["runs"]] == ["lr=0.1", "lr=1.0"]
    assert doc["runs"][0]["final_train_loss"] == pytest.approx(rows[0].final_train_loss)
    assert doc["runs"][0]["config"]["batch_size"] == 64 and doc["runs"][0]["status"] in ("failed", "crashed")


def test_mirante_compare_prints_the_table_in_each_format(tmp_path, capsys):
    from tui import cli

    a = run_with(tmp_path / "a.mirante", lr=0.01)
    b = run_with(tmp_path / "b.mirante", lr=0.5)
    assert cli.main(["compare", str(a), str(b)]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["run", "lr", "status"] and [line.split()[:2] for line in lines] == [
        ["a", "0.01"],
        ["b", "0.5"],
    ]
    assert "45.00%" in lines[0]  # best val acc, as a percentage (the synthetic run has one epoch, at 45%)
    assert cli.main(["compare", str(tmp_path), "--where", "lr=0.5", "--format", "csv"]) == 0
    assert [r["run"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))] == ["b"]
    assert cli.main(["compare", str(tmp_path), "--format", "json", "--last", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)["runs"]) == 1


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["compare", "nosuch"], "nosuch: no such run"),
        (["compare", "--where", "lr"], "expected KEY=VALUE"),
        (["compare", "notes.txt"], "notes.txt: not a mirante run store"),  # nothing to compare: in a terminal as not
        (["compare", "notes.txt", "--format", "csv"], "notes.txt: not a mirante run store"),
    ],
)
def test_bad_input_to_compare_is_one_line_exit_2(argv, said, tmp_path, capsys, monkeypatch):
    import sys

    from tui import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a store\n" * 200)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the app would open, were there a run to show
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mirante: error: ") and said in err[0], err


def test_an_unreadable_store_among_good_ones_is_said_and_listed(tmp_path, capsys):
    from tui import cli

    run_with(tmp_path / "good.mirante", lr=0.1)
    (tmp_path / "bad.mirante").write_bytes(b"\x1b[31mnot a store" * 10)
    assert cli.main(["compare", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "bad.mirante" in err and "\x1b" not in out + err  # said, and no escape sequence reaches the terminal
    assert any(line.startswith("bad") and "unreadable" in line for line in out.splitlines())


def test_a_terminal_too_narrow_for_the_table_gets_a_block_per_run(tmp_path, capsys, monkeypatch):
    import os
    import sys

    from tui import cli

    for i, lr in enumerate((0.01, 0.5)):
        run_with(tmp_path / f"run{i}.mirante", lr=lr, momentum=0.9, schedule="cosine" if i else "none")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(cli.shutil, "get_terminal_size", lambda: os.terminal_size((60, 24)))
    assert cli.main(["compare", str(tmp_path), "--headless"]) == 0  # in a terminal: the table, not the view
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == [
        "run0  lr=0.01 schedule=none",
        "run1  lr=0.5 schedule=cosine",
    ]
    assert lines[1].startswith("  finished · best val acc 45.00% (epoch 0) ·")
    assert all(len(line) <= 60 for line in lines) and not any(
        line.endswith(("best", "val", "img/s ·")) for line in lines
    )
    assert any(" 1,749 img/s " in line for line in lines)  # a figure is not split across lines


# --- curves: the x axis and the seed bands ----------------------------------------------------------------


def test_samples_seen_put_a_batch_64_run_at_twice_the_x_of_a_batch_32_run():
    steps = np.arange(1, 101)
    x32 = compare.x_of(steps, "samples", {"batch_size": 32})
    x64 = compare.x_of(steps, "samples", {"batch_size": 64})
    assert np.array_equal(x64, 2 * x32) and x32[-1] == 3200
    assert np.array_equal(compare.x_of(steps, "epoch", {"steps_per_epoch": 50}), steps / 50)
    assert np.array_equal(compare.x_of(steps, "step", {}), steps)
    assert compare.x_of(steps, "samples", {}) is None  # a Monitor run that gave no batch size
    assert compare.x_of(steps, "epoch", {"steps_per_epoch": True}) is None


def test_runs_that_differ_only_by_seed_are_one_group_with_a_band(tmp_path):
    paths = [
        run_with(tmp_path / "a.mirante", lr=0.1, seed=0),
        run_with(tmp_path / "b.mirante", lr=0.1, seed=1, log_every=3),  # a cadence does not split a group
        run_with(tmp_path / "c.mirante", lr=0.5, seed=0),
    ]
    rows = [compare.read_row(p) for p in paths]
    groups = compare.seed_groups(rows)
    assert groups == [[0, 1], [2]]
    keys = compare.differing_keys(rows)
    names, seedless = compare.labels(rows, keys), compare.seedless_labels(rows, keys)
    assert [compare.group_label(g, names, seedless) for g in groups] == ["lr=0.1 x2 seeds", "lr=0.5 seed=0"]
    x = np.arange(0.0, 11.0)
    low, high = (x, np.full(11, 1.0)), (x + 0.5, np.full(11, 3.0))  # the second starts later: the shared range
    grid, mean, lo, hi = compare.band([low, high], points=5)
    assert grid[0] == 0.5 and grid[-1] == 10.0 and len(grid) == 5
    assert np.allclose(mean, 2.0) and np.allclose(lo, 1.0) and np.allclose(hi, 3.0)
    spiky = (x, np.where(x == 5, np.nan, 2.0))  # a NaN in one run: left out there, not spread around it
    grid, mean, lo, hi = compare.band([spiky, (x, np.full(11, 4.0))], points=11)
    assert np.allclose(mean, 3.0) and np.allclose(lo, 2.0)
    assert [len(a) for a in compare.band([(x, x), (x + 20, x)])] == [0, 0, 0, 0]  # no x in common


def test_wall_time_puts_each_step_at_the_seconds_since_the_run_began(tmp_path):
    path = run_with(tmp_path / "a.mirante", steps=3000)  # the synthetic clock: 0.01 s an event
    with RunReader(path) as run:
        clock = run.step_walls()
        steps, _ = run.scalars("train/loss")
        events = [e for e in run.follow(0, limit=None) if isinstance(e, ev.Step)]
    assert np.array_equal(clock[0], [e.step for e in events])
    assert np.array_equal(clock[1], [e.wall_time for e in events])
    x = compare.x_of(steps, "wall", {}, clock)
    first = events[0].wall_time
    assert x[0] == 0.0 and x[-1] == pytest.approx(events[-1].wall_time - first)
    assert np.all(np.diff(x) > 0)
    assert compare.x_of(steps, "wall", {}) is None and compare.x_of(steps, "wall", {}, (steps[:0], x[:0])) is None
