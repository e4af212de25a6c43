"""`mirante train` as a person runs it: the README's default job, Ctrl-C, and --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine import events as ev
from engine.store import RunReader
from tests.procs import finish, start

ROOT = Path(__file__).resolve().parents[1]
EVERY_KIND = {"RunStarted", "Step", "LayerStats", "Epoch", "Capture", "Maps", "Filters", "System", "RunEnded"}


def mirante(*args: str, cwd: Path) -> subprocess.Popen:
    """`mirante ARGS` in its own session (its process group: the trainer and its child)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return start([sys.executable, "-m", "tui.cli", *args], cwd=cwd, env=env)


def test_the_default_job_learns_shapes(tmp_path):
    """The README's default run (smallcnn on the built-in shapes, 3 epochs, 504 steps) reaches >= 90% validation
    accuracy. At 16x16 (98.5%, 20 s on 2 cores) rather than its 32x32 (96.8%, 55 s), for the suite's time budget:
    the same model, data, steps and schedule."""
    started = time.monotonic()
    proc = mirante(
        "train",
        "--headless",
        "--model",
        "smallcnn",
        "--dataset",
        "shapes",
        "--epochs",
        "3",
        "--image-size",
        "16",
        cwd=tmp_path,
    )
    out, err = finish(proc, 600)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith("finished: 504 steps"), out
    (store,) = (tmp_path / "runs").glob("*.mirante")
    with RunReader(store) as run:
        summary = run.summary()
        kinds = {e.kind for e in run.follow(0, limit=None)}
    assert summary.status == "finished" and summary.best_val_acc >= 0.90, (summary, seconds)
    assert kinds >= EVERY_KIND
    print(f"smallcnn on shapes, 3 epochs: {summary.best_val_acc:.3f} val acc in {seconds:.1f} s")


def test_ctrl_c_stops_with_a_checkpoint_and_resume_finishes(tmp_path):
    proc = mirante(
        "train",
        "--headless",
        "--epochs",
        "1",
        "--name",
        "stopme",
        "--log-every",
        "5",
        "--image-size",
        "16",  # a quarter of the default's pixels: this is about Ctrl-C and --resume, not the model
        cwd=tmp_path,
    )
    seen = []
    for line in proc.stdout:  # wait until training is under way
        seen.append(line)
        if line.startswith("epoch 1/1  step") and "img/s" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, err = finish(proc, 120)
    assert proc.returncode == 130, (seen, out, err)
    assert "interrupted" in out.splitlines()[-1], out
    store = tmp_path / "runs" / "stopme.mirante"
    with RunReader(store) as run:
        assert run.status() == "interrupted"
        stopped_at = run.summary().steps
    assert 0 < stopped_at < 168 and (tmp_path / "runs" / "stopme.ckpt" / "last.pt").exists()

    proc = mirante("train", "--headless", "--resume", "stopme", cwd=tmp_path)
    out, err = finish(proc, 600)
    assert proc.returncode == 0, err
    with RunReader(store) as run:
        events = run.follow(0, limit=None)
        assert run.status() == "finished"
    starts = [e for e in events if isinstance(e, ev.RunStarted)]
    assert [s.step for s in starts] == [0, stopped_at] and starts[1].config["epochs"] == 1
    steps = [e.step for e in events if isinstance(e, ev.Step) and "train/loss" in e.scalars]
    assert steps == list(range(1, 169))  # 168 steps per epoch, none repeated, none lost


def test_resume_takes_explicit_options_only(tmp_path):
    import argparse

    from engine.config import add_arguments, explicit_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert explicit_options(parser, ["--epochs", "5", "--lr=0.1", "--no-augment"]) == {"epochs", "lr", "augment"}
    assert explicit_options(parser, []) == set()
