"""The model zoo: torchvision's CNNs with CIFAR-sized stems, plus three small nets of our own, by name.

`build_model(name, ...)` returns a plain `nn.Module`. For small inputs (side <= 64) the torchvision
nets get the usual CIFAR stems so a 32x32 image is not shrunk to nothing; alexnet and inception_v3
keep their architecture and the data is upsampled to `input_size(...)` instead. GoogLeNet and
Inception v3 return namedtuples with auxiliary logits in training mode: `split_outputs` unpacks
any model's output into `(logits, aux_logits)`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision import models

from engine.catalog import (  # noqa: F401 - re-exported: the zoo's names and sizes live there, without torch
    ACTIVATIONS,
    AUX_MIN_SIZE,
    MODELS,
    SMALL_INPUT_MAX,
    ModelError,
    ModelSpec,
    check_size,
    get_spec,
    input_size,
    model_names,
)


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    activation: str = "relu",
    pretrained: bool = False,
    aux_logits: bool = False,
    depth: int | None = None,
    residual: bool = False,
    weights: bool = True,
) -> nn.Module:
    """Build `name` for square inputs of side `image_size` (use `input_size`), in training mode.

    `activation`, `depth` and `residual` shape `plainnet` only; `aux_logits` adds googlenet's and inception_v3's
    auxiliary heads. `pretrained` loads torchvision's ImageNet weights (a download) and keeps the
    ImageNet stem; the classifier is replaced when `num_classes` is not 1000. `weights=False` builds a pretrained
    run's architecture without its weights (for a checkpoint to fill).
    """
    spec = get_spec(name)
    check_size(spec, image_size)
    if activation not in ACTIVATIONS:
        raise ModelError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
    if aux_logits and name not in AUX_MIN_SIZE:
        raise ModelError(f"{name} has no auxiliary heads; only {' and '.join(AUX_MIN_SIZE)} do")
    if aux_logits and image_size < AUX_MIN_SIZE[name]:
        side = AUX_MIN_SIZE[name]
        raise ModelError(
            f"{name}'s auxiliary heads need inputs of at least {side}x{side}, not {image_size}x{image_size}"
        )
    if residual and name != "plainnet":
        raise ModelError(f"--residual is plainnet's (skip connections in the plain stack); {name} is as it is")
    if pretrained and not spec.pretrained:
        raise ModelError(f"{name} has no pretrained weights; leave out --pretrained")
    if pretrained and in_channels != 3:
        raise ModelError(f"pretrained {name} takes 3-channel images, not {in_channels}; repeat grey images to RGB")

    if name in ("smallcnn", "sepcnn"):
        return _small_cnn(in_channels, num_classes, separable=name == "sepcnn")
    if name == "plainnet":
        return _plain_net(in_channels, num_classes, activation, 20 if depth is None else depth, residual)
    if pretrained and weights:
        return _pretrained(name, num_classes, aux_logits, image_size)
    if pretrained:
        extra = {"aux_logits": aux_logits, "init_weights": False} if name in AUX_MIN_SIZE else {}
        return _new_classifier(models.get_model(name, weights=None, **extra), num_classes)

    extra = {"aux_logits": aux_logits, "init_weights": True} if name in AUX_MIN_SIZE else {}
    model = models.get_model(name, weights=None, num_classes=num_classes, **extra)
    if image_size <= SMALL_INPUT_MAX:
        _use_small_stem(name, model, num_classes)
    if in_channels != 3:
        _set_in_channels(model, in_channels)
    return model


def split_outputs(output: Tensor | models.GoogLeNetOutputs | models.InceptionOutputs) -> tuple[Tensor, list[Tensor]]:
    """`(logits, aux_logits)` from any model's output; aux is empty unless the model has auxiliary heads in training."""
    if isinstance(output, Tensor):
        return output, []
    if isinstance(output, (models.GoogLeNetOutputs, models.InceptionOutputs)):
        logits, *aux = output
        return logits, [a for a in aux if a is not None]
    raise TypeError(f"unexpected model output type {type(output).__name__}")


# Our nets


