"""Parameters, MACs and FLOPs per layer, forward and backward, for any `nn.Module`.

Conventions, stated wherever a number is shown: a MAC is one multiply-accumulate; FLOPs are
2 x MACs. The MACs are those of the products a model computes: convolutions (transposed too),
matrix products however they are reached (`nn.Linear`, `F.linear`, `matmul`, `einsum`,
attention) and scaled-dot-product attention; what torchvision publishes as "GFLOPS" at batch 1
(they are MACs). Element-wise ops, norms and pools count none.

Counting runs one forward pass in eval mode (BatchNorm in training mode rejects a single
sample) under a `TorchDispatchMode`: every ATen op the model runs is seen, whoever called it,
and charged to the innermost module running at the time (`engine.macs` has the rule for each
op). The backward is counted from the same pass: each operand of a product that needs a
gradient costs one product of the same size, so training FLOPs are about 3x the forward, the
first layer has no input gradient, a frozen layer no weight gradient, and grouped and depthwise
convolutions are right where PyTorch's own `FlopCounterMode` counts their backward `groups`
times too high. On the meta device the pass costs no memory and no arithmetic.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from engine import macs

CONVENTION = "MACs: multiply-accumulates; FLOPs = 2 x MACs; training FLOPs = forward + backward"
TOP = "(top level)"
"""The row of a model's own parameters and of the work its own forward does outside any child module."""


@dataclass
class LayerRow:
    """One module of the model; a container's figures are the sums of its subtree."""

    name: str  # as in named_modules(), e.g. "layer1.0.conv1"
    type: str
    depth: int  # 1 for the model's direct children
    leaf: bool
    out_shape: tuple[int, ...]  # one sample's output, () if the module did not run
    params: int  # in the subtree
    trainable: int
    own_params: int  # held by this module itself (not its children)
    macs: int  # forward, one sample
    backward_macs: int  # one sample
    act_bytes: int  # one sample's output, float32
    calls: int = 0  # forward calls in one pass (shared modules run more than once)
    own_macs: int = 0  # forward, one sample, by the module's own forward outside its children (F.linear, matmul)
    fwd_ms: float | None = None  # median time at the profiled batch, when timed
    bwd_ms: float | None = None

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def backward_flops(self) -> int:
        return 2 * self.backward_macs

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["out_shape"] = list(self.out_shape)
        return row | {"flops": self.flops, "backward_flops": self.backward_flops}


@dataclass
class Counts:
    """A model's counts for one input shape, per layer and in total (per sample)."""

    input_shape: tuple[int, ...]  # one sample of the first input, e.g. (C, H, W)
    params: int
    trainable: int
    macs: int
    backward_macs: int
    act_bytes: int  # sum of the leaves' outputs, one sample, float32: what training keeps for backward
    rows: list[LayerRow] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # each input tensor, one sample: "3x224x224", "16 (int64)"
    unknown: dict[str, tuple[int, str]] = field(default_factory=dict)  # op no rule covers -> (calls, first module)
    notes: list[str] = field(default_factory=list)  # how the model was built, when not on the meta device

    @property
    def frozen(self) -> int:
        return self.params - self.trainable

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def train_flops(self) -> int:
        """Forward plus backward FLOPs for one sample."""
        return 2 * (self.macs + self.backward_macs)

    def summary(self) -> dict[str, Any]:
        """The totals, as RunStarted.model_summary carries them."""
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "trainable_params": self.trainable,
            "macs": self.macs,
            "flops": self.flops,
            "backward_flops": 2 * self.backward_macs,
            "train_flops": self.train_flops,
            "activation_bytes": self.act_bytes,
            "flops_convention": CONVENTION,
            # per module: name, type, depth, output shape, params, forward MACs (for the Model screen)
            "layers": [[r.name, r.type, r.depth, list(r.out_shape), r.params, r.macs] for r in self.rows],
        }


