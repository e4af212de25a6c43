"""Fixtures the CPU training tests share; modules opt in with `pytestmark = pytest.mark.usefixtures(...)`."""

from __future__ import annotations

import os

import pytest

# The app draws pictures in cells in every test, whatever terminal runs pytest (a test that wants Sixel or Kitty
# graphics asks for them): with `pytest -s` in a terminal that speaks Sixel, auto would pick it.
os.environ["MIRANTE_IMAGES"] = "cells"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from more threads, and OpenMP threads stall for seconds on a busy 2-core CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_shapes(monkeypatch):
    """The built-in dataset at 1,200 images instead of 24,000, for speed."""
    import engine.data
    from engine import train

    original = engine.data.build_data
    monkeypatch.setattr(train, "build_data", lambda *a, **k: original(*a, **{**k, "shapes_count": 1200}))


@pytest.fixture(scope="session")
def captured_run(tmp_path_factory):
    """smallcnn trained 20 steps on a small shapes set, captured at steps 10 and 20 and at its end (10 images each),
    with its checkpoint: a real run for the Activations pane and `mirante visualize` (one per xdist worker)."""
    import engine.data
    from engine import train
    from engine.config import TrainConfig

    tmp = tmp_path_factory.mktemp("captured")
    original = engine.data.build_data
    train.build_data = lambda *a, **k: original(*a, **{**k, "shapes_count": 1200})
    try:
        config = TrainConfig(model="smallcnn", dataset="shapes", steps=20, batch_size=32, runs_dir=str(tmp / "runs"),
                             name="act", log_every=5, capture_every=10, device="cpu")  # fmt: skip
        assert train.run(config.validate()) == 0
    finally:
        train.build_data = original
    return tmp / "runs" / "act.mirante"


@pytest.fixture
def captured_copy(captured_run, tmp_path):
    """A copy of `captured_run` and its checkpoint that a test may add to."""
    import shutil

    store = tmp_path / captured_run.name
    store.write_bytes(captured_run.read_bytes())
    shutil.copytree(captured_run.with_suffix(".ckpt"), store.with_suffix(".ckpt"))
    return store


# The suite runs on pytest-xdist workers (pyproject.toml): each runs its tests, and the trainers they start, on
# one thread (tiny models gain nothing from more, and OpenMP threads on an oversubscribed CPU stall for seconds)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Textual's tab underline slides for 0.3 s after each pane key, and Pilot waits for it on every press:
# the tests read what the panes say, not how the underline moves (set before any test imports textual)
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
