"""Profiling a model: build it by name, count it, time it per layer, and relate speed to the device's peak (MFU).

Per-layer times come from hooks in a real training step: a forward pre-hook and hook around
every module, and, for each leaf, hooks on the autograd node its output came from (the
backward of that module runs between the node's pre-hook and hook). On CUDA the hooks only
record events; they are read after one synchronize per iteration, never one per layer.
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

from engine import catalog, flops
from engine.config import ConfigError
from engine.device import device_name, device_peak, mfu, pick_device, pick_precision, precision_name


class ProfileError(ValueError):
    """A profile request that cannot be met; the message is one line for the user."""


# --- models by name ---------------------------------------------------------------------


def default_input(name: str) -> tuple[int, int, int]:
    """torchvision's nets at their ImageNet crop size; ours at 32x32."""
    spec = catalog.MODELS.get(name)
    if spec is not None and not spec.pretrained:
        return (3, 32, 32)
    if spec is not None and spec.default_size:
        return (3, spec.default_size, spec.default_size)
    return (3, 224, 224)


def builder(name: str, input_shape: tuple[int, int, int], classes: int) -> Callable[[], nn.Module]:
    """A function building `name` for this input: one of the zoo, or any torchvision classifier."""
    channels, side = input_shape[0], input_shape[-1]
    if name in catalog.MODELS:
        spec = catalog.get_spec(name)
        try:
            catalog.check_size(spec, side)
        except catalog.ModelError as exc:
            raise ProfileError(str(exc)) from None
        from engine import models

        extra = {"aux_logits": True} if name == "inception_v3" and side >= catalog.AUX_MIN_SIZE[name] else {}
        return lambda: models.build_model(name, num_classes=classes, in_channels=channels, image_size=side, **extra)
    from torchvision import models as tv

    if name not in tv.list_models(module=tv):
        raise ProfileError(
            f"unknown model {name!r}; choose one of: {', '.join(catalog.MODELS)}, any torchvision classifier,"
            " or your own as package.module:attr"
        )
    if channels != 3:
        raise ProfileError(f"{name}: torchvision's nets take 3 channels, not {channels}")
    kwargs: dict[str, Any] = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if name.startswith("vit_"):  # a ViT is built for one input size: its position embeddings are per patch
        kwargs["image_size"] = side
        patch = int(name.split("_")[-1])
        if side % patch:
            raise ProfileError(f"{name} cuts its input into {patch}x{patch} patches: give a side that is a multiple")
    return lambda: tv.get_model(name, weights=None, num_classes=classes, **kwargs)


def count_by_name(
    name: str,
    input_shape: tuple[int, ...],
    classes: int,
    *,
    kwargs: dict[str, Any] | None = None,
    inputs: list[tuple[tuple[int, ...], str]] | None = None,
) -> flops.Counts:
    """Counts of `name` (the zoo, torchvision, or `package.module:attr`) for one sample.

    `inputs` (each input's per-sample shape and dtype name) replaces `input_shape` for models that
    take more than one input. ProfileError names the smallest side if an image is too small.
    """
    build = build_by_name(name, input_shape, classes, kwargs)
    if inputs is None:
        return count_built(build, input_shape, label=name)
    return count_built(build, inputs=example_inputs(inputs, 1, torch.device("cpu")), label=name)


def build_by_name(
    name: str, input_shape: tuple[int, ...], classes: int, kwargs: dict[str, Any] | None = None
) -> Callable[[], nn.Module]:
    return user_builder(name, kwargs or {}) if is_user_model(name) else builder(name, input_shape, classes)


def is_user_model(name: str) -> bool:
    return ":" in name


