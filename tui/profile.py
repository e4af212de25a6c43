"""`mirante profile`: the per-layer table of params, MACs and times, and side-by-side comparisons.

The numbers come from `engine.flops` and `engine.profiler` (torch, imported when the command
runs); this module parses options and draws tables with rich.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.config import finite_float

LECTURE = (3, 128, 3, 100)  # the lecture's example: 3 -> 128 channels, 3x3 filters, a 100x100x3 image


class ProfileUsageError(ValueError):
    """Bad options; one line, exit code 2."""


def parse_input(text: str) -> tuple[int, int, int]:
    """An image input of a named model: CxHxW, square."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(g) for g in match.groups()) < 1:
        raise ProfileUsageError(f"--input {text!r}: give channels x height x width, e.g. 3x224x224")
    c, h, w = (int(g) for g in match.groups())
    if h != w:
        raise ProfileUsageError(f"--input {text!r}: only square inputs are supported (height = width)")
    return c, h, w


def parse_tensor(text: str) -> tuple[tuple[int, ...], str]:
    """One input of a user's model: its shape without the batch, and a dtype, e.g. 3x224x224 or 16:long."""
    shape_text, _, dtype = text.partition(":")
    dims = re.split(r"\s*[xX]\s*", shape_text.strip())
    if not all(d.isdigit() and int(d) > 0 for d in dims):
        raise ProfileUsageError(f"--input {text!r}: give a shape without the batch, e.g. 3x224x224 or 16:long")
    return tuple(int(d) for d in dims), (dtype.strip() or "float")


def parse_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileUsageError(f"--kwargs {text!r}: not JSON ({exc.msg})") from None
    if not isinstance(kwargs, dict):
        raise ProfileUsageError(f"--kwargs {text!r}: give a JSON object, e.g. '{{\"classes\": 10}}'")
    return kwargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        default="resnet50",
        help="a model of the zoo, any torchvision classifier, or your own as package.module:attr (a module "
        "class or a function returning one, imported from the working directory)",
    )
    p.add_argument(
        "--kwargs", default=None, metavar="JSON", help="arguments for package.module:attr, e.g. '{\"depth\": 4}'"
    )
    p.add_argument(
        "--input",
        action="append",
        default=None,
        help="one sample's shape, CxHxW (default: 3x224x224 for torchvision nets and your own, 3x32x32 for ours); "
        "for your own model, once per input, any shape, with a dtype if not float: --input 3x64x64 --input 16:long",
    )
    p.add_argument("--classes", type=int, default=None, help="output classes (default: 1000, ours 10)")
    p.add_argument("--batch", type=int, default=64, help="batch size for --time (default: 64)")
    p.add_argument("--depth", type=int, default=2, help="nesting depth of the rows shown (default: 2)")
    p.add_argument("--time", action="store_true", help="time forward and backward per layer on --device")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (for --time)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="for --time")
    p.add_argument("--iters", type=int, default=10, help="timed iterations after 3 of warm-up (default: 10)")
    p.add_argument("--peak-tflops", type=finite_float, default=None, help="the device's peak, for MFU, if not known")
    p.add_argument("--json", metavar="FILE", help="write the rows and totals as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    p.add_argument(
        "--compare",
        nargs="*",
        metavar="MODEL",
        default=None,
        help="compare models side by side; with no model named, the lecture's conv against its "
        "depthwise-separable twin (--conv sets the example)",
    )
    p.add_argument(
        "--conv",
        nargs=4,
        type=int,
        metavar=("CIN", "COUT", "K", "SIDE"),
        default=list(LECTURE),
        help="the conv for --compare with no models (default: 3 128 3 100, the lecture's)",
    )


# --- formatting ---------------------------------------------------------------------------


def si(n: float, unit: str = "") -> str:
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {prefix}{unit}"
    return f"{n:,.0f} {unit}".rstrip()


