"""What the network computes on a few fixed validation images: every layer's maps, its predictions, Grad-CAM.

A capture runs one eval-mode forward pass of the images (one per class, up to 10) with a hook on every conv layer
and every block (a residual block, an Inception module: a module holding two or more convs that is not a plain
container) and keeps each one's output maps: cloned inside the hook (torchvision's ReLUs are in place and would
overwrite a conv's output right after it is made), cut to a byte budget (`fit`: channels capped, then the largest
maps pooled down), and quantised to one byte a value per channel, on the device. The first ReLU to run after a conv
says which of its channels are dead on every image. The probabilities of each image and Grad-CAM on the last conv
layer (Captum's `LayerGradCam`, for the predicted and for the true class) come with them. Everything stays on the
device for the caller's non-blocking read-back; no host sync is made here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine import models

BUDGET = 960 * 1024  # bytes per capture by default (maps, images, Grad-CAM): under 1 MB stored
MAX_CHANNELS = 64  # channels kept of a layer at most, whatever the budget
MIN_SIDE = 4  # maps are pooled down no smaller than this (longer side)
MIN_CHANNELS = 8  # then channels are cut down to no fewer than this
MAX_IMAGES = 10
RELUS = (nn.ReLU, nn.ReLU6)
PLAIN = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def map_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv layer and every block, in the model's order (a block before the convs inside it)."""
    out = []
    for name, module in model.named_modules():
        if not name:
            continue
        block = not isinstance(module, PLAIN) and sum(isinstance(m, nn.Conv2d) for m in module.modules()) >= 2
        if block or isinstance(module, nn.Conv2d):
            out.append((name, module))
    return out


def is_block(module: nn.Module) -> bool:
    return not isinstance(module, nn.Conv2d)


@dataclass(frozen=True)
class Kept:
    """What is kept of one layer's [N, C, H, W] output: its first `channels` channels, pooled to `height` x `width`."""

    channels: int
    height: int
    width: int

    def bytes(self, images: int) -> int:
        return images * self.channels * self.height * self.width + 8 * self.channels  # values, then lo and hi


