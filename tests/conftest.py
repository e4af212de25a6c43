"""Fixtures the CPU training tests share; modules opt in with `pytestmark = pytest.mark.usefixtures(...)`."""

from __future__ import annotations

import os

import pytest


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


# The suite runs on pytest-xdist workers (pyproject.toml): each runs its tests, and the trainers they start, on
# one thread (tiny models gain nothing from more, and OpenMP threads on an oversubscribed CPU stall for seconds)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Textual's tab underline slides for 0.3 s after each pane key, and Pilot waits for it on every press:
# the tests read what the panes say, not how the underline moves (set before any test imports textual)
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
