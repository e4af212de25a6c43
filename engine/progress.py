"""`Progress`: the lines a person reads in a training log, made from events."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from engine import events as ev
from engine.export import printable

PRINT_EVERY_S = 2.0


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


class Progress:
    """Turns events into the lines a person reads in a log: a status line every few seconds."""

    def __init__(self, out: TextIO = sys.stdout, clock=time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.started: ev.RunStarted | None = None
        self.latest: dict[str, float] = {}
        self.step = 0
        self.epochs: list[ev.Epoch] = []
        self.ended: ev.RunEnded | None = None
        self._last_print = -1e9
        self._t0 = clock()

    def print(self, line: str) -> None:
        print(printable(line), file=self.out, flush=True)  # names and messages come from files anyone may write

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.started = event
            m, d = event.model_summary, event.device
            self.print(
                f"{event.name}: {event.model} on {event.dataset}, {_si(m.get('params', 0))} params, "
                f"{_si(m.get('macs', 0))} MACs/image, on {d.get('name', d.get('type'))}"
            )
        elif isinstance(event, ev.Step):
            self.step = event.step
            self.latest.update(event.scalars)
            if "train/loss" in event.scalars and self.clock() - self._last_print >= PRINT_EVERY_S:
                self._last_print = self.clock()
                self.print(self.status_line())
        elif isinstance(event, ev.Epoch):
            self.epochs.append(event)
            line = f"epoch {event.epoch}: train loss {_num(event.train_loss)} acc {_pct(event.train_acc)}"
            if event.val_loss is not None:
                line += f" | val loss {_num(event.val_loss)} acc {_pct(event.val_acc)}"
            self.print(f"{line} | {self.clock() - self._t0:.0f} s")
        elif isinstance(event, ev.Diagnostic):
            self.print(f"{event.level.upper():4} {event.code}: {event.message}")
        elif isinstance(event, ev.RunEnded):
            self.ended = event

    def status_line(self) -> str:
        cfg = self.started.config if self.started else {}
        total = cfg.get("total_steps") or 0
        per_epoch = cfg.get("steps_per_epoch") or 0
        parts = [f"step {self.step}/{total}"]
        if per_epoch and not (cfg.get("steps") or cfg.get("range_test") or cfg.get("overfit_batches")):
            parts.insert(0, f"epoch {min(self.step // per_epoch + 1, cfg.get('epochs', 0))}/{cfg.get('epochs')}")
        v = self.latest
        if "train/loss" in v:
            parts.append(f"loss {v['train/loss']:.4f}")
        if "lr" in v:
            parts.append(f"lr {v['lr']:.3g}")
        if "throughput/img_s" in v:
            parts.append(f"{v['throughput/img_s']:,.0f} img/s")
        if "perf/mfu" in v:
            parts.append(f"MFU {100 * v['perf/mfu']:.1f}%")
        if "time/data_s" in v and v.get("time/step_s"):
            parts.append(f"data {100 * v['time/data_s'] / v['time/step_s']:.0f}%")
        return "  ".join(parts)

    def summary(self, store: str) -> str:
        end = self.ended
        status = end.status if end else "crashed"
        best = max((e.val_acc for e in self.epochs if e.val_acc is not None), default=None)
        acc = "" if best is None else f", best val acc {_pct(best)}"
        text = f"{status}: {self.step} steps in {self.clock() - self._t0:.0f} s{acc}; {store}"
        if end and end.reason:
            text += f" ({end.reason})"
        return text


class PrintingQueue:
    """Stands in for the live queue when training runs in this process: prints as batches arrive."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def put_nowait(self, batch: list[ev.Event]) -> None:
        for event in batch:
            self.progress.handle(event)