def user_builder(spec: str, kwargs: dict[str, Any]) -> Callable[[], nn.Module]:
    """A function calling `package.module:attr` (a module class or a factory) with `kwargs`.

    The module is imported as `python -c` would, with the working directory on the path.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ProfileError(f"--model {spec!r}: give package.module:attr, e.g. mynets.models:UNet")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 (the user's module: any error it raises is reported in one line)
        why = f"{type(exc).__name__}: {flops.first_line(exc)}"
        raise ProfileError(f"--model {spec}: cannot import {module_name} ({why})") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ProfileError(f"--model {spec}: {module_name} has no {attr}")
        target = getattr(target, part)
    if not callable(target):
        raise ProfileError(f"--model {spec}: {attr} is a {type(target).__name__}, not a class or a function")

    def build() -> nn.Module:
        try:
            model = target(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ProfileError(f"{spec}(**{kwargs}) failed: {type(exc).__name__}: {flops.first_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise ProfileError(f"{spec} made a {type(model).__name__}, not a torch.nn.Module")
        return model

    return build


DTYPES = {
    "float": torch.float32,
    "float32": torch.float32,
    "half": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "long": torch.int64,
    "int64": torch.int64,
    "int": torch.int32,
    "int32": torch.int32,
    "bool": torch.bool,
}
"""Dtype names an input can be given with (`--input 16:long`)."""


def example_inputs(specs: list[tuple[tuple[int, ...], str]], batch: int, device: torch.device) -> tuple:
    """A batch of example inputs, one tensor per (per-sample shape, dtype name): noise for floats, zeros
    (a valid index, a valid token) for integers."""
    out = []
    for shape, dtype_name in specs:
        if dtype_name not in DTYPES:
            raise ProfileError(f"input dtype {dtype_name!r}: choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype_name]
        if dtype.is_floating_point:
            out.append(torch.randn(batch, *shape, device=device, dtype=dtype))
        else:
            out.append(torch.zeros(batch, *shape, device=device, dtype=dtype))
    return tuple(out)


def count_built(
    build: Callable[[], nn.Module], input_shape: tuple[int, ...] | None = None, *, inputs: Any = None, label: str
) -> flops.Counts:
    """`flops.count_build`, its failures turned into one line for the user (the smallest side, where one exists)."""
    try:
        return flops.count_build(build, input_shape, inputs=inputs)
    except ProfileError:
        raise
    except Exception as exc:  # noqa: BLE001 (any model's code: its failure is reported in one line)
        side = None
        if inputs is None and input_shape is not None and len(input_shape) == 3:
            model, _ = flops.build_for_count(build)
            side = smallest_side(model, input_shape[0]) if flops.on_meta(model) else None
        if side:
            shape = "x".join(map(str, input_shape[1:]))
            raise ProfileError(f"{label} cannot take {shape} inputs: the smallest it takes is {side}x{side}") from None
        given = "x".join(map(str, input_shape)) if inputs is None and input_shape else "these inputs"
        raise ProfileError(f"{label} cannot run on {given} ({type(exc).__name__}: {flops.first_line(exc)})") from None


def smallest_side(model: nn.Module, channels: int, upper: int = 1024) -> int | None:
    """The smallest square side a (meta) model runs at, by bisection."""

    def runs(side: int) -> bool:
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, channels, side, side, device="meta"))
            return True
        except Exception:  # noqa: BLE001 (any failure of the model's code at this side)
            return False

    if not runs(upper):
        return None
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if runs(mid) else (mid + 1, hi)
    return lo


# --- the lecture's worked example -------------------------------------------------------


def separable_twin(cin: int, cout: int, kernel: int) -> tuple[nn.Module, nn.Module]:
    """A conv and its depthwise-separable twin (depthwise kxk per channel, then pointwise 1x1), no biases."""
    conv = nn.Sequential()
    conv.add_module("conv", nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False))
    twin = nn.Sequential()
    twin.add_module("depthwise", nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False))
    twin.add_module("pointwise", nn.Conv2d(cin, cout, 1, bias=False))
    return conv, twin


def count_separable_twin(cin: int, cout: int, kernel: int, side: int) -> tuple[flops.Counts, flops.Counts]:
    """The counts of `separable_twin` on a side x side image."""
    conv, twin = separable_twin(cin, cout, kernel)
    return flops.count(conv, (cin, side, side)), flops.count(twin, (cin, side, side))


# --- timing -----------------------------------------------------------------------------


@dataclass
class Timing:
    """Speed of one model at one batch size on one device; per-layer times go into the Counts' rows."""

    device: str
    dtype: str
    batch: int
    iters: int
    step_ms: float  # forward + backward + optimizer step, median, no hooks attached
    fwd_bwd_ms: float  # forward + backward, median, no hooks attached
    infer_ms: float  # forward in eval mode without gradients, median
    layers_ms: float  # sum over leaf layers of their forward and backward times, from the hooked run
    peak_memory_bytes: int | None  # CUDA only
    peak_tflops: float | None

    @property
    def train_img_s(self) -> float:
        return self.batch / (self.step_ms / 1000)

    @property
    def infer_img_s(self) -> float:
        return self.batch / (self.infer_ms / 1000)

    def mfu(self, counts: flops.Counts) -> float | None:
        return mfu(counts.train_flops, self.train_img_s, self.peak_tflops)


