"""Synthetic runs for the tests: every event kind, deterministic, with NaN and infinities in them."""

from __future__ import annotations

import math
import struct
from pathlib import Path

from engine import events as ev
from engine.store import RunWriter

LAYERS = ("conv1", "layer1.0.conv1", "layer1.0.conv2", "fc")
SPECIAL = (math.nan, math.inf, -math.inf, -0.0)


def make_events(steps: int = 3000, *, end: str | None = "finished", layer_every: int = 10) -> list[ev.Event]:
    """A plausible run: RunStarted, Steps, LayerStats, Epochs, maps, a diagnostic, System, RunEnded."""
    seq = ev.Sequencer(clock=iter(1_700_000_000.0 + 0.01 * i for i in range(10**9)).__next__)
    out: list[ev.Event] = [
        ev.RunStarted(
            **seq.header(0),
            name="synthetic",
            model="smallcnn",
            dataset="shapes",
            config={"lr": 0.1, "optimizer": "sgd", "batch_size": 64},
            model_summary={"params": 1234, "macs": 5678},
            layers=LAYERS,
            device={"type": "cpu"},
            versions={"python": "3.11"},
        )
    ]
    for step in range(steps):
        scalars = {"train/loss": 2.3026 * math.exp(-step / 1000), "lr": 0.1 * 0.999**step}
        if step % 7 == 0:  # a scalar present on some steps only
            scalars["throughput/img_s"] = 1000.0 + step
        if step in (100, 101):
            scalars["train/loss"] = SPECIAL[step - 100]
        out.append(ev.Step(**seq.header(step), scalars=scalars))
        if step % layer_every == 0:
            out.append(
                ev.LayerStats(
                    **seq.header(step),
                    grad_norm=[10.0 ** -(i + step / steps) for i in range(len(LAYERS))],
                    weight_norm=[1.0 + i for i in range(len(LAYERS))],
                    update_ratio=[1e-3] * len(LAYERS),
                )
            )
        if step % 1000 == 999:
            epoch = step // 1000
            out.append(
                ev.Epoch(
                    **seq.header(step),
                    epoch=epoch,
                    train_loss=1.0 / (epoch + 1),
                    train_acc=0.5 + 0.1 * epoch,
                    val_loss=1.2 / (epoch + 1),
                    val_acc=0.45 + 0.1 * epoch,
                )
            )
            out.append(ev.System(**seq.header(step), metrics={"cpu/rss_mb": 512.0 + epoch}))
        if step == 500:
            maps = f16([0.5 * (i % 9) for i in range(4 * 8 * 8)])
            out.append(ev.Activation(**seq.header(step), layer="conv1", sample=0, shape=(4, 8, 8), data=maps))
            filt = f16([0.1 * (i % 5) for i in range(4 * 3 * 3 * 3)])
            out.append(ev.Filters(**seq.header(step), layer="conv1", shape=(4, 3, 3, 3), data=filt))
            out.append(
                ev.Diagnostic(
                    **seq.header(step),
                    level="warn",
                    code="initial-loss",
                    message="initial loss is far from ln(10)",
                    evidence={"loss": 4.2, "expected": 2.3026},
                )
            )
    if end is not None:
        out.append(ev.RunEnded(**seq.header(steps), status=end, reason="" if end == "finished" else "test"))
    return out


def write_run(path: Path, events: list[ev.Event] | None = None, **kwargs) -> list[ev.Event]:
    """Write `events` (default: `make_events(**kwargs)`) to a new store at `path` and close it."""
    events = make_events(**kwargs) if events is None else events
    with RunWriter(path) as writer:
        for event in events:
            writer.write(event)
    return events


def same(a: ev.Event, b: ev.Event) -> bool:
    """Bit-for-bit equality: NaN equals NaN, -0.0 differs from 0.0."""
    return type(a) is type(b) and ev.encode(a) == ev.encode(b)


def f16(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}e", *values)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)
