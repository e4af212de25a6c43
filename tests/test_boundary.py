"""The package boundary: the UI and the store never pull in torch; events pull in nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(module: str, watch: tuple[str, ...]) -> list[str]:
    """Which of `watch` are in sys.modules after importing `module` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(m for m in {watch!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize(
    "module",
    [
        "tui.app",
        "tui.cli",
        "tui.state",
        "tui.sources",
        "tui.widgets",
        "engine.events",
        "engine.store",
        "engine.export",
        "engine.diagnostics",
        "engine.control",
    ],
)
def test_no_torch(module):
    assert loaded_after(module, ("torch", "torchvision")) == []


@pytest.mark.parametrize("module", ["engine.events", "engine.control"])
def test_standard_library_only(module):
    assert loaded_after(module, ("numpy", "textual", "rich", "plotext", "torch")) == []


@pytest.mark.parametrize("module", ["engine.store", "engine.export", "engine.diagnostics"])
def test_engine_never_imports_the_ui(module):
    assert loaded_after(module, ("textual", "rich", "plotext")) == []


def test_the_boundary_check_can_see_an_import():
    assert loaded_after("json", ("json",)) == ["json"]