class _Clock:
    """Timestamps taken in hooks: CUDA events read after one synchronize, or perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, str, Any]] = []

    def mark(self, name: str, what: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, what, event))
        else:
            self.marks.append((name, what, time.perf_counter()))

    def spans(self) -> dict[tuple[str, str], float]:
        """Milliseconds per (name, "fwd"|"bwd"), summed over calls; pairs start/end marks in order."""
        if self.cuda:
            torch.cuda.synchronize()  # note: one sync per profiled iteration, after all its marks
        open_: dict[tuple[str, str], list[Any]] = defaultdict(list)
        total: dict[tuple[str, str], float] = defaultdict(float)
        for name, what, stamp in self.marks:
            kind, edge = what[:3], what[3]
            if edge == "0":
                open_[(name, kind)].append(stamp)
            elif open_[(name, kind)]:
                start = open_[(name, kind)].pop()
                total[(name, kind)] += start.elapsed_time(stamp) if self.cuda else 1000 * (stamp - start)
        self.marks = []
        return total


class _HostAhead:
    """Keeps the GPU busy (`torch.cuda._sleep`) while the host queues a hooked pass.

    Python hooks slow the host; were the GPU to run dry between two layers, the idle gap would
    land inside a layer's span. Sleeping the GPU for longer than the host needs to queue the
    whole forward (or backward) lets the kernels then run back to back, so the events between
    them measure kernel time alone. The host times of the previous iteration size the sleeps.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.next_ms = [5.0, 5.0]
        self._turn = 0
        self.cycles_per_ms = self._calibrate() if self.cuda else 0.0

    @staticmethod
    def _calibrate() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(20_000_000)
        end.record()
        end.synchronize()  # note: once, to learn how many sleep cycles make a millisecond
        return 20_000_000 / start.elapsed_time(end)

    def hold(self) -> None:
        if self.cuda:
            torch.cuda._sleep(int(self.next_ms[self._turn] * self.cycles_per_ms))
        self._turn ^= 1

    def learn(self, forward_s: float, backward_s: float) -> None:
        self.next_ms = [2000 * forward_s + 1.0, 2000 * backward_s + 1.0]  # twice the host's time, plus 1 ms


def _attach(model: nn.Module, clock: _Clock) -> list[Any]:
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        leaf = next(module.children(), None) is None

        def pre(module: nn.Module, inputs: Any, name: str = name) -> None:
            clock.mark(name, "fwd0")

        def post(module: nn.Module, inputs: Any, output: Any, name: str = name, leaf: bool = leaf) -> None:
            clock.mark(name, "fwd1")
            out = output[0] if isinstance(output, (tuple, list)) else output
            node = getattr(out, "grad_fn", None)
            if leaf and node is not None:
                node.register_prehook(lambda grads, name=name: clock.mark(name, "bwd0"))
                node.register_hook(lambda grads_in, grads_out, name=name: clock.mark(name, "bwd1"))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def _no_inplace(model: nn.Module) -> list[nn.Module]:
    """Turn off in-place activations while hooks watch outputs; returns the modules to restore."""
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    return changed


def time_model(
    model: nn.Module,
    counts: flops.Counts,
    *,
    batch: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    iters: int = 10,
    warmup: int = 3,
    peak: float | None = None,
    inputs: list[tuple[tuple[int, ...], str]] | None = None,
) -> Timing:
    """Time training and inference of `model` at `batch`; fills the rows' fwd_ms/bwd_ms (medians).

    The model runs on noise of `counts.input_shape`, or on `example_inputs(inputs)`; the loss is
    the cross-entropy of its logits when it outputs (batch, classes), else its output's mean.
    """
    model = model.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    xs = example_inputs(inputs or [(counts.input_shape, "float")], batch, device)
    if channels_last:
        xs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs)
    classes = _classes(model, xs)
    y = torch.randint(0, classes, (batch,), device=device) if classes else None
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def loss_of(output: Any) -> torch.Tensor:
        logits = _logits(output).float()
        return F.cross_entropy(logits, y) if y is not None else logits.mean()

    def step() -> tuple[float, float]:
        marks = _Clock(device)
        marks.mark("step", "fwd0")
        with autocast:
            loss = loss_of(model(*xs))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.mark("step", "fwd1")
        marks.mark("opt", "fwd0")
        optimizer.step()
        marks.mark("opt", "fwd1")
        spans = marks.spans()
        return spans[("step", "fwd")], spans[("opt", "fwd")]

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    plain = [step() for _ in range(iters)]
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    clock = _Clock(device)
    restore = _no_inplace(model)
    handles = _attach(model, clock)
    per_layer: dict[tuple[str, str], list[float]] = defaultdict(list)
    ahead = _HostAhead(device)
    try:
        for i in range(warmup + iters):
            ahead.hold()  # the GPU waits while the host queues the forward, hooks and all
            t0 = time.perf_counter()
            with autocast:
                loss = loss_of(model(*xs))
            optimizer.zero_grad(set_to_none=True)
            t1 = time.perf_counter()
            ahead.hold()  # and again while it queues the backward
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            ahead.learn(t1 - t0, t2 - t1)
            spans = clock.spans()
            if i >= warmup:
                for key, ms in spans.items():
                    per_layer[key].append(ms)
    finally:
        for h in handles:
            h.remove()
        for m in restore:
            m.inplace = True

    model.eval()
    infer = []
    with torch.no_grad(), autocast:
        for i in range(warmup + iters):
            marks = _Clock(device)
            marks.mark("infer", "fwd0")
            model(*xs)
            marks.mark("infer", "fwd1")
            if i >= warmup:
                infer.append(marks.spans()[("infer", "fwd")])
    model.train()

    leaves = set()
    for row in counts.rows:
        row.fwd_ms = _median(per_layer.get((row.name, "fwd")))
        if row.leaf:
            leaves.add(row.name)
            row.bwd_ms = _median(per_layer.get((row.name, "bwd")))
    for row in counts.rows:
        if not row.leaf:
            inside = [r.bwd_ms or 0.0 for r in counts.rows if r.leaf and r.name.startswith(row.name + ".")]
            row.bwd_ms = sum(inside)
    layers_ms = sum((r.fwd_ms or 0.0) + (r.bwd_ms or 0.0) for r in counts.rows if r.leaf)
    fwd_bwd = statistics.median(p[0] for p in plain)
    return Timing(
        device=device_name(device),
        dtype=precision_name(amp_dtype),
        batch=batch,
        iters=iters,
        step_ms=statistics.median(p[0] + p[1] for p in plain),
        fwd_bwd_ms=fwd_bwd,
        infer_ms=statistics.median(infer),
        layers_ms=layers_ms,
        peak_memory_bytes=peak_memory,
        peak_tflops=peak,
    )


def time_by_name(
    name: str,
    input_shape: tuple[int, ...],
    classes: int,
    counts: flops.Counts,
    *,
    kwargs: dict[str, Any],
    inputs: list[tuple[tuple[int, ...], str]] | None,
    device: str,
    precision: str,
    batch: int,
    iters: int,
    peak: float | None,
) -> Timing:
    """`time_model` for `mirante profile --time`: the model built by name on `device` ("auto", "cuda", ...),
    at `precision`; the peak from the table of GPUs unless given."""
    try:
        where = pick_device(device)
        amp = pick_precision(precision, where)
    except ConfigError as exc:
        raise ProfileError(str(exc)) from None
    if where.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_by_name(name, input_shape, classes, kwargs)()
    peak = peak if peak is not None else device_peak(where, amp)
    return time_model(model, counts, batch=batch, device=where, amp_dtype=amp, iters=iters, peak=peak, inputs=inputs)


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _logits(output: Any) -> torch.Tensor:
    """The main output: the logits of a classifier (not its auxiliary heads), the first tensor of any other."""
    tensors = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ProfileError(f"the model returned no tensor ({type(output).__name__}): nothing to train")
    return tensors[0]


def _classes(model: nn.Module, xs: tuple) -> int | None:
    """The class count of a classifier's (batch, classes) float output; None for any other output."""
    model.eval()
    with torch.no_grad():
        out = _logits(model(*(x[:2] for x in xs)))
    model.train()
    return out.shape[1] if out.dim() == 2 and out.is_floating_point() else None
