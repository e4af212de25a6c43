"""The lecture's checks, live: the trainer and the Monitor each own one and feed it what their run emits.

The checks (`engine.diagnostics`) are pure functions of the events; this puts them on a run:
every event the run emits is observed (the emitter calls its watchers), and each finding that
changes a check's state is emitted as a `Diagnostic` event. Whether a finding stops the run is
the owner's decision (`stop`), taken through its own `RunControl`.
"""

from __future__ import annotations

from typing import Any

from engine import events as ev
from engine.diagnostics import Diagnostics, Finding


class LiveChecks:
    def __init__(self, emitter: Any, diagnostics: Diagnostics | None = None) -> None:
        self.out = emitter
        self.diagnostics = diagnostics or Diagnostics()
        emitter.watchers.append(self.observe)

    def observe(self, event: ev.Event) -> None:
        if isinstance(event, (ev.Diagnostic, ev.RunEnded)):
            return  # their own findings, and the end (which `finish` comes before)
        self._emit(self.diagnostics.observe(event))

    def finish(self, step: int) -> None:
        """The checks' final verdicts (overfit, lr-find): call before the run's RunEnded."""
        self._emit(self.diagnostics.finish(step))

    @property
    def stop(self) -> Finding | None:
        """The first finding that asked the run to stop (a divergence, lr-find's end), or None."""
        return self.diagnostics.stop

    def learn(self, *, num_classes: int | None = None) -> None:
        self.diagnostics.learn(num_classes=num_classes)

    def _emit(self, findings: list[Finding]) -> None:
        for f in findings:
            self.out.emit(ev.Diagnostic, f.step, level=f.level, code=f.code, message=f.message, evidence=f.evidence)