def _small_cnn(in_channels: int, num_classes: int, *, separable: bool) -> nn.Sequential:
    """smallcnn, or with `separable` sepcnn: each 3x3 conv becomes depthwise 3x3 + pointwise 1x1, each with BN-ReLU."""
    plan = [32, 32, "M", 64, 64, "M", 128, "M"]  # conv widths; "M" is a 2x2 max-pool
    layers: list[tuple[str, nn.Module]] = []
    width, i, pools = in_channels, 0, 0  # i numbers the convs: conv1 .. conv5
    for item in plan:
        if item == "M":
            pools += 1
            layers.append((f"pool{pools}", nn.MaxPool2d(2)))
            continue
        i += 1
        if separable:
            layers += [
                (f"conv{i}_dw", nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)),
                (f"bn{i}_dw", nn.BatchNorm2d(width)),
                (f"relu{i}_dw", nn.ReLU(inplace=True)),
                (f"conv{i}_pw", nn.Conv2d(width, item, 1, bias=False)),
                (f"bn{i}_pw", nn.BatchNorm2d(item)),
                (f"relu{i}_pw", nn.ReLU(inplace=True)),
            ]
        else:
            layers += [
                (f"conv{i}", nn.Conv2d(width, item, 3, padding=1, bias=False)),
                (f"bn{i}", nn.BatchNorm2d(item)),
                (f"relu{i}", nn.ReLU(inplace=True)),
            ]
        width = item
    layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(width, num_classes))]
    return nn.Sequential(OrderedDict(layers))


class _SkipNet(nn.Sequential):
    """plainnet with a skip connection around each conv whose input and output have the same shape:
    x + g * act(conv(x)), with a learnt gain g per skip starting at SKIP_GAIN (SkipInit's remedy for a deep
    residual stack without BatchNorm, whose activations otherwise grow with each added branch); the layers (and
    their names) are plainnet's."""

    def __init__(self, layers: OrderedDict) -> None:
        super().__init__(layers)
        skips = sum(1 for m in self.children() if isinstance(m, nn.Conv2d) and _keeps_shape(m))
        self.gains = nn.Parameter(torch.full((skips,), SKIP_GAIN))

    def forward(self, x: Tensor) -> Tensor:
        layers = list(self.children())  # (the gains are a parameter, not a layer)
        i = k = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.Conv2d) and _keeps_shape(layer) and i + 1 < len(layers):
                x = x + self.gains[k] * layers[i + 1](layer(x))
                i, k = i + 2, k + 1
            else:
                x = layer(x)
                i += 1
        return x


SKIP_GAIN = 0.1


def _keeps_shape(conv: nn.Conv2d) -> bool:
    return conv.stride == (1, 1) and conv.in_channels == conv.out_channels


def _plain_net(
    in_channels: int, num_classes: int, activation: str, depth: int, residual: bool = False
) -> nn.Sequential:
    """A stem conv and `depth` 3x3 convs, each followed by `activation`: ResNet's plain CIFAR net.

    With `residual`, the same layers with a skip around each conv of equal input and output shape (`_SkipNet`).

    Widths 16, 32, 64 in three stages; the first conv of stages 2 and 3 has stride 2. Kaiming init for
    relu, Xavier for sigmoid and tanh. Measured at init (depth 20, a random batch of 8, three seeds):
    the last conv's weight-gradient norm is 1e14-2e14 times the stem conv's with sigmoid, 8-22 times
    with relu, 0.4-0.5 with tanh: the lecture's vanishing gradient (checked in tests/test_models.py).
    """
    if depth < 1:
        raise ModelError(f"plainnet needs a depth of at least 1, not {depth}")
    act = {"relu": lambda: nn.ReLU(inplace=True), "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[activation]
    layers: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(in_channels, 16, 3, padding=1)), ("act1", act())]
    width = 16
    for i in range(depth):
        out = 16 * 2 ** (3 * i // depth)  # the stage changes at 1/3 and 2/3 of the depth
        stride = 2 if out != width else 1
        layers += [(f"conv{i + 2}", nn.Conv2d(width, out, 3, stride=stride, padding=1)), (f"act{i + 2}", act())]
        width = out
    layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(width, num_classes))]
    model = (_SkipNet if residual else nn.Sequential)(OrderedDict(layers))

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if activation == "relu":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_normal_(module.weight, gain=nn.init.calculate_gain(activation))
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(module.bias)
    return model