def fit(shapes: dict[str, tuple[int, int, int]], images: int, budget: int, whole: str | None = None) -> dict[str, Kept]:
    """How much of each layer's (C, H, W) output fits `budget` bytes for `images` images.

    Channels are capped at MAX_CHANNELS; then, while over budget, the layer that costs most is halved: its maps
    pooled to half their size down to MIN_SIDE, then its channels down to MIN_CHANNELS (of layers that cost the same,
    the deeper one). A capture that cannot
    fit even so keeps that floor and goes over. The layer named `whole` is kept whole, outside the budget.
    """
    kept = {name: Kept(min(c, MAX_CHANNELS), h, w) for name, (c, h, w) in shapes.items() if name != whole}
    total = sum(k.bytes(images) for k in kept.values())
    while kept and total > budget:
        # of equals the deeper: the first conv's maps (the lecture's first-layer maps) are the last to blur
        name = max(reversed(kept), key=lambda n: kept[n].bytes(images) if _shrinkable(kept[n]) else -1)
        k = kept[name]
        if not _shrinkable(k):
            break
        if max(k.height, k.width) > MIN_SIDE:
            smaller = Kept(k.channels, math.ceil(k.height / 2), math.ceil(k.width / 2))
        else:
            smaller = Kept(max(MIN_CHANNELS, k.channels // 2), k.height, k.width)
        total += smaller.bytes(images) - k.bytes(images)
        kept[name] = smaller
    if whole in shapes:
        kept[whole] = Kept(*shapes[whole])
    return {name: kept[name] for name in shapes}  # in the model's order


def _shrinkable(k: Kept) -> bool:
    return max(k.height, k.width) > MIN_SIDE or k.channels > MIN_CHANNELS


def quantise(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[N, C, H, W] float -> (uint8 values, lo [C], hi [C]): value = lo + q / 255 * (hi - lo), per channel.

    Non-finite values are kept apart: NaN becomes 0 and ±Inf the channel's finite bounds, and the channel's
    bounds say so (lo or hi NaN when the channel had a NaN)."""
    x = x.float()
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    finite = torch.isfinite(flat)
    lo = torch.where(finite, flat, torch.full_like(flat, math.inf)).amin(dim=1)
    hi = torch.where(finite, flat, torch.full_like(flat, -math.inf)).amax(dim=1)
    none = ~finite.any(dim=1)
    lo, hi = torch.where(none, torch.zeros_like(lo), lo), torch.where(none, torch.zeros_like(hi), hi)
    span = (hi - lo).clamp(min=1e-30)
    clamped = torch.minimum(torch.maximum(x.nan_to_num(0.0), lo.view(1, -1, 1, 1)), hi.view(1, -1, 1, 1))
    q = ((clamped - lo.view(1, -1, 1, 1)) / span.view(1, -1, 1, 1) * 255).round().to(torch.uint8)
    nan = torch.isnan(flat).any(dim=1)
    lo = torch.where(nan, torch.full_like(lo, math.nan), lo)
    return q, lo, hi


@dataclass
class LayerMaps:
    """One layer's kept maps, on the device."""

    layer: str
    block: bool
    channels: int  # the layer's own channel count
    size: tuple[int, int]  # its own map size
    q: Tensor | None = None  # uint8 [N, c, h, w]
    lo: Tensor | None = None
    hi: Tensor | None = None
    dead: Tensor | None = None  # bool [C] over all the layer's channels: zero on every image after its ReLU
    zero: Tensor | None = None  # share of zero values after its ReLU (for the dead-ReLU check)


@dataclass
class Captured:
    """A capture, on the device: the input and every layer's maps, the probabilities, Grad-CAM."""

    layers: list[LayerMaps]
    probs: Tensor  # [N, K] float32
    cams: Tensor | None = None  # [2, N, H, W] uint8 (predicted class, true class), or None
    cam_layer: str = ""
    kept: dict[str, Kept] = field(default_factory=dict)


class Capturer:
    """Captures of `model` on fixed `images` [N, C, H, W] (validation images `indices`, of classes `labels`) within
    `budget` bytes, the layer named `whole` kept whole."""

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: list[int] | None = None,
        indices: list[int] | None = None,
        *,
        budget: int = BUDGET,
        whole: str | None = None,
        autocast: Callable[[], Any] | None = None,
        gradcam: bool = True,
    ) -> None:
        self.model = model
        self.images = images
        self.labels = labels
        # made once, here: a copy of host memory to a GPU waits for the device, and a capture must not
        self._true = torch.as_tensor(labels, device=images.device) if labels is not None else None
        self.indices = list(indices) if indices is not None else list(range(len(images)))
        self.budget = budget
        self.whole = whole
        self._autocast = autocast
        self.gradcam = gradcam
        self.layers = map_layers(model)
        self._kept: dict[str, Kept] | None = None  # planned at the first capture, from the layers' output shapes
        self._shapes: dict[str, tuple[int, ...]] = {}

    def plan(self) -> dict[str, Kept]:
        """What each layer keeps: from one forward pass of one image, made once."""
        if self._kept is None:
            shapes: dict[str, tuple[int, ...]] = {}

            def hook_for(name: str):
                def hook(module: nn.Module, inputs: Any, output: Any) -> None:
                    out = output[0] if isinstance(output, (tuple, list)) else output
                    if isinstance(out, Tensor) and out.dim() == 4 and name not in shapes:
                        shapes[name] = tuple(out.shape[1:])

                return hook

            self._forward(self.images[:1], [m.register_forward_hook(hook_for(n)) for n, m in self.layers])
            self._shapes = {"input": tuple(self.images.shape[1:]), **shapes}
            layers = {n: s for n, s in self._shapes.items() if n != "input"}
            n, c, h, w = self.images.shape
            own = n * c * h * w + (2 * n * h * w if self.gradcam else 0)  # the images and Grad-CAM count too
            kept = fit(layers, n, max(0, self.budget - own), self.whole)
            c, h, w = self._shapes["input"]
            self._kept = {"input": Kept(c, h, w), **kept}  # the images themselves, whole
        return self._kept

    def capture(self, whole: str | None = None) -> Captured:
        """Every layer's maps, the probabilities and Grad-CAM, on the device; the layer `whole` (a name from
        `map_layers`) kept whole this time."""
        kept = self.plan()
        if whole in self._shapes and whole != "input":
            kept = {**kept, whole: Kept(*self._shapes[whole])}
        found: dict[str, LayerMaps] = {}
        waiting: list[LayerMaps] = []  # convs whose ReLU has not run yet

        def hook_for(name: str, module: nn.Module):
            def hook(_: nn.Module, inputs: Any, output: Any) -> None:
                out = output[0] if isinstance(output, (tuple, list)) else output
                if name in found or name not in kept or not isinstance(out, Tensor) or out.dim() != 4:
                    return  # a module called twice keeps its first output
                k = kept[name]
                layer = LayerMaps(name, is_block(module), out.shape[1], (out.shape[2], out.shape[3]))
                layer.q, layer.lo, layer.hi = quantise(_shrink(out.detach(), k))  # reduced before the next op
                found[name] = layer
                if is_block(module):
                    self._deadness(layer, out.detach(), share=False)  # its own output, after its last ReLU if any
                else:
                    waiting.append(layer)

            return hook

        def relu_hook(_: nn.Module, inputs: Any, output: Any) -> None:
            if waiting and isinstance(output, Tensor) and output.dim() == 4:
                for layer in waiting:
                    if output.shape[1] == layer.channels:
                        self._deadness(layer, output.detach())
                waiting.clear()

        handles = [m.register_forward_hook(hook_for(n, m)) for n, m in self.layers]
        handles += [m.register_forward_hook(relu_hook) for m in self.model.modules() if isinstance(m, RELUS)]
        logits = self._forward(self.images, handles)
        images = LayerMaps("input", False, self.images.shape[1], tuple(self.images.shape[2:]))
        images.q, images.lo, images.hi = quantise(self.images)
        layers = [images] + [found[n] for n, _ in self.layers if n in found]
        probs = torch.softmax(logits.float(), dim=1)
        captured = Captured(layers, probs, kept=kept)
        if self.gradcam:
            captured.cam_layer, captured.cams = self._gradcam(logits)
        return captured

    def _forward(self, x: Tensor, handles: list[Any]) -> Tensor:
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad(), self._context():
                logits, _ = models.split_outputs(self.model(x))
        finally:
            self.model.train(was_training)
            for handle in handles:
                handle.remove()
        return logits

    def _context(self) -> Any:
        if self._autocast is not None:
            return self._autocast()
        return torch.autocast(self.images.device.type, enabled=False)

    @staticmethod
    def _deadness(layer: LayerMaps, after: Tensor, share: bool = True) -> None:
        """Which channels are zero on every image in `after` (the layer's output once through its ReLU) and, with
        `share`, the share of zero values (a conv's, for the dead-ReLU check)."""
        zero = after == 0
        layer.dead = zero.all(dim=3).all(dim=2).all(dim=0)
        if share:
            layer.zero = zero.float().mean()

    def _gradcam(self, logits: Tensor) -> tuple[str, Tensor | None]:
        """Grad-CAM on the last conv layer for the predicted and the true class: [2, N, H, W] uint8, each map
        scaled to its own maximum (Captum's LayerGradCam, upsampled to the images' size)."""
        convs = [(n, m) for n, m in self.layers if isinstance(m, nn.Conv2d)]
        if not convs:
            return "", None
        try:  # imported on the first capture (0.5 s: it loads matplotlib)
            from captum.attr import LayerAttribution, LayerGradCam
        except ImportError:  # a dependency of mirante's, but an install may lack it: the maps are worth having alone
            self.gradcam = False
            return "", None

        name, conv = convs[-1]
        predicted = logits.argmax(dim=1)
        true = self._true if self._true is not None else predicted
        was_training = self.model.training
        forward = _Logits(self.model)
        try:
            self.model.eval()
            with torch.enable_grad():
                cam = LayerGradCam(forward, conv)
                maps = [
                    cam.attribute(self.images, target=target, relu_attributions=True) for target in (predicted, true)
                ]
        finally:
            self.model.train(was_training)
        size = tuple(self.images.shape[2:])
        stacked = torch.cat([LayerAttribution.interpolate(m.detach(), size, "bilinear") for m in maps], dim=1)
        stacked = stacked.transpose(0, 1).float().clamp(min=0)  # [2, N, H, W]
        peak = stacked.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)
        return name, (stacked / peak * 255).round().to(torch.uint8)


class _Logits(nn.Module):
    """The model's logits alone (GoogLeNet and Inception return auxiliary outputs when training)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return models.split_outputs(self.model(x))[0]


def _shrink(x: Tensor, k: Kept) -> Tensor:
    """[N, C, H, W] cut to the kept channels and average-pooled to the kept size."""
    x = x[:, : k.channels]
    if (x.shape[2], x.shape[3]) != (k.height, k.width):
        x = F.adaptive_avg_pool2d(x.float(), (k.height, k.width))
    return x.float()  # quantised at once, inside the hook: before an in-place ReLU after the layer can change it
