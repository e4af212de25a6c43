"""What a check is and what it says: `Check`, its `Verdict`s and the `Finding`s they become."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import events as ev
from engine.diagnostics.facts import RunFacts
from engine.diagnostics.settings import Settings


@dataclass(frozen=True)
class Finding:
    """A check's new state: what the trainer stores as a `Diagnostic` event."""

    step: int
    level: str
    code: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    stop: bool = False  # the run should stop (divergence with on_divergence=stop; lr-find done)

    @classmethod
    def of(cls, event: ev.Diagnostic) -> Finding:
        return cls(event.step, event.level, event.code, event.message, dict(event.evidence))


Verdict = tuple[str, str, dict[str, Any]]  # level, message, evidence


def g(x: float | None) -> str:
    """A number as people write it: 2.303, 0.05, 1e-05, NaN, inf."""
    if x is None:
        return "?"
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.2g}"


def finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


class Check:
    """One check. Its `on_*` methods return a Verdict when they have something to say."""

    code = ""
    codes: tuple[str, ...] = ()  # the codes it speaks under, when more than `code`

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        self.run = run
        self.s = settings
        self.pending: list[tuple[str, Verdict]] = []  # (code, verdict) said under codes other than `code`
        self.stop = False  # the run should stop (divergence with on_divergence=stop; lr-find done)

    @classmethod
    def applies(cls, run: RunFacts) -> bool:
        """Whether the check runs at all on this run (the mode checks run only in their mode)."""
        return True

    def on_start(self) -> Verdict | None:
        return None

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        return None

    def on_layers(self, e: ev.LayerStats) -> Verdict | None:
        return None

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        return None

    def on_finish(self, step: int) -> Verdict | None:
        return None
