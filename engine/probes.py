"""Per-layer norms, activation and filter captures, and batched read-back: no host sync per step.

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
import torch.nn.functional as F
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


def capture_layers(model: nn.Module, deeper: str | None = None) -> list[tuple[str, nn.Module]]:
    """The first conv layer and one deeper layer (two thirds down the convs, or the one named)."""
    convs = conv_layers(model)
    if not convs:
        return []
    modules = dict(model.named_modules())
    if deeper is not None:
        if deeper not in modules:
            raise ValueError(f"no layer named {deeper!r} in the model")
        chosen = (deeper, modules[deeper])
    else:
        chosen = convs[(2 * len(convs)) // 3]
    return [convs[0]] if chosen[0] == convs[0][0] else [convs[0], chosen]


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


RELUS = (nn.ReLU, nn.ReLU6)


@dataclass
class Maps:
    """Small float16 maps of one layer, on the device, ready to copy."""

    layer: str
    maps: Tensor  # [C, H, W] float16
    # of the first ReLU after the layer: [share of outputs that are zero, share of channels zero everywhere]
    relu: Tensor | None = None


def zero_shares(output: Tensor) -> Tensor:
    """[share of zero values, share of channels that are zero everywhere] of one sample's [C, ...] output."""
    flat = output.detach().reshape(output.shape[0], -1)
    zero = flat == 0
    return torch.stack([zero.float().mean(), zero.all(dim=1).float().mean()])


def shrink_maps(x: Tensor, max_channels: int, max_side: int) -> Tensor:
    """[C, H, W] float16: the first `max_channels` channels, average-pooled to at most `max_side`."""
    x = x[:max_channels].float()
    if x.dim() == 3 and max(x.shape[-2:]) > max_side:
        h, w = x.shape[-2:]
        scale = max_side / max(h, w)
        x = F.adaptive_avg_pool2d(x, (max(1, round(h * scale)), max(1, round(w * scale))))
    return x.to(torch.float16)


def capture_activations(
    model: nn.Module,
    sample: Tensor,
    layers: list[tuple[str, nn.Module]],
    *,
    autocast: Callable[[], Any],
    max_channels: int = 32,
    max_side: int = 32,
) -> list[Maps]:
    """Maps of `layers` for one input, from a separate eval-mode forward pass.

    The hooks clone inside the hook: torchvision's in-place ReLUs overwrite a conv's output
    right after it is produced. The first ReLU module to run after a captured layer gives
    that layer's dead-ReLU figures (`Maps.relu`). Hooks exist only during this pass, so
    other steps pay nothing.
    """
    captured: list[Maps] = []
    waiting: list[Maps] = []  # captured layers whose ReLU has not run yet

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            captured.append(Maps(name, shrink_maps(out.detach()[0].clone(), max_channels, max_side)))
            waiting.append(captured[-1])

        return hook

    def relu_hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if waiting and isinstance(output, Tensor) and output.dim() >= 2:
            shares = zero_shares(output[0])
            for maps in waiting:
                maps.relu = shares
            waiting.clear()

    handles = [module.register_forward_hook(hook_for(name)) for name, module in layers]
    handles += [m.register_forward_hook(relu_hook) for m in model.modules() if isinstance(m, RELUS)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), autocast():
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return captured


def first_filters(model: nn.Module, max_filters: int = 64) -> Maps | None:
    """The first conv layer's weights [out, in, kh, kw] as float16 (at most `max_filters`)."""
    convs = conv_layers(model)
    if not convs:
        return None
    name, conv = convs[0]
    return Maps(name, conv.weight.detach()[:max_filters].to(torch.float16).clone())
