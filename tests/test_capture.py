"""Captures of every layer: which layers, what fits the budget, quantisation, and the truth of what is stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import capture, models, train
from engine import events as ev
from engine.config import TrainConfig
from engine.store import RunReader

pytestmark = pytest.mark.usefixtures("one_thread")


def model(name: str, **kw) -> nn.Module:
    return models.build_model(name, num_classes=10, in_channels=3, image_size=32, **kw)


def test_every_conv_and_every_block_is_captured_in_the_models_order():
    names = [n for n, _ in capture.map_layers(model("smallcnn"))]
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    resnet = [n for n, _ in capture.map_layers(model("resnet18"))]
    assert resnet[:4] == ["conv1", "layer1.0", "layer1.0.conv1", "layer1.0.conv2"]
    assert "layer2.0.downsample.0" in resnet and "layer4.1" in resnet
    assert "layer1" not in resnet  # a plain Sequential of blocks is not a block
    googlenet = [n for n, _ in capture.map_layers(model("googlenet"))]
    assert "inception3a" in googlenet and "inception3a.branch2.1.conv" in googlenet
    assert "conv1" not in googlenet and "conv1.conv" in googlenet  # BasicConv2d holds one conv: not a block


def test_fit_caps_channels_then_halves_the_costliest_layer_until_the_budget_holds():
    shapes = {"a": (32, 32, 32), "b": (2048, 2, 2), "c": (64, 8, 8)}
    roomy = capture.fit(shapes, 10, 10**9)
    assert roomy == {"a": capture.Kept(32, 32, 32), "b": capture.Kept(64, 2, 2), "c": capture.Kept(64, 8, 8)}
    tight = capture.fit(shapes, 10, 200_000)
    assert sum(k.bytes(10) for k in tight.values()) <= 200_000
    assert tight["a"].height < 32 and tight["b"] == roomy["b"]  # the costliest shrank, the small one did not
    floor = capture.fit(shapes, 10, 1)  # cannot fit: everything at its floor, over budget
    assert all(max(k.height, k.width) <= capture.MIN_SIDE and k.channels == capture.MIN_CHANNELS
               for k in floor.values())  # fmt: skip
    whole = capture.fit(shapes, 10, 1, whole="b")
    assert whole["b"] == capture.Kept(2048, 2, 2) and list(whole) == ["a", "b", "c"]


def test_quantise_keeps_each_value_within_half_a_step_of_its_channel():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5) * torch.tensor([1.0, 100.0, 0.0, 1e-3]).view(1, -1, 1, 1)
    x[0, 3, 0, 0] = float("nan")
    q, lo, hi = capture.quantise(x)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    back = lo.view(1, -1, 1, 1) + q.float() / 255 * (hi - lo).view(1, -1, 1, 1)
    step = ((hi - lo) / 255).view(1, -1, 1, 1)
    good = torch.tensor([True, True, True, False]).view(1, -1, 1, 1).expand_as(x)
    assert ((back - x).abs() <= step / 2 + 1e-6)[good].all()
    assert (back[:, 2] == 0).all()  # a constant channel is exact
    assert torch.isnan(lo[3]) and not torch.isnan(lo[:3]).any()  # a channel with a NaN says so


def tiny_run(tmp_path, **overrides) -> TrainConfig:
    values = dict(model="plainnet", activation="relu", depth=2, dataset="shapes", steps=4, batch_size=16,
                  runs_dir=str(tmp_path / "runs"), name="cap", log_every=2, capture_every=0, device="cpu",
                  capture_kb=100_000)  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values).validate()


def stored(path, step: int | None = None) -> tuple[ev.Capture, dict[str, ev.Maps]]:
    with RunReader(path) as run:
        events = run.follow(0, limit=None)
    captures = [e for e in events if isinstance(e, ev.Capture)]
    last = captures[-1] if step is None else next(c for c in captures if c.step == step)
    maps = {e.layer: e for e in events if isinstance(e, ev.Maps) and e.step == last.step}
    return last, maps


def values(maps: ev.Maps) -> torch.Tensor:
    q = torch.frombuffer(bytearray(maps.data), dtype=torch.uint8).reshape(maps.shape).float()
    lo, hi = torch.tensor(maps.lo).view(1, -1, 1, 1), torch.tensor(maps.hi).view(1, -1, 1, 1)
    return lo + q / 255 * (hi - lo)


def half_step(maps: ev.Maps) -> torch.Tensor:
    return ((torch.tensor(maps.hi) - torch.tensor(maps.lo)) / 510).view(1, -1, 1, 1)


def assert_conv_matches(conv: nn.Conv2d, before: torch.Tensor, before_err: torch.Tensor, after: ev.Maps) -> None:
    """The stored output of `conv` is conv(before) within the quantisation error of both (a bound, not a guess)."""
    with torch.no_grad():
        _assert_conv_matches(conv, before, before_err, after)


def _assert_conv_matches(conv: nn.Conv2d, before: torch.Tensor, before_err: torch.Tensor, after: ev.Maps) -> None:
    recomputed = F.conv2d(before, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    bound = F.conv2d(before_err.expand_as(before), conv.weight.abs(), None, conv.stride, conv.padding,
                     conv.dilation, conv.groups) + half_step(after) + 1e-4  # fmt: skip
    got = values(after)
    assert got.shape == recomputed.shape
    assert ((got - recomputed).abs() <= bound).all(), float((got - recomputed).abs().max())
    assert float((got - recomputed).abs().max()) < 0.02 * float(recomputed.abs().max())


@pytest.mark.usefixtures("small_shapes")
def test_truth_a_captured_conv_is_the_layers_real_output_even_under_an_inplace_relu(tmp_path):
    """plainnet's convs are each followed by an in-place ReLU, which overwrites a conv's output unless the capture
    copies it first: conv1 recomputed from the stored input, conv2 from ReLU of conv1's stored maps."""
    config = tiny_run(tmp_path)
    assert train.run(config) == 0
    path = tmp_path / "runs" / "cap.mirante"
    captured, maps = stored(path)
    assert list(captured.layers) == ["input", "conv1", "conv2", "conv3"]
    net = model("plainnet", activation="relu", depth=2)
    net.load_state_dict(train.load_checkpoint(tmp_path / "runs" / "cap.ckpt" / "last.pt", torch.device("cpu"))["model"])
    assert isinstance(net.act1, nn.ReLU) and net.act1.inplace
    image = values(maps["input"])
    assert_conv_matches(net.conv1, image, half_step(maps["input"]), maps["conv1"])
    assert (values(maps["conv1"]) < 0).any()  # before the ReLU: an overwritten capture would hold no negatives
    assert_conv_matches(net.conv2, values(maps["conv1"]).clamp(min=0), half_step(maps["conv1"]), maps["conv2"])


@pytest.mark.usefixtures("small_shapes")
def test_a_capture_holds_one_image_per_class_with_the_models_probabilities_and_gradcam(tmp_path):
    assert train.run(tiny_run(tmp_path, model="smallcnn")) == 0
    path = tmp_path / "runs" / "cap.mirante"
    captured, maps = stored(path)
    with RunReader(path) as run:
        started = run.started()
    assert len(started.classes) == 10 and started.classes[0] == "circle"
    assert sorted(captured.labels) == list(range(10))  # one image of each class
    probs = np.asarray(captured.probs).reshape(10, 10)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert captured.cam_layer == "conv5" and captured.cam_shape == (2, 10, 32, 32)
    cams = np.frombuffer(captured.cam, dtype=np.uint8).reshape(captured.cam_shape)
    assert all(m.max() in (0, 255) for m in cams.reshape(20, -1))  # each scaled to its own maximum
    assert maps["conv4"].shape == (10, 64, 16, 16) and maps["conv4"].channels == 64
    assert len(maps["conv4"].dead) == 64 and set(maps["conv4"].dead) <= {0, 1}
    assert maps["input"].shape == (10, 3, 32, 32)


def test_a_deep_model_fits_the_default_budget_and_says_what_it_kept():
    net = model("resnet50").eval()
    images = torch.randn(4, 3, 32, 32)
    capturer = capture.Capturer(net, images, [0, 1, 2, 3], budget=64 * 1024, gradcam=False)
    got = capturer.capture()
    by_name = {layer.layer: layer for layer in got.layers}
    wide = by_name["layer4.2.conv3"]
    assert wide.channels == 2048 and wide.q.shape[1] <= capture.MAX_CHANNELS
    assert wide.dead is not None and wide.dead.shape == (2048,)
    kept = sum(layer.q.numel() + 8 * layer.q.shape[1] for layer in got.layers if layer.layer != "input")
    assert kept <= 64 * 1024


@pytest.mark.parametrize("name", ["vgg11", "smallcnn", "resnet18"])
def test_a_captured_first_conv_equals_conv2d_despite_an_inplace_relu(name):
    torch.manual_seed(0)
    net = model(name)
    x = torch.randn(2, 3, 32, 32)
    got = capture.Capturer(net, x, budget=10**9, gradcam=False).capture()
    first = got.layers[1]
    conv = dict(net.named_modules())[first.layer]
    expected = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    back = first.lo.view(1, -1, 1, 1) + first.q.float() / 255 * (first.hi - first.lo).view(1, -1, 1, 1)
    assert back.shape == expected.shape
    step = ((first.hi - first.lo) / 255).view(1, -1, 1, 1)
    assert ((back - expected).abs() <= step / 2 + 1e-5).all()
    assert (back < 0).any()  # a ReLU that ran in place would have left no negative values
    assert net.training  # the capture pass put the model back in training mode


def test_the_relu_after_a_conv_says_its_dead_channels_and_zero_share():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3), nn.ReLU())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        net[2].bias[:2] = -1e3  # two of its four channels can never fire
    first, second = capture.Capturer(net, x, gradcam=False).capture().layers[1:]
    assert 0.3 < float(first.zero) < 0.7 and not first.dead.any()  # random weights: about half the outputs zero
    pre = F.conv2d(F.relu(F.conv2d(x, net[0].weight, net[0].bias, padding=1)), net[2].weight, net[2].bias)
    assert float(second.zero) == pytest.approx(float((pre <= 0).float().mean()))
    assert second.dead.tolist() == [True, True] + [bool((pre[:, k] <= 0).all()) for k in (2, 3)]


@pytest.mark.usefixtures("small_shapes")
def test_capture_layer_keeps_that_layer_whole_in_that_capture(tmp_path):
    """`c` on the Activations screen sends "capture LAYER": the trainer's capture keeps that layer whole, once."""
    from engine import control
    from engine.emit import Emitter
    from engine.store import RunWriter

    assert control.is_command("capture conv2") and control.is_command("capture")
    assert not control.is_command("capture a b") and not control.is_command("capture ") and not control.is_command("x")
    config = tiny_run(tmp_path, model="smallcnn", capture_kb=64, steps=2)
    s = train.setup(config)
    trainer = train.Trainer(s, Emitter(RunWriter(tmp_path / "whole.mirante")), name="whole")
    trainer.start()
    trainer.rec.capture(0)  # a capture at the budget
    trainer.act("capture conv2")
    trainer.rec.flush(0, wait=True)
    trainer.out.close()
    with RunReader(tmp_path / "whole.mirante") as run:
        conv2 = [e for e in run.follow(0, limit=None) if isinstance(e, ev.Maps) and e.layer == "conv2"]
    assert len(conv2) == 2 and conv2[0].shape[1:] != (32, 32, 32)  # the budget's capture, pooled or cut
    assert conv2[1].shape == (10, 32, 32, 32)  # the one asked for: whole
