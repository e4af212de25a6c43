"""The `mirante` command as a user runs it: ls and export, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import run_group
from tests.runs import LAYERS, write_run

ROOT = Path(__file__).resolve().parents[1]


def mirante(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return run_group([sys.executable, "-m", "tui.cli", *args], cwd=cwd, env=env, timeout=120)


def assert_clean_failure(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    write_run(d / "alpha.mirante", steps=2000)
    write_run(d / "beta.mirante", steps=300, end=None)
    return d


def test_ls_lists_runs(runs_dir):
    result = mirante("ls", str(runs_dir))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:5] == ["name", "model", "dataset", "status", "steps"]
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["alpha"][1:5] == ["smallcnn", "shapes", "finished", "2,000"]
    assert by_name["alpha"][5] == "55.00%"
    assert by_name["beta"][3:5] == ["crashed", "299"]  # the last step it logged


def test_ls_reports_an_unreadable_file_and_goes_on(runs_dir, tmp_path):
    (tmp_path / "junk.mirante").write_text("not a run")
    (tmp_path / "alpha.mirante").write_bytes((runs_dir / "alpha.mirante").read_bytes())
    result = mirante("ls", str(tmp_path))
    assert result.returncode == 0
    assert "junk.mirante: not a mirante run store" in result.stderr
    assert any(line.startswith("junk ") and "unreadable" in line for line in result.stdout.splitlines())
    assert any(line.startswith("alpha ") for line in result.stdout.splitlines())


def test_ls_of_an_empty_directory(tmp_path):
    result = mirante("ls", str(tmp_path))
    assert result.returncode == 0 and "no runs" in result.stdout


def test_ls_of_the_sample_runs_folder():
    assert mirante("ls", "sample_runs").returncode == 0


def test_ls_missing_directory():
    assert_clean_failure(mirante("ls", "/nonexistent"), "/nonexistent", "no such directory")


def test_export_csv_has_every_number(runs_dir):
    result = mirante("export", str(runs_dir / "alpha.mirante"), "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    loss = [r for r in rows if r["name"] == "train/loss"]
    assert len(loss) == 2000
    assert loss[100]["value"] == "nan" and loss[101]["value"] == "inf"
    assert float(loss[999]["value"]) == 2.3026 * math.exp(-999 / 1000)
    grads = [r for r in rows if r["name"] == f"grad_norm/{LAYERS[1]}"]
    assert len(grads) == 200 and grads[0]["kind"] == "LayerStats"
    assert {r["name"] for r in rows if r["kind"] == "Epoch"} >= {"train_loss", "val_acc"}


def test_export_jsonl_to_a_file(runs_dir, tmp_path):
    out = tmp_path / "alpha.jsonl"
    result = mirante("export", str(runs_dir / "alpha.mirante"), "-f", "jsonl", "-o", str(out))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events[0]["kind"] == "RunStarted" and events[-1]["kind"] == "RunEnded"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    steps = [e for e in events if e["kind"] == "Step"]
    assert steps[100]["scalars"]["train/loss"] == "NaN"
    assert f"wrote {len(events):,} events" in result.stderr


def test_export_a_run_by_name_from_runs_dir(runs_dir, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "alpha.mirante").write_bytes((runs_dir / "alpha.mirante").read_bytes())
    result = mirante("export", "alpha", "-f", "jsonl", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.count("\n") > 2000


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda p: None, ["no such run"]),
        (lambda p: p.touch(), ["empty file"]),
        (lambda p: p.write_text("hello"), ["not a mirante run store"]),
    ],
    ids=["missing", "empty", "not-a-store"],
)
def test_export_bad_input(tmp_path, setup, words):
    path = tmp_path / "bad.mirante"
    setup(path)
    assert_clean_failure(mirante("export", str(path)), str(path), *words)


def test_export_refuses_to_overwrite_the_run(runs_dir):
    path = str(runs_dir / "alpha.mirante")
    before = Path(path).read_bytes()
    assert_clean_failure(mirante("export", path, "-o", path), "refusing to overwrite")
    assert Path(path).read_bytes() == before


def test_export_to_an_unwritable_place(runs_dir):
    result = mirante("export", str(runs_dir / "alpha.mirante"), "-o", "/nonexistent/dir/out.csv")
    assert_clean_failure(result, "cannot write")
