"""Parameter and multiply-accumulate counts per layer, from one batch-1 forward pass.

A first version: convolutions and linear layers carry the MACs (FLOPs = 2 x MACs), training
FLOPs are taken as 3x the forward (the backward computes two products per forward one).
The profiler issue replaces this with exact per-layer counts and timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LayerCount:
    name: str
    type: str
    out_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass
class Counts:
    input_shape: tuple[int, ...]  # (C, H, W)
    params: int
    trainable: int
    macs: int  # forward multiply-accumulates for one image
    layers: list[LayerCount] = field(default_factory=list)

    @property
    def flops(self) -> int:
        """Forward FLOPs for one image: 2 x MACs."""
        return 2 * self.macs

    @property
    def train_flops(self) -> int:
        """Forward + backward FLOPs for one image (3x forward)."""
        return 3 * self.flops

    def summary(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "trainable_params": self.trainable,
            "macs": self.macs,
            "flops": self.flops,
            "train_flops": self.train_flops,
            "flops_convention": "MACs are multiply-accumulates; FLOPs = 2 x MACs; train = 3 x forward",
        }


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count(model: nn.Module, input_shape: tuple[int, int, int]) -> Counts:
    """Counts for `model` on one image of `input_shape`, run in eval mode on the model's device."""
    rows: list[LayerCount] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor):
                return
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(LayerCount(name, type(module).__name__, tuple(out.shape[1:]), params, _macs(module, out)))

        return record

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Counts(tuple(input_shape), params, trainable, sum(r.macs for r in rows), rows)
