"""Parameters, MACs and FLOPs per layer, forward and backward, for any `nn.Module`.

Conventions, stated wherever a number is shown: a MAC is one multiply-accumulate; FLOPs are
2 x MACs. Convolutions and linear layers carry the MACs (what torchvision's published
"GFLOPS" count, at batch 1: they are MACs). The backward pass of a conv or linear layer
computes the gradient of its weights (as many MACs as the forward) and, unless its input is
the data itself, the gradient of its input (as many again): training FLOPs are about 3x the
forward. This holds for grouped and depthwise convolutions too, where PyTorch's own
`FlopCounterMode` counts the backward `groups` times too high.

Counting runs one forward pass at batch 1 in eval mode (BatchNorm in training mode rejects a
single sample), on the meta device when the model is there (no memory, no arithmetic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

CONVENTION = "MACs: multiply-accumulates; FLOPs = 2 x MACs; training FLOPs = forward + backward"


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

    input_shape: tuple[int, ...]  # (C, H, W)
    params: int
    trainable: int
    macs: int
    backward_macs: int
    act_bytes: int  # sum of the leaves' outputs, one sample, float32: what training keeps for backward
    rows: list[LayerRow] = field(default_factory=list)

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


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Forward MACs of one call of a leaf module, from its output; 0 for what is not a product."""
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Bilinear):
        return output.numel() * module.in1_features * module.in2_features
    return 0


def _backward_macs(module: nn.Module, macs: int, input_needs_grad: bool) -> int:
    weight = getattr(module, "weight", None)
    weight_grad = macs if isinstance(weight, torch.Tensor) and weight.requires_grad else 0
    return weight_grad + (macs if input_needs_grad else 0)


def count(model: nn.Module, input_shape: tuple[int, ...]) -> Counts:
    """Per-layer and total counts of `model` for one sample of `input_shape` (C, H, W)."""
    modules = {name: m for name, m in model.named_modules() if name}
    seen: dict[str, dict[str, Any]] = {}

    def hook_for(name: str, leaf: bool):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor):
                return
            entry = seen.setdefault(name, {"macs": 0, "backward": 0, "bytes": 0, "calls": 0})
            entry["calls"] += 1
            entry["shape"] = tuple(out.shape[1:])
            if leaf:
                first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
                macs = _layer_macs(module, out)
                entry["macs"] += macs
                entry["backward"] += _backward_macs(module, macs, first is not None and first.requires_grad)
                entry["bytes"] += out.numel() * 4

        return hook

    handles = [m.register_forward_hook(hook_for(n, _is_leaf(m))) for n, m in modules.items()]
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    try:
        model.eval()
        with torch.enable_grad():  # so hooks can see which inputs need a gradient
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    leaves = {n: e for n, e in seen.items() if _is_leaf(modules[n])}
    rows = [_row(name, module, seen.get(name, {}), leaves) for name, module in modules.items()]
    every = list(model.parameters())
    return Counts(
        input_shape=tuple(input_shape),
        params=sum(p.numel() for p in every),
        trainable=sum(p.numel() for p in every if p.requires_grad),
        macs=sum(e["macs"] for e in leaves.values()),
        backward_macs=sum(e["backward"] for e in leaves.values()),
        act_bytes=sum(e["bytes"] for e in leaves.values()),
        rows=rows,
    )


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _row(name: str, module: nn.Module, entry: dict[str, Any], leaves: dict[str, dict[str, Any]]) -> LayerRow:
    prefix = name + "."
    subtree = [e for n, e in leaves.items() if n == name or n.startswith(prefix)]
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
        macs=sum(e["macs"] for e in subtree),
        backward_macs=sum(e["backward"] for e in subtree),
        act_bytes=sum(e["bytes"] for e in subtree),
        calls=entry.get("calls", 0),
    )


def on_meta(build) -> nn.Module:
    """Build a model on the meta device: shapes and counts without memory or initialisation cost."""
    with torch.device("meta"):
        return build()
