"""Per-layer norms, the first layer's filters, and batched read-back: no host sync per step.

Everything here is computed on the training device and copied to the host without waiting:
each read-back is a non-blocking copy into pinned memory followed by a CUDA event, and
`ReadBack.ready()` hands values over only once their event has completed, which at the
usual cadence is long before anyone asks. On the CPU the same code runs synchronously.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def parameterised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own trainable parameters directly, in definition order: the rows of LayerStats."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if name and any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


class ReadBack:
    """Device tensors on their way to the host: copy now, read when the copy has finished."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[Any, list[Tensor], Callable[[list[Tensor]], None]]] = []

    def submit(self, tensors: list[Tensor], then: Callable[[list[Tensor]], None]) -> None:
        """Start copying `tensors` to the host; `then(host_tensors)` runs from a later `ready()`."""
        if not self.cuda:
            self._pending.append((None, [t.detach() for t in tensors], then))
            return
        host = []
        for t in tensors:
            buffer = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            buffer.copy_(t.detach(), non_blocking=True)
            host.append(buffer)
        done = torch.cuda.Event()
        done.record()
        self._pending.append((done, host, then))

    def ready(self, wait: bool = False) -> None:
        """Deliver finished copies, in order. `wait=True` blocks for all (end of epoch or run)."""
        while self._pending:
            done, host, then = self._pending[0]
            if done is not None and not done.query():
                if not wait:
                    return
                done.synchronize()  # note: a CPU-GPU sync point, only at epoch and run ends
            self._pending.pop(0)
            then(host)


class LayerNorms:
    """Per-layer gradient norms on every step, weight norms and update/weight ratios at a cadence: fused, preallocated.

    `grads()` (after backward and unscaling) folds one `torch._foreach_norm` over the gradients into the next row of a
    device ring of squared per-layer norms: four launching ops per step, whatever the number of parameters (a conv's
    weight and bias are one layer). `take()` hands the ring's rows over once per logging interval. `snapshot()` before
    `optimizer.step()` and `update()` after it measure the update as the change of the weights, right for any
    optimizer (momentum, Adam's scaling, weight decay included), into buffers allocated once. Layers with no gradient
    on a step (frozen, or unused by that step's forward) read NaN; which ones is known on the host.
    """

    def __init__(self, model: nn.Module, rows: int = 64) -> None:
        layers = parameterised_layers(model)
        self.names = tuple(name for name, _ in layers)
        self.types = tuple(type(module).__name__ for _, module in layers)
        self.params: list[nn.Parameter] = []
        self._owner_list: list[int] = []
        for i, (_, module) in enumerate(layers):
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    self.params.append(p)
                    self._owner_list.append(i)
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self._owner = self._to_device(self._owner_list)
        self._owner2 = self._to_device(self._owner_list + [i + len(self.names) for i in self._owner_list])
        self._owner_subsets: dict[tuple[int, ...], Tensor] = {}
        self._ring = torch.zeros(max(1, rows), len(self.names), dtype=torch.float32, device=self.device)
        self._missing: list[tuple[int, ...]] = []  # per filled row: the layers that had no gradient
        self._before: list[Tensor] | None = None  # the weights before the step, in buffers kept from the first

    @property
    def rows(self) -> int:
        return len(self._missing)

    @property
    def full(self) -> bool:
        return self.rows == self._ring.shape[0]

    def _to_device(self, index: list[int]) -> Tensor:
        host = torch.tensor(index, dtype=torch.long)
        if self.device.type != "cuda":
            return host.to(self.device)
        # pinned and non-blocking: no host wait (made once, and once per new pattern of missing gradients)
        return host.pin_memory().to(self.device, non_blocking=True)

    def _owner_of(self, present: tuple[int, ...]) -> Tensor:
        """The layer of each parameter that has a gradient; made on the device once per pattern."""
        index = self._owner_subsets.get(present)
        if index is None:
            index = self._owner_subsets[present] = self._to_device([self._owner_list[i] for i in present])
        return index

    def grads(self, clip: float | None = None) -> None:
        """Per-layer squared gradient norms into the ring's next row; with `clip`, clip the gradients to that total
        norm as `clip_grad_norm_` would, from the same per-tensor norms (the norms recorded are before clipping)."""
        if self.full:
            raise RuntimeError("LayerNorms.grads(): the ring is full: take() its rows first")
        present = tuple(i for i, p in enumerate(self.params) if p.grad is not None)
        grads = [self.params[i].grad for i in present]
        row = self._ring[len(self._missing)]
        if grads:
            norms = torch.stack(torch._foreach_norm(grads)).float()
            squares = norms * norms
            index = self._owner if len(present) == len(self.params) else self._owner_of(present)
            row.index_add_(0, index, squares)
            if clip is not None:
                total = squares.sum().sqrt()
                torch._foreach_mul_(grads, (clip / (total + 1e-6)).clamp(max=1.0))
        if len(present) == len(self.params):
            self._missing.append(())
        else:
            has = {self._owner_list[i] for i in present}
            self._missing.append(tuple(i for i in range(len(self.names)) if i not in has))

    def take(self) -> tuple[Tensor, list[tuple[int, ...]]] | None:
        """The filled rows as gradient norms [rows, layers] (a new device tensor) and each row's missing layers;
        the ring is emptied. None when no row was filled."""
        n = len(self._missing)
        if not n:
            return None
        norms = self._ring[:n].sqrt()
        self._ring[:n].zero_()
        missing, self._missing = self._missing, []
        return norms, missing

    def snapshot(self) -> None:
        """The weights as they are before `optimizer.step()`, on an update-probe step: one copy into kept buffers."""
        weights = [p.detach() for p in self.params]
        if self._before is None:
            self._before = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._before, weights)

    def update(self) -> Tensor:
        """After `optimizer.step()`: [2, layers] float32 on the device: the update's norm and the weights' norm."""
        if self._before is None:
            raise RuntimeError("LayerNorms.update() needs a snapshot() before the optimizer's step")
        weights = [p.detach() for p in self.params]
        torch._foreach_sub_(self._before, weights)  # before - after: the update, negated
        norms = torch.stack(torch._foreach_norm(self._before) + torch._foreach_norm(weights)).float()
        out = torch.zeros(2 * len(self.names), dtype=torch.float32, device=norms.device)
        return out.index_add_(0, self._owner2, norms * norms).sqrt().view(2, len(self.names))


@dataclass
class Maps:
    """Small float16 maps of one layer, on the device, ready to copy."""

    layer: str
    maps: Tensor


def first_filters(model: nn.Module, max_filters: int = 64) -> Maps | None:
    """The first conv layer's weights [out, in, kh, kw] as float16 (at most `max_filters`)."""
    convs = conv_layers(model)
    if not convs:
        return None
    name, conv = convs[0]
    return Maps(name, conv.weight.detach()[:max_filters].to(torch.float16).clone())