def macs_text(macs: int) -> str:
    """A model's forward MACs as torchvision publishes them, in GMACs, from a tenth of a GMAC up."""
    return f"{macs / 1e9:.2f} GMACs" if macs >= 1e8 else si(macs, "MACs")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def layer_table(counts: Any, depth: int, timed: bool) -> Table:
    table = Table(title=None, show_lines=False, header_style="bold", pad_edge=False)
    for column, justify in (("layer", "left"), ("type", "left"), ("output", "left"), ("params", "right")):
        table.add_column(column, justify=justify)
    table.add_column("MACs", justify="right")
    table.add_column("share", justify="right")
    if timed:
        table.add_column("fwd ms", justify="right")
        table.add_column("bwd ms", justify="right")
    total = max(1, counts.macs)
    for row in counts.rows:
        if row.depth > depth:
            continue
        cells = [
            "  " * (row.depth - 1) + row.name.rsplit(".", 1)[-1] if row.depth > 1 else row.name,
            row.type,
            "x".join(map(str, row.out_shape)) if row.out_shape else "-",
            f"{row.params:,}",
            si(row.macs) if row.macs else "0",
            f"{100 * row.macs / total:.1f}%",
        ]
        if timed:
            cells += [_ms(row.fwd_ms), _ms(row.bwd_ms)]
        table.add_row(*cells)
    return table


def totals_lines(name: str, counts: Any, timing: Any | None) -> list[str]:
    c = counts
    shape = " + ".join(c.inputs) or "x".join(map(str, c.input_shape))
    lines = [
        f"{name} at {shape}: {c.params:,} params ({c.trainable:,} trainable, {c.frozen:,} frozen)",
        f"forward: {macs_text(c.macs)} = {si(c.flops, 'FLOPs')} per image;"
        f" backward: {si(2 * c.backward_macs, 'FLOPs')}; training: {si(c.train_flops, 'FLOPs')} per image"
        f" ({c.train_flops / max(1, c.flops):.2f}x forward)",
        f"activations kept for backward: {si(c.act_bytes, 'B')} per image (float32)",
        "convention: MACs are multiply-accumulates, FLOPs = 2 x MACs (torchvision's published GFLOPS are MACs)",
    ]
    lines += [f"note: {note}" for note in c.notes]
    if c.unknown:
        ops = ", ".join(f"{op} x{calls} (first in '{where}')" for op, (calls, where) in sorted(c.unknown.items()))
        lines.append(f"not counted, no rule for: {ops}")
    if timing is not None:
        t = timing
        mfu = t.mfu(c)
        lines += [
            f"on {t.device}, {t.dtype}, batch {t.batch}: training {t.train_img_s:,.0f} img/s "
            f"(step {t.step_ms:.2f} ms, forward+backward {t.fwd_bwd_ms:.2f} ms), inference {t.infer_img_s:,.0f} img/s",
            f"sum of per-layer times {t.layers_ms:.2f} ms against forward+backward {t.fwd_bwd_ms:.2f} ms "
            f"({100 * (t.layers_ms / t.fwd_bwd_ms - 1):+.1f}%: work outside modules, such as residual adds, the"
            " gradient sums at skip connections and the loss, is in no layer)",
        ]
        if t.peak_memory_bytes is not None:
            lines.append(f"peak memory: {si(t.peak_memory_bytes, 'B')}")
        lines.append(
            f"MFU: {100 * mfu:.1f}% of {t.peak_tflops:g} TFLOP/s"
            if mfu is not None
            else "MFU: unknown peak for this device (give --peak-tflops)"
        )
    return lines


