"""The model catalogue: names, one-line descriptions and input sizes of the zoo. No torch here.

`engine.models` builds the nets; this module is what the command line and the app need to
list and check them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL_INPUT_MAX = 64
"""Inputs up to this side (and not pretrained) get the CIFAR-style stems."""

MAX_SIZE = 4096
"""Largest input side accepted. One 3-channel float32 image at 4096x4096 is 201 MB and a 64-channel first
conv's output for it 4.3 GB, so a batch at a larger side fits on no GPU; a typo (100000: 120 GB per image)
is refused in one line instead of failing deep in the data loader. Every model's own side (at most
inception_v3's 299) and ImageNet-style 224-1024 inputs stay well inside."""

ACTIVATIONS = ("relu", "sigmoid", "tanh")
"""Activations `plainnet` can use (the lecture's sigmoid vs ReLU)."""


class ModelError(ValueError):
    """A model that cannot be built as asked; the message is one line, meant for the user."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str  # one line for `mirante train --help`: what the net is
    small_inputs: str  # one line: what this model does with small (e.g. 32x32) inputs
    # Smallest square side the model, as `build_model` builds it for that side, takes: the smallest side
    # a forward and backward pass at batch 2 runs at, but at least the net's total stride (resnets and
    # mobilenets run even at 1x1, with their last stages striding over single pixels).
    min_size: int
    default_size: int | None  # side to train at whatever the data's size (inception_v3: 299), else None
    pretrained: bool  # torchvision has ImageNet weights for it


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "smallcnn",
            "small CNN: five 3x3 convs with BatchNorm, three max-pools, 0.14M params; quick on a CPU",
            "made for them: 32x32 ends at 4x4 before the global average pool",
            min_size=8,
            default_size=None,
            pretrained=False,
        ),
        ModelSpec(
            "sepcnn",
            "smallcnn with each 3x3 conv split into depthwise 3x3 + pointwise 1x1 (MobileNet v1 style)",
            "made for them: 32x32 ends at 4x4 before the global average pool",
            min_size=8,
            default_size=None,
            pretrained=False,
        ),
        ModelSpec(
            "plainnet",
            "plain stack of 3x3 convs, no skips or BatchNorm (--depth, default 20): vanishing gradients; "
            "--residual adds skips",
            "made for them: two stride-2 convs, 32x32 ends at 8x8",
            min_size=4,
            default_size=None,
            pretrained=False,
        ),
        ModelSpec(
            "alexnet",
            "AlexNet (2012): 5 convs starting with 11x11 at stride 4, then 3 large fully connected layers",
            "no small-input variant: inputs are upsampled to 63x63 at least",
            min_size=63,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "vgg11",
            "VGG-11 (2014): 8 stacked 3x3 convs in 5 max-pooled stages, 3 fully connected layers",
            "CIFAR head: global average pool and one Linear(512, classes) instead of the 4096-wide layers",
            min_size=32,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "vgg11_bn",
            "VGG-11 with BatchNorm after every conv",
            "CIFAR head: global average pool and one Linear(512, classes) instead of the 4096-wide layers",
            min_size=32,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "vgg16",
            "VGG-16 (2014): 13 stacked 3x3 convs in 5 max-pooled stages, 3 fully connected layers",
            "CIFAR head: global average pool and one Linear(512, classes) instead of the 4096-wide layers",
            min_size=32,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "vgg16_bn",
            "VGG-16 with BatchNorm after every conv",
            "CIFAR head: global average pool and one Linear(512, classes) instead of the 4096-wide layers",
            min_size=32,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "googlenet",
            "GoogLeNet / Inception v1 (2014): 9 Inception modules of parallel 1x1, 3x3, 5x5 convs and pooling",
            "first conv at stride 1 and no first max-pool: 32x32 reaches the last modules at 4x4",
            min_size=8,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "inception_v3",
            "Inception v3 (2015): Inception modules with factorised (1x7, 7x1) convs, made for 299x299",
            "no small-input variant: inputs are upsampled to 299x299",
            min_size=75,
            default_size=299,
            pretrained=True,
        ),
        ModelSpec(
            "resnet18",
            "ResNet-18 (2015): 8 basic residual blocks (two 3x3 convs around a skip connection)",
            "CIFAR stem: 3x3 stride-1 first conv and no max-pool: 32x32 reaches the last stage at 4x4",
            min_size=8,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "resnet34",
            "ResNet-34 (2015): 16 basic residual blocks (two 3x3 convs around a skip connection)",
            "CIFAR stem: 3x3 stride-1 first conv and no max-pool: 32x32 reaches the last stage at 4x4",
            min_size=8,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "resnet50",
            "ResNet-50 (2015): 16 bottleneck residual blocks (1x1, 3x3, 1x1 convs around a skip connection)",
            "CIFAR stem: 3x3 stride-1 first conv and no max-pool: 32x32 reaches the last stage at 4x4",
            min_size=8,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "mobilenet_v2",
            "MobileNetV2 (2018): inverted residual blocks of depthwise-separable convs",
            "first conv at stride 1 instead of 2: 32x32 reaches the last blocks at 2x2",
            min_size=16,
            default_size=None,
            pretrained=True,
        ),
        ModelSpec(
            "mobilenet_v3_small",
            "MobileNetV3-Small (2019): depthwise-separable blocks with squeeze-and-excitation and hard-swish",
            "first conv at stride 1 instead of 2: 32x32 reaches the last blocks at 2x2",
            min_size=16,
            default_size=None,
            pretrained=True,
        ),
    ]
}

# The nets with auxiliary heads, and the smallest side those run at (measured: inception_v3's needs a
# 17x17 map after Mixed_6e; googlenet's pool adaptively and run wherever googlenet does).
AUX_MIN_SIZE = {"googlenet": 8, "inception_v3": 299}


def model_names() -> list[str]:
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def input_size(name: str, data_size: int, requested: int | None = None) -> int:
    """The square side to feed `name`: `requested`, else its fixed size, else the data's side (at least min_size)."""
    spec = get_spec(name)
    if requested is not None:
        check_size(spec, requested)
        return requested
    if spec.default_size is not None:
        return spec.default_size
    return max(data_size, spec.min_size)


def check_size(spec: ModelSpec, side: int) -> None:
    if side > MAX_SIZE:
        raise ModelError(
            f"{side}x{side} inputs are too large: at most {MAX_SIZE}x{MAX_SIZE} (one {side}x{side} RGB image alone"
            f" is {3 * 4 * side * side / 1e9:.3g} GB in float32)"
        )
    if side < spec.min_size:
        raise ModelError(
            f"{spec.name} cannot take {side}x{side} inputs: the smallest it takes is {spec.min_size}x{spec.min_size}"
        )


def models_help() -> str:
    """The zoo as `mirante train --help` lists it: name, what it is, what it does at 32x32."""
    width = max(map(len, MODELS))
    lines = []
    for spec in MODELS.values():
        lines.append(f"  {spec.name:{width}}  {spec.summary}")
        lines.append(f"  {'':{width}}  small inputs: {spec.small_inputs}")
    return "\n".join(lines)
