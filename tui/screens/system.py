"""System: CPU and GPU memory (and utilisation, where recorded) over time, one line per rank under torchrun."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid

from tui.screens.base import Pane, View
from tui.state import RunState
from tui.widgets import Chart, Line

CHARTS = 4


class SystemPane(Pane):
    TITLE = "System"
    KEY = "6"

    def compose(self) -> ComposeResult:
        with Grid(id="system"):
            for i in range(CHARTS):
                yield Chart(id=f"sys{i}")

    def draw(self, state: RunState, view: View) -> None:
        by_metric: dict[str, list[tuple[int, str]]] = {}  # metric -> (rank, series name); rank N's are "rankN/..."
        for name in state.system:
            rank, metric = split_rank(name)
            by_metric.setdefault(metric, []).append((rank, name))
        metrics = sorted(by_metric, key=lambda m: (PREFERRED.index(m) if m in PREFERRED else len(PREFERRED), m))
        for i in range(CHARTS):
            chart = self.query_one(f"#sys{i}", Chart)
            if i >= len(metrics):
                chart.set_lines([], title="(no metric)" if i else "no System events yet")
                continue
            ranks = sorted(by_metric[metrics[i]])
            lines = [
                Line.of(f"rank {rank}" if len(ranks) > 1 else metrics[i], state.system[name].buckets(), COLORS[j % 4])
                for j, (rank, name) in enumerate(ranks)
            ]
            chart.set_lines(lines, title=metrics[i] + (f" · {len(ranks)} ranks" if len(ranks) > 1 else ""))


PREFERRED = ["gpu/allocated_gb", "gpu/util_pct", "cpu/rss_gb", "cpu/util_pct", "gpu/reserved_gb", "gpu/peak_gb"]
COLORS = ("magenta", "cyan", "yellow", "green")


def split_rank(name: str) -> tuple[int, str]:
    """("rank2/gpu/allocated_gb") -> (2, "gpu/allocated_gb"); names without the prefix are rank 0's."""
    head, _, rest = name.partition("/")
    if head.startswith("rank") and head[4:].isdigit() and rest:
        return int(head[4:]), rest
    return 0, name
