"""The learning-rate range test drawn: smoothed loss against the learning rate on a log axis, and the suggestion.

Used by `mirante lr-find` (printed once the sweep is over) and by the app's Diagnostics screen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text

from engine.diagnostics import RangeTest
from engine.export import printable
from engine.store import RunReader
from tui.widgets.chart import Line, log_x_steps, render_chart


def range_lines(test: RangeTest, suggestion: dict[str, Any] | None) -> list[Line]:
    lrs = np.asarray(test.lrs, dtype=np.float64)
    smoothed = np.asarray(test.smoothed, dtype=np.float64)
    keep = lrs > 0
    lines = [Line("smoothed loss", log_x_steps(lrs[keep]), smoothed[keep], "cyan")]
    finite = smoothed[keep & np.isfinite(smoothed)]
    lr = (suggestion or {}).get("suggested_lr")
    if lr and finite.size:
        x = log_x_steps(np.array([lr, lr]))
        lines.append(Line(f"suggested {lr:.2g}", x, np.array([finite.min(), finite.max()]), "green"))
    return lines


def render_range_test(
    test: RangeTest, suggestion: dict[str, Any] | None, width: int, height: int, color: bool = True
) -> Text:
    return render_chart(
        range_lines(test, suggestion),
        width,
        height,
        title="learning-rate range test",
        x_label="learning rate",
        color=color,
        log_x=True,
    )


def report(store: str | Path, width: int = 80, height: int = 20, color: bool = False) -> str:
    """The chart and the verdict of a finished `mirante lr-find` run, as text for the terminal."""
    with RunReader(store) as run:
        test = RangeTest.from_series(*run.scalars("lr"), *run.scalars("train/loss"))
        verdicts = [d for d in run.events_of("Diagnostic") if d.code == "lr-find"]
    suggestion = dict(verdicts[-1].evidence) if verdicts else test.suggestion()
    chart = render_range_test(test, suggestion, width, height, color)
    text = chart.plain if not color else _ansi(chart)
    if verdicts:
        line = printable(f"{verdicts[-1].level}: {verdicts[-1].message}")  # the store's words, not its escapes
    elif suggestion:
        line = f"suggested learning rate {suggestion['suggested_lr']:.2g}"
    else:
        line = "too few steps to suggest a learning rate"
    return f"{text}\n{line}"


def _ansi(text: Text) -> str:
    from rich.console import Console

    console = Console(force_terminal=True, width=10_000)
    with console.capture() as capture:
        console.print(text, end="")
    return capture.get()