class _Counter(TorchDispatchMode):
    """Counts every op the model runs, forward and backward MACs, under the module running it."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = [""]  # module names, innermost last; "" is the model itself
        self.macs: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # name -> [forward, backward], own ops only
        self.unknown: dict[str, list[Any]] = {}  # op -> [calls, first module to run it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        out = func(*args, **(kwargs or {}))
        what = macs.kind(func)
        if what == "macs":
            forward, backward = macs.count(func, args, out)
            entry = self.macs[self.stack[-1]]
            entry[0] += forward
            entry[1] += backward
        elif what == "unknown":
            name = str(func.overloadpacket)
            self.unknown.setdefault(name, [0, self.stack[-1] or TOP])[0] += 1
        return out


def count(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    inputs: Any = None,
    batch: int | None = None,
) -> Counts:
    """Per-layer and total counts of `model`, per sample.

    Give `input_shape` (one sample's shape, e.g. (C, H, W): the model runs on zeros of batch 1)
    or `inputs`: a tensor, a tuple of them (positional arguments) or a dict (keyword arguments),
    with a batch dimension first; the figures are divided by `batch` (default: the first tensor's
    first dimension). Inputs are moved to the model's device; a model built on the meta device
    costs no memory and no arithmetic.
    """
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    if inputs is None:
        if input_shape is None:
            raise TypeError("count() needs input_shape or inputs")
        inputs = torch.zeros(1, *input_shape)
    args, kwargs = _call_arguments(inputs, device)
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not tensors:
        raise TypeError("count() needs at least one tensor among the inputs")
    batch = batch or (tensors[0].shape[0] if tensors[0].dim() else 1)
    modules = {name: m for name, m in model.named_modules() if name}
    counter = _Counter()
    seen: dict[str, dict[str, Any]] = {}

    def enter(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            counter.stack.append(name)

        return hook

    def leave(name: str, leaf: bool):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if counter.stack[-1] == name:
                counter.stack.pop()
            outs = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
            entry = seen.setdefault(name, {"bytes": 0, "calls": 0})
            entry["calls"] += 1
            if outs:
                entry["shape"] = tuple(outs[0].shape[1:])
            if leaf:
                entry["bytes"] += sum(4 * t.numel() for t in outs)

        return hook

    handles = []
    for name, m in modules.items():
        handles += [m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave(name, _is_leaf(m)))]
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad(), counter:  # gradients enabled: the rules see which operands will need one
            model(*args, **kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    own = {name: (f // batch, b // batch) for name, (f, b) in counter.macs.items()}
    bytes_ = {n: e["bytes"] // batch for n, e in seen.items()}
    rows = [_row(name, module, seen.get(name, {}), own, bytes_) for name, module in modules.items()]
    if "" in own or any(True for _ in model.parameters(recurse=False)):
        rows.insert(0, _top_row(model, own.get("", (0, 0))))
    every = list(model.parameters())
    return Counts(
        input_shape=tuple(tensors[0].shape[1:]),
        params=sum(p.numel() for p in every),
        trainable=sum(p.numel() for p in every if p.requires_grad),
        macs=sum(f for f, _ in own.values()),
        backward_macs=sum(b for _, b in own.values()),
        act_bytes=sum(bytes_.values()),
        rows=rows,
        inputs=[_describe(t) for t in tensors],
        unknown={op: (calls, where) for op, (calls, where) in counter.unknown.items()},
    )


def _call_arguments(inputs: Any, device: torch.device) -> tuple[tuple, dict[str, Any]]:
    moved = pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, inputs)
    if isinstance(moved, dict):
        return (), moved
    if isinstance(moved, (tuple, list)):
        return tuple(moved), {}
    return (moved,), {}


def _describe(t: torch.Tensor) -> str:
    shape = "x".join(map(str, t.shape[1:])) or "scalar"
    return shape if t.dtype == torch.float32 else f"{shape} ({str(t.dtype).removeprefix('torch.')})"


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _row(
    name: str,
    module: nn.Module,
    entry: dict[str, Any],
    own: dict[str, tuple[int, int]],
    bytes_: dict[str, int],
) -> LayerRow:
    prefix = name + "."
    subtree = [n for n in own.keys() | bytes_.keys() if n == name or n.startswith(prefix)]
    params = list(module.parameters())
    return LayerRow(
        name=name,
        type=type(module).__name__,
        depth=name.count(".") + 1,
        leaf=_is_leaf(module),
        out_shape=entry.get("shape", ()),
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        own_params=sum(p.numel() for p in module.parameters(recurse=False)),
        macs=sum(own.get(n, (0, 0))[0] for n in subtree),
        backward_macs=sum(own.get(n, (0, 0))[1] for n in subtree),
        act_bytes=sum(bytes_.get(n, 0) for n in subtree),
        calls=entry.get("calls", 0),
        own_macs=own.get(name, (0, 0))[0],
    )


def _top_row(model: nn.Module, own: tuple[int, int]) -> LayerRow:
    """The model's own parameters and the work of its own forward, outside any child module."""
    params = list(model.parameters(recurse=False))
    return LayerRow(
        name=TOP,
        type=type(model).__name__,
        depth=1,
        leaf=True,
        out_shape=(),
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        own_params=sum(p.numel() for p in params),
        macs=own[0],
        backward_macs=own[1],
        act_bytes=0,
        calls=1,
        own_macs=own[0],
    )


def build_for_count(build: Callable[[], nn.Module]) -> tuple[nn.Module, str | None]:
    """Build a model to count, as cheaply as it allows; returns it and a note when not wholly on meta.

    On the meta device first (shapes without memory or initialisation cost). A constructor that
    computes with tensors (`.tolist()`, `.item()`: torchvision's RegNets) cannot run there: then
    only its parameters and buffers go to meta as they are registered. Failing that, on the CPU.
    """
    try:
        with torch.device("meta"):
            return build(), None
    except Exception:  # noqa: BLE001 (any failure: the next way is tried, and the last one raises)
        pass
    try:
        with meta_parameters():
            return build(), None
    except Exception:  # noqa: BLE001
        pass
    return build(), "built on the CPU: its constructor cannot run on the meta device"


def count_build(
    build: Callable[[], nn.Module], input_shape: tuple[int, ...] | None = None, *, inputs: Any = None
) -> Counts:
    """`count` a model `build` makes, built by `build_for_count`; a model whose forward cannot run on meta
    tensors (one that reads a value, say) is built again on the CPU and run on real tensors, and the counts
    say so in their notes."""
    model, note = build_for_count(build)
    try:
        counts = count(model, input_shape, inputs=inputs)
    except Exception as exc:
        if not is_meta_trouble(exc) or not on_meta(model):
            raise
        model = build()
        counts = count(model, input_shape, inputs=inputs)
        note = f"built and run on the CPU: its forward cannot run on the meta device ({first_line(exc)})"
    counts.notes += [note] if note else []
    return counts


def on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def is_meta_trouble(exc: BaseException) -> bool:
    """Whether an error comes from the meta device (a value read, an op without a meta kernel), not the model."""
    return isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Within: every parameter and buffer a module registers goes to the meta device, other tensors stay."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, tensor, persistent)
        if tensor is not None:
            module._buffers[name] = tensor.to("meta")

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer
