"""The model zoo: every model trains at its min_size, small stems, channels, sizes, aux heads, vanishing gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models

from engine import models
from engine.models import MODELS, ModelError, build_model, get_spec, input_size, split_outputs

# Models whose min_size is their total stride rather than a crash: they run below it, but are refused there.
RUN_BELOW_MIN_SIZE = {"plainnet", "googlenet", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of 2 gain nothing from more threads, and OpenMP threads stall for seconds on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_step(model: nn.Module, x: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """One SGD step with cross-entropy on the logits and any aux logits; returns the logits."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    logits, aux = split_outputs(model(x))
    targets = torch.arange(x.shape[0]) % num_classes
    loss = F.cross_entropy(logits, targets) + sum(0.3 * F.cross_entropy(a, targets) for a in aux)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return logits


@pytest.mark.filterwarnings("error")  # googlenet and inception_v3 warn about their init unless told
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_at_its_min_size(name):
    torch.manual_seed(0)
    side = MODELS[name].min_size
    model = build_model(name, num_classes=10, image_size=side)
    assert not [n for n, _ in model.named_parameters() if "aux" in n.lower()], "aux heads exist while off"

    logits = train_step(model, torch.randn(2, 3, side, side))

    assert logits.shape == (2, 10)
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all(), param_name

    below = side - 1
    if name in RUN_BELOW_MIN_SIZE:
        with pytest.raises(ModelError, match=f"smallest it takes is {side}x{side}"):
            build_model(name, image_size=below)
    else:
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 3, below, below))


def test_resnet18_small_stem_reaches_layer4_at_4x4():
    model = build_model("resnet18", image_size=32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)

    shapes = []
    model.layer4.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(output.shape)))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert shapes == [(2, 512, 4, 4)]


def test_large_inputs_keep_the_imagenet_stem():
    model = build_model("resnet18", image_size=224)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_small_stems_of_vgg_mobilenet_googlenet():
    vgg = build_model("vgg11", image_size=32, num_classes=7)
    assert isinstance(vgg.classifier, nn.Linear) and vgg.classifier.in_features == 512
    assert vgg.classifier.out_features == 7
    assert build_model("mobilenet_v2", image_size=32).features[0][0].stride == (1, 1)
    assert build_model("mobilenet_v3_small", image_size=32).features[0][0].stride == (1, 1)
    googlenet = build_model("googlenet", image_size=32)
    assert googlenet.conv1.conv.stride == (1, 1) and isinstance(googlenet.maxpool1, nn.Identity)


@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "vgg11"])
def test_one_channel_inputs(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=10, image_size=32)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    assert train_step(model, torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_names_and_specs():
    assert models.model_names() == list(MODELS)
    assert {"smallcnn", "sepcnn", "plainnet", "alexnet", "googlenet", "inception_v3", "resnet50"} <= set(MODELS)
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.summary and "\n" not in spec.summary and "\n" not in spec.small_inputs
        assert spec.pretrained == (name not in ("smallcnn", "sepcnn", "plainnet"))

    with pytest.raises(ModelError) as error:
        get_spec("nope")
    assert "nope" in str(error.value)
    assert all(name in str(error.value) for name in MODELS)


def test_input_size():
    assert input_size("resnet18", 32) == 32
    assert input_size("resnet18", 4) == MODELS["resnet18"].min_size
    assert input_size("resnet18", 32, requested=64) == 64
    assert input_size("inception_v3", 32) == 299
    assert input_size("inception_v3", 32, requested=75) == 75
    assert input_size("alexnet", 32) == MODELS["alexnet"].min_size == 63
    assert input_size("alexnet", 100) == 100
    with pytest.raises(ModelError, match=r"resnet18 cannot take 4x4 inputs: the smallest it takes is 8x8"):
        input_size("resnet18", 32, requested=4)


def test_bad_requests_are_model_errors():
    with pytest.raises(ModelError, match="activation"):
        build_model("plainnet", activation="gelu")
    with pytest.raises(ModelError, match="no pretrained weights"):
        build_model("smallcnn", pretrained=True)
    with pytest.raises(ModelError, match="3-channel"):
        build_model("resnet18", pretrained=True, in_channels=1)
    with pytest.raises(ModelError, match="no auxiliary heads"):
        build_model("resnet18", aux_logits=True)
    with pytest.raises(ModelError, match="auxiliary heads need inputs of at least 299x299"):
        build_model("inception_v3", image_size=75, aux_logits=True)
    with pytest.raises(ModelError, match="15x15"):  # the ImageNet stem needs more than our small one
        build_model("googlenet", pretrained=True, image_size=8)
    with pytest.raises(ModelError, match="depth"):
        build_model("plainnet", depth=0)


@pytest.mark.parametrize("side", [MODELS["googlenet"].min_size, 32])
def test_googlenet_aux_heads_in_training_only(side):
    torch.manual_seed(0)
    model = build_model("googlenet", image_size=side, aux_logits=True)
    x = torch.randn(2, 3, side, side)
    model.train()
    logits, aux = split_outputs(model(x))
    assert logits.shape == (2, 10)
    assert [a.shape for a in aux] == [(2, 10), (2, 10)]
    sum(F.cross_entropy(out, torch.tensor([0, 1])) for out in [logits, *aux]).backward()
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if n.startswith(("aux1", "aux2")))

    model.eval()
    with torch.no_grad():
        logits, aux = split_outputs(model(x))
    assert logits.shape == (2, 10) and aux == []


def test_split_outputs_drops_missing_aux():
    logits = torch.zeros(2, 10)
    assert split_outputs(tv_models.InceptionOutputs(logits, None)) == (logits, [])
    out, aux = split_outputs(logits)
    assert out is logits and aux == []


def test_smallcnn_layers_and_sepcnn_savings():
    smallcnn = build_model("smallcnn")
    convs = [name for name, m in smallcnn.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert all(smallcnn.get_submodule(c).bias is None for c in convs)
    assert isinstance(smallcnn.fc, nn.Linear) and smallcnn.fc.in_features == 128

    sepcnn = build_model("sepcnn")
    pairs = [m for m in sepcnn.modules() if isinstance(m, nn.Conv2d)]
    assert len(pairs) == 10
    for depthwise, pointwise in zip(pairs[::2], pairs[1::2], strict=True):
        assert depthwise.kernel_size == (3, 3) and depthwise.groups == depthwise.in_channels
        assert pointwise.kernel_size == (1, 1) and pointwise.groups == 1
    conv_params = [
        sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d)) for net in (smallcnn, sepcnn)
    ]
    assert conv_params[1] * 6 < conv_params[0]  # the lecture's k*k*Cin*Cout vs k*k*Cin + Cin*Cout


def grad_ratio(activation: str) -> float:
    """Last conv's weight-gradient norm over the first conv's, after one backward pass at init."""
    torch.manual_seed(0)
    model = build_model("plainnet", activation=activation)  # depth 20: conv1 (stem) .. conv21
    loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    return (model.conv21.weight.grad.norm() / model.conv1.weight.grad.norm()).item()


def test_plainnet_sigmoid_gradients_vanish():
    # Seen (seeds 0-2): sigmoid 1.1e14-2.2e14, relu 8-22, tanh 0.4-0.5.
    sigmoid, relu = grad_ratio("sigmoid"), grad_ratio("relu")
    assert sigmoid > 1e6
    assert relu < 1e3
    assert sigmoid > 1e4 * relu


def test_plainnet_depth_and_stages():
    model = build_model("plainnet", depth=6, activation="tanh")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7
    assert [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 64, 64]
    assert [c.stride[0] for c in convs] == [1, 1, 1, 2, 1, 2, 1]
    assert all(isinstance(m, nn.Tanh) for name, m in model.named_children() if name.startswith("act"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_plainnet_init():
    fan = 16 * 3 * 3  # conv2: 16 -> 16 channels, 3x3
    for activation, std in [("relu", (2 / fan) ** 0.5), ("sigmoid", (2 / (fan + fan)) ** 0.5)]:  # Kaiming, Xavier
        torch.manual_seed(0)
        model = build_model("plainnet", activation=activation)
        assert model.conv2.weight.std().item() == pytest.approx(std, rel=0.1), activation
        assert all(not m.bias.any() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_pretrained_replaces_only_the_classifier(monkeypatch):
    # The real weights are a download; build the same nets without them to check what build_model changes.
    real_get_model = tv_models.get_model
    monkeypatch.setattr(tv_models, "get_model", lambda name, weights, **kw: real_get_model(name, weights=None, **kw))

    resnet = build_model("resnet18", pretrained=True, image_size=32, num_classes=10)
    assert resnet.conv1.kernel_size == (7, 7) and isinstance(resnet.maxpool, nn.MaxPool2d)
    assert resnet.fc.out_features == 10
    mobilenet = build_model("mobilenet_v3_small", pretrained=True, image_size=32, num_classes=5)
    assert mobilenet.features[0][0].stride == (2, 2)
    assert mobilenet.classifier[-1].out_features == 5
    assert build_model("resnet18", pretrained=True, num_classes=1000).fc.out_features == 1000


def test_plainnet_with_skip_connections_carries_the_gradient_to_the_first_layer():
    """The same 20 sigmoid layers with a skip around each conv of equal input and output shape: the first layer's
    gradient vanishes ten orders of magnitude less (the reason ResNet exists; the two stride-2 convs where the
    width changes have no skip); the layers keep their names, the forward stays finite."""
    plain = grad_ratio("sigmoid")
    torch.manual_seed(0)
    model = build_model("plainnet", activation="sigmoid", residual=True)
    assert [n for n, _ in model.named_children()] == [n for n, _ in build_model("plainnet").named_children()]
    logits = model(torch.randn(8, 3, 32, 32))
    F.cross_entropy(logits, torch.randint(0, 10, (8,))).backward()
    residual = (model.conv21.weight.grad.norm() / model.conv1.weight.grad.norm()).item()
    assert residual * 1e6 < plain and torch.isfinite(logits).all()  # seen: 9.7e3 against 1.1e14
    torch.manual_seed(0)
    relu = build_model("plainnet", activation="relu", residual=True)
    assert relu(torch.randn(8, 3, 32, 32)).abs().max() < 1e3  # 20 skips do not blow the activations up
    with pytest.raises(ModelError, match="residual"):
        build_model("smallcnn", residual=True)