def write_outputs(args: argparse.Namespace, name: str, counts: Any, timing: Any | None) -> None:
    rows = [r.as_dict() for r in counts.rows]
    if args.json:
        doc = {"model": name, "totals": counts.summary(), "rows": rows, "inputs": counts.inputs}
        doc |= {"not_counted": {op: calls for op, (calls, _) in counts.unknown.items()}, "notes": counts.notes}
        if timing is not None:
            doc["timing"] = timing.__dict__ | {"train_img_s": timing.train_img_s, "mfu": timing.mfu(counts)}
        _write(args.json, json.dumps(doc, indent=1))
    if args.csv:
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["name"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        _write(args.csv, buffer.getvalue())


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise ProfileUsageError(f"{path}: cannot write ({exc.strerror})") from None


# --- the command ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from engine import profiler  # torch, from here on

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # a pipe: no wrapping
    if args.compare is not None:
        return compare(args, console)
    shape, inputs, classes = _model_inputs(args, args.model)
    kwargs = parse_kwargs(args.kwargs)
    if kwargs and not profiler.is_user_model(args.model):
        raise ProfileUsageError("--kwargs is for your own model (--model package.module:attr)")
    counts = profiler.count_by_name(args.model, shape, classes, kwargs=kwargs, inputs=inputs)
    timing = None
    if args.time:
        timing = profiler.time_by_name(
            args.model, shape, classes, counts, kwargs=kwargs, inputs=inputs, device=args.device,
            precision=args.precision, batch=args.batch, iters=args.iters, peak=args.peak_tflops,
        )  # fmt: skip
    console.print(layer_table(counts, args.depth, timing is not None))
    for line in totals_lines(args.model, counts, timing):
        console.print(line)
    write_outputs(args, args.model, counts, timing)
    return 0


def _model_inputs(args: argparse.Namespace, name: str) -> tuple[tuple[int, ...], Any, int]:
    """(first input's shape, every input as (shape, dtype) for a user's model with several, classes)."""
    from engine import profiler

    given = args.input or []
    if profiler.is_user_model(name):
        tensors = [parse_tensor(t) for t in given] or [((3, 224, 224), "float")]
        several = len(tensors) > 1 or tensors[0][1] != "float"
        return tensors[0][0], tensors if several else None, args.classes or 1000
    if len(given) > 1:
        raise ProfileUsageError(f"{name} takes one input: give --input once")
    shape = parse_input(given[0]) if given else profiler.default_input(name)
    return shape, None, args.classes or (1000 if name not in _ours() else 10)


def _ours() -> set[str]:
    from engine.catalog import MODELS

    return {n for n, s in MODELS.items() if not s.pretrained}


def compare(args: argparse.Namespace, console: Console) -> int:
    from engine import profiler

    table = Table(header_style="bold", pad_edge=False)
    for column in ("", "params", "MACs", "FLOPs", "training FLOPs", "activations"):
        table.add_column(column, justify="left" if not column else "right")
    if args.compare:
        entries = []
        for name in args.compare:
            shape, inputs, classes = _model_inputs(args, name)
            counts = profiler.count_by_name(name, shape, classes, inputs=inputs)
            entries.append((f"{name} ({' + '.join(counts.inputs)})", counts))
    else:
        cin, cout, k, side = args.conv
        conv, twin = profiler.count_separable_twin(cin, cout, k, side)
        entries = [
            (f"conv {k}x{k}, {cin} -> {cout}", conv),
            (f"depthwise {k}x{k} + pointwise 1x1, {cin} -> {cout}", twin),
        ]
    for label, c in entries:
        row = [label, f"{c.params:,}", f"{c.macs:,}", si(c.flops), si(c.train_flops), si(c.act_bytes, "B")]
        table.add_row(*row)
    console.print(table)
    if not args.compare:
        (_, conv_counts), (_, twin_counts) = entries
        cin, cout, k, side = args.conv
        console.print(
            f"on a {side}x{side}x{cin} image ({side * side:,} positions, 'same' padding, no biases): "
            f"the conv has {k}x{k}x{cin}x{cout} = {conv_counts.params:,} weights and does "
            f"{side * side:,} x {conv_counts.params:,} = {conv_counts.macs:,} multiplications; "
            f"the twin has {k}x{k}x{cin} + 1x1x{cin}x{cout} = {twin_counts.params:,} weights and does "
            f"{twin_counts.macs:,}: {conv_counts.macs / twin_counts.macs:.1f}x fewer"
        )
    console.print("convention: MACs are multiply-accumulates (one multiplication each), FLOPs = 2 x MACs")
    if args.json:
        _write(args.json, json.dumps({label: c.summary() for label, c in entries}, indent=1))
    return 0


def main(args: argparse.Namespace) -> int:
    from engine.profiler import ProfileError

    try:
        return run(args)
    except (ProfileError, ProfileUsageError) as exc:
        print(f"mirante: error: {exc}", file=sys.stderr)
        return 2
