"""The package boundary: the UI and the store never pull in torch; events pull in nothing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.procs import run_group

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(module: str, watch: tuple[str, ...]) -> list[str]:
    """Which of `watch` are in sys.modules after importing `module` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(m for m in {watch!r} if m in sys.modules))"
    out = run_group([sys.executable, "-c", code], cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize(
    "module",
    [
        "tui.app",
        "tui.cli",
        "tui.state",
        "tui.sources",
        "tui.widgets",
        "tui.widgets.chart",
        "tui.widgets.heatmap",
        "tui.widgets.sparkline",
        "engine.events",
        "engine.store",
        "engine.export",
        "engine.compare",
        "engine.diagnostics",
        "engine.control",
    ],
)
def test_no_torch(module):
    assert loaded_after(module, ("torch", "torchvision")) == []


@pytest.mark.parametrize("module", ["engine.events", "engine.control", "engine.names"])
def test_standard_library_only(module):
    assert loaded_after(module, ("numpy", "textual", "rich", "plotext", "torch")) == []


@pytest.mark.parametrize("module", ["engine.store", "engine.export", "engine.diagnostics"])
def test_engine_never_imports_the_ui(module):
    assert loaded_after(module, ("textual", "rich", "plotext")) == []


def test_the_boundary_check_can_see_an_import():
    assert loaded_after("json", ("json",)) == ["json"]


def engine_imports() -> dict[str, set[str]]:
    """engine's modules and the engine modules each imports, at the top or inside a function."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "engine").glob("*.py")):
        name = f"engine.{path.stem}"
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "engine":
                edges |= {f"engine.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engine."):
                edges.add(node.module)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("engine.")}
        edges.discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each once, as the path that closes it."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_engine_has_no_import_cycle():
    graph = engine_imports()
    assert {"engine.train", "engine.profiler", "engine.device"} <= set(graph)
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_profiling_does_not_load_the_trainer():
    assert loaded_after("engine.profiler", ("engine.train", "engine.recorder", "engine.data")) == []


def loaded_after_command(argv: list[str], watch: tuple[str, ...], cwd: Path) -> tuple[int, list[str]]:
    """`mirante ARGV` run to its end in a fresh interpreter: its exit code, and which of `watch` it loaded."""
    code = (
        "import sys\nfrom tui import cli\ntry:\n    rc = cli.main(sys.argv[1:])\nexcept SystemExit as exc:\n"
        "    rc = exc.code\n"
        f"print('LOADED', rc, ' '.join(m for m in {watch!r} if m in sys.modules))"
    )
    out = run_group([sys.executable, "-c", code, *argv], cwd=cwd, timeout=120)
    line = next(x for x in out.stdout.splitlines() if x.startswith("LOADED"))
    rc, *loaded = line.split()[1:]
    return int(rc), loaded


@pytest.mark.parametrize(
    "argv, rc",
    [
        (["ls", str(ROOT / "sample_runs")], 0),
        (["export", str(ROOT / "sample_runs" / "smallcnn-shapes.mirante"), "--format", "csv"], 0),
        (["stop", "nothing-here"], 2),
        (["replay", "--help"], 0),
        (["compare", str(ROOT / "sample_runs"), "--format", "json"], 0),
    ],
)
def test_commands_that_read_runs_never_load_torch(argv, rc, tmp_path):
    assert loaded_after_command(argv, ("torch", "torchvision"), tmp_path) == (rc, [])


def test_the_profile_command_does_not_load_the_trainer(tmp_path):
    watch = ("torch", "engine.train", "engine.data")
    assert loaded_after_command(["profile", "--model", "smallcnn"], watch, tmp_path) == (0, ["torch"])