# torchvision's nets


def _use_small_stem(name: str, model: nn.Module, num_classes: int) -> None:
    """Give a torchvision net the usual CIFAR stem (or head) so small inputs keep their spatial detail."""
    if name.startswith("resnet"):
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits it
        model.maxpool = nn.Identity()
    elif name.startswith("vgg"):
        # 32x32 leaves a 1x1 map: the ImageNet head would spread it over 7x7 into 25088x4096 weights.
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Linear(512, num_classes)
    elif name.startswith("mobilenet"):
        model.features[0][0].stride = (1, 1)
    elif name == "googlenet":
        model.conv1.conv.stride = (1, 1)
        model.maxpool1 = nn.Identity()


def _set_in_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the first conv with one like it that takes `in_channels`, its weights drawn at the same scale."""
    path, old = next((path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        new.weight.normal_(0.0, old.weight.std().item())
        if new.bias is not None:
            new.bias.zero_()
    _set_submodule(model, path, new)


def _pretrained(name: str, num_classes: int, aux_logits: bool, image_size: int) -> nn.Module:
    """torchvision's ImageNet net and weights, ImageNet stem kept, with a new classifier for `num_classes`.

    The weights come from torch's hub cache, downloaded there if missing, and are loaded as plain
    weights only: a file there that would run code is refused (ModelError), as is a damaged one.
    """
    weights = models.get_model_weights(name).DEFAULT
    side = weights.meta["min_size"][0]  # the ImageNet stem can need more than our small one (googlenet: 15)
    if image_size < side:
        raise ModelError(
            f"pretrained {name} cannot take {image_size}x{image_size} inputs: the smallest it takes is {side}x{side}"
        )
    cached = hub_file(weights.url)
    try:
        with _weights_only():
            # torchvision refuses aux_logits=False with weights; it loads the heads, then drops googlenet's itself.
            model = models.get_model(name, weights=weights, **({"aux_logits": True} if aux_logits else {}))
    except Exception as exc:  # torchvision downloads, checks and loads in one call: the cache tells which step failed
        if cached.exists():
            raise ModelError(
                f"{cached}: refused: it is not plain weights of pretrained {name} (damaged, or it would run code); "
                f"delete it to download it again"
            ) from None
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0]  # urllib's URLError keeps the cause apart
        raise ModelError(
            f"pretrained {name}: the weights could not be downloaded from {weights.url} ({reason}); "
            f"without network, put that file at {cached}"
        ) from None
    if name == "inception_v3" and not aux_logits:
        model.aux_logits, model.AuxLogits = False, None
    return _new_classifier(model, num_classes)


def _new_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Every 1000-way Linear (an ImageNet classifier: the main one and any auxiliary heads) made `num_classes`-way."""
    if num_classes != 1000:
        for path, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and module.out_features == 1000:
                _set_submodule(model, path, nn.Linear(module.in_features, num_classes))
    return model


def hub_file(url: str) -> Path:
    """Where torch's hub keeps the download of `url` ($TORCH_HOME/hub/checkpoints/, as torch.hub names it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """Every torch.load inside loads plain weights only (weights_only=True), even one that asks for less.

    torchvision loads hub weights through torch.hub.load_state_dict_from_url with its default,
    weights_only=False: a pickle planted in the hub cache would run. torch's own switch
    (TORCH_FORCE_WEIGHTS_ONLY_LOAD, since torch 2.4) overrides that for the loads made in here;
    the environment is restored after, so the user's own scripts are not changed.
    """
    saved = {key: os.environ.get(key) for key in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(_FORCE_NO_WEIGHTS_ONLY, None)  # both set is an error in torch.load
    try:
        with warnings.catch_warnings():  # a refused file is said in one line, not after torch's warning about it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
