"""The benchmarks the README and BENCHMARKS.md cite, run small: a benchmark that stops running is caught here."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from tests.procs import run_group

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], timeout: float) -> str:
    """Run a bench script in its own session; on a timeout, kill its whole process group."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_group([sys.executable, *args], cwd=ROOT, timeout=timeout, env=env, merge=True)
    assert result.returncode == 0, result.stdout
    return result.stdout


def test_the_app_benchmark_runs(tmp_path):
    figures_path = tmp_path / "figures.json"
    out = run(["bench/tui_bench.py", "--tiny", "--json", str(figures_path)], timeout=300)
    figures = json.loads(figures_path.read_text())
    for key in ("watch s", "replay s", "watch MB", "replay MB", "overview ms", "gradients ms", "live key ms"):
        assert figures[key] and all(0 < v < 1e5 for v in figures[key]), (key, out)
    assert figures["terminal KB/s"] > 0 and figures["live events/s"] > 0, out
    assert not any(isinstance(v, float) and math.isnan(v) for v in figures.values())


def test_the_compare_benchmark_runs(tmp_path):
    figures_path = tmp_path / "figures.json"
    out = run(["bench/compare_bench.py", "--tiny", "--json", str(figures_path)], timeout=300)
    figures = json.loads(figures_path.read_text())
    for key in ("open s", "open MB", "redraw ms", "live key ms"):
        assert figures[key] and all(0 < v < 1e5 for v in figures[key]), (key, out)
    assert figures["live events/s"] > 0, out


def test_the_labs_benchmark_runs(tmp_path):
    """bench/labs.py, the source of the README's table of labs, on one lab at a few steps a run."""
    figures_path = tmp_path / "labs.json"
    out = run(["bench/labs.py", "--only", "loss", "--tiny", "--json", str(figures_path)], timeout=300)
    rows = json.loads(figures_path.read_text())
    assert [r["lab"] for r in rows] == ["loss"] and set(rows[0]["runs"]) == {"lossce", "lossmse"}, out
    assert rows[0]["seconds"] > 0 and isinstance(rows[0]["held"], bool), out


def test_the_store_benchmark_runs():
    out = run(["bench/store_bench.py", "--steps", "20000"], timeout=120)
    assert "events/s" in out and "open + read train/loss" in out


def test_the_reliability_matrix_runs(tmp_path):
    """One trial of each area of bench/reliability.py (crashes, full disks, hostile files, misuse), each passing."""
    results_path = tmp_path / "reliability.json"
    out = run(["bench/reliability.py", "--tiny", "--json", str(results_path)], timeout=400)
    results = json.loads(results_path.read_text())["results"]
    assert len({r["area"] for r in results}) == 9, out
    assert all(r["passed"] for r in results), out


def test_the_overhead_benchmark_runs(tmp_path):
    """bench/overhead.py, the source of the README's cost figures, at 3 steps a loop: it must not rot again."""
    figures_path = tmp_path / "overhead.json"
    out = run(["bench/overhead.py", "--tiny", "--json", str(figures_path)], timeout=300)
    figures = json.loads(figures_path.read_text())
    assert len(figures["img/s"]) == 6 and all(v > 0 for v in figures["img/s"].values()), out
    for feed in ("fixed batch", "real data"):
        assert math.isfinite(figures[f"{feed}: overhead %"]) and figures[f"{feed}: engine vs bare"] > 0, out
    assert "gradient norms every 1" in out, out  # the default cadence is measured


def test_the_op_count_benchmark_runs():
    out = run(["bench/opcount.py", "--models", "smallcnn"], timeout=120)
    assert "| smallcnn |" in out and "launching ops per batch" in out, out


def test_the_profiler_table_runs(tmp_path):
    """bench/profiler_table.py (BENCHMARKS.md's side-by-side table), on three models."""
    rows_path = tmp_path / "rows.json"
    out = run(["bench/profiler_table.py", "--tiny", "--json", str(rows_path)], timeout=300)
    doc = json.loads(rows_path.read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    assert set(doc["wall"]) == {"import torch, torchvision", "mirante profile --model resnet18"}
    assert all(len(t) == 1 and 0 < t[0] < 300 for t in doc["wall"].values())
    assert set(rows) == {"resnet18", "mobilenet_v3_small", "vit_b_32"}
    for r in rows.values():
        assert r["params"] == r["tv_params"] and abs(r["gmacs"] - r["tv_gmacs"]) <= 5e-4, r
        assert r["fcm_gmacs"] == pytest.approx(r["gmacs"], rel=1e-6)  # the forward: the same products
        assert r["unknown"] == []
    # the backward of depthwise convs: FlopCounterMode counts their weight gradient once per group
    assert rows["mobilenet_v3_small"]["fcm_train_gflops"] > 5 * rows["mobilenet_v3_small"]["train_gflops"]
    assert rows["resnet18"]["fcm_train_gflops"] == pytest.approx(rows["resnet18"]["train_gflops"], rel=0.01)
    assert "3 of 3 models" in out


def test_the_capture_benchmark_runs(tmp_path):
    """bench/capture_bench.py, the source of BENCHMARKS.md's figures on captures, on a 4-step run."""
    figures_path = tmp_path / "capture.json"
    out = run(["bench/capture_bench.py", "--tiny", "--json", str(figures_path)], timeout=300)
    figures = json.loads(figures_path.read_text())
    assert figures["captures"] >= 2 and 0 < figures["capture s"] < 60 and figures["bytes per capture"] > 0, out
    assert 0 < figures["share at default cadence"] < 1 and all(0 < t < 1e4 for t in figures["redraw ms"]), out
    assert all(0 < t < 6e4 for t in figures["sixel ms"]) and all(b > 1000 for b in figures["sixel bytes"]), out
