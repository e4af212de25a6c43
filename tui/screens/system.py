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
        # only the metrics the run recorded get a panel (a CPU run has no GPU ones): two share a row
        self.query_one("#system", Grid).styles.grid_size_rows = max(1, (min(len(metrics), CHARTS) + 1) // 2)
        for i in range(CHARTS):
            chart = self.query_one(f"#sys{i}", Chart)
            chart.display = i < max(1, len(metrics))
            if i >= len(metrics):
                if i == 0:
                    chart.set_lines([], title="no System events yet")
                continue
            ranks = sorted(by_metric[metrics[i]])
            lines = [  # one rank: the legend names the recorded metric, as `mirante export` does
                Line.of(f"rank {rank}" if len(ranks) > 1 else metrics[i], state.system[name].buckets(), COLORS[j % 4])
                for j, (rank, name) in enumerate(ranks)
            ]
            chart.set_lines(lines, title=title(metrics[i]) + (f" · {len(ranks)} ranks" if len(ranks) > 1 else ""))


PREFERRED = ["gpu/allocated_gb", "gpu/util_pct", "cpu/rss_gb", "cpu/util_pct", "gpu/reserved_gb", "gpu/peak_gb"]
COLORS = ("magenta", "cyan", "yellow", "green")
TITLES = {  # what the recorder measures (engine/recorder.py), in words; the key's suffix gives the unit
    "cpu/rss": "CPU memory (RSS, {unit})",
    "cpu/util": "CPU use ({unit})",
    "gpu/allocated": "GPU memory allocated ({unit})",
    "gpu/reserved": "GPU memory reserved ({unit})",
    "gpu/peak": "GPU memory peak ({unit})",
    "gpu/util": "GPU use ({unit})",
}
UNITS = {"gb": "GB", "mb": "MB", "pct": "%"}


def title(metric: str) -> str:
    """A metric's key in words with its unit: "cpu/rss_gb" -> "CPU memory (RSS, GB)"; other keys as recorded."""
    base, _, unit = metric.rpartition("_")
    if base not in TITLES or unit not in UNITS:
        return metric
    return TITLES[base].format(unit=UNITS[unit])


def split_rank(name: str) -> tuple[int, str]:
    """("rank2/gpu/allocated_gb") -> (2, "gpu/allocated_gb"); names without the prefix are rank 0's."""
    head, _, rest = name.partition("/")
    if head.startswith("rank") and head[4:].isdigit() and rest:
        return int(head[4:]), rest
    return 0, name
