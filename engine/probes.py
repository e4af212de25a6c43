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
    """Gradient norm, weight norm and update/weight ratio per parameterised layer, fused.

    Per-parameter norms come from one `torch._foreach_norm` over all tensors at once; an
    `index_add_` folds them into layers (a conv's weight and bias are one layer). The update
    is measured as the change of the weights across `optimizer.step()`, so it is right for
    any optimizer (momentum, Adam's scaling, weight decay included).
    """

    def __init__(self, model: nn.Module) -> None:
        layers = parameterised_layers(model)
        self.names = tuple(name for name, _ in layers)
        self.types = tuple(type(module).__name__ for _, module in layers)
        self.params: list[nn.Parameter] = []
        owner: list[int] = []
        for i, (_, module) in enumerate(layers):
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    self.params.append(p)
                    owner.append(i)
        device = self.params[0].device if self.params else torch.device("cpu")
        self._owner = torch.tensor(owner, dtype=torch.long, device=device)
        self._owner_subsets: dict[tuple[int, ...], Tensor] = {}
        self._before: list[Tensor] | None = None
        self._grad_sq: Tensor | None = None

    def _owner_of(self, present: tuple[int, ...]) -> Tensor:
        """The layer of each parameter that has a gradient; made on the device once per pattern."""
        index = self._owner_subsets.get(present)
        if index is None:
            index = self._owner[torch.tensor(present, device=self._owner.device)]
            self._owner_subsets[present] = index
        return index

    def _per_layer(self, squares: Tensor, index: Tensor) -> Tensor:
        out = torch.zeros(len(self.names), dtype=torch.float32, device=squares.device)
        return out.index_add_(0, index, squares)

    def before_step(self) -> None:
        """Call after backward (and unscaling), before optimizer.step(), on a probe step."""
        present = tuple(i for i, p in enumerate(self.params) if p.grad is not None)
        grads = [self.params[i].grad for i in present]
        if grads:
            norms = torch.stack(torch._foreach_norm(grads)).float()
            index = self._owner if len(present) == len(self.params) else self._owner_of(present)
            grad_sq = self._per_layer(norms * norms, index)
            missing = torch.ones(len(self.names), device=norms.device)
            missing.index_fill_(0, index, 0.0)
            self._grad_sq = torch.where(missing.bool(), torch.nan, grad_sq)  # layers without grads: NaN
        else:
            self._grad_sq = None
        self._before = [p.detach().clone() for p in self.params]

    def after_step(self) -> Tensor:
        """Call after optimizer.step(): a [3, layers] float32 tensor on the device (grad, weight, ratio)."""
        weights = [p.detach() for p in self.params]
        weight_sq = self._per_layer(torch.stack(torch._foreach_norm(weights)).float() ** 2, self._owner)
        deltas = torch._foreach_sub(weights, self._before)
        update_sq = self._per_layer(torch.stack(torch._foreach_norm(deltas)).float() ** 2, self._owner)
        self._before = None
        weight_norm = weight_sq.sqrt()
        grad_norm = self._grad_sq.sqrt() if self._grad_sq is not None else torch.full_like(weight_norm, torch.nan)
        return torch.stack([grad_norm, weight_norm, update_sq.sqrt() / weight_norm])


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
