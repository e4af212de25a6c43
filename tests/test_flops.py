"""Counts against torchvision's published metadata, the lecture's worked example, and `mirante profile`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tv

from engine import device, flops, profiler
from tests.procs import run_group

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIERS = tv.list_models(module=tv)  # every torchvision classifier, CNNs and transformers: 80 in 0.29


def published(name: str) -> tuple[int, float, int]:
    """(num_params, GMACs, crop size) from torchvision's weight metadata: no download needed."""
    weights = tv.get_model_weights(name).DEFAULT
    return weights.meta["num_params"], weights.meta["_ops"], weights.transforms().crop_size[0]


def test_every_classifier_is_listed():
    assert len(CLASSIFIERS) >= 80 and {"vit_b_16", "swin_v2_b", "regnet_y_128gf", "maxvit_t"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_counts_match_torchvision_metadata(name):
    """Parameters exact, MACs within the rounding of torchvision's `_ops` (3 decimals of GMACs)."""
    params, gmacs, crop = published(name)
    counts = profiler.count_by_name(name, (3, crop, crop), 1000)
    assert counts.params == params
    assert abs(counts.macs / 1e9 - gmacs) <= 0.0005, f"{name}: {counts.macs / 1e9:.4f} GMACs, published {gmacs}"
    assert counts.unknown == {} and counts.notes == []  # every op known, built on meta
    assert 2.5 <= counts.train_flops / counts.flops <= 3.5
    depth1 = [r for r in counts.rows if r.depth == 1]
    assert sum(r.own_params for r in counts.rows) == counts.params  # the rows add up to the totals
    assert sum(r.macs for r in depth1) == counts.macs
    assert sum(r.backward_macs for r in depth1) == counts.backward_macs
    for row in counts.rows:  # and a container holds its own work and its children's
        children = [r for r in counts.rows if r.depth == row.depth + 1 and r.name.startswith(row.name + ".")]
        assert row.macs == row.own_macs + sum(c.macs for c in children), row.name


def test_the_lectures_worked_example():
    """3x3 filters, 3 -> 128 channels, a 100x100x3 image ('same' padding, no biases).

    The slides say 1,638 weights and 16,380,000 multiplications for the conv (3x3x3x128 is 3,456),
    and 9 + 384 weights and 9,000 + 384,000 multiplications for the separable twin (the depthwise
    step has 3 filters of 3x3, 27 weights, and both steps run at 10,000 positions, not 1,000).
    """
    conv, twin = profiler.separable_twin(3, 128, 3)
    c, t = flops.count(conv, (3, 100, 100)), flops.count(twin, (3, 100, 100))
    assert (c.params, c.macs) == (3 * 3 * 3 * 128, 10_000 * 3_456) == (3_456, 34_560_000)
    depthwise, pointwise = (r for r in t.rows if r.leaf)
    assert (depthwise.params, depthwise.macs) == (27, 270_000)
    assert (pointwise.params, pointwise.macs) == (384, 3_840_000)
    assert (t.params, t.macs) == (411, 4_110_000)


def test_depthwise_backward_is_not_overcounted():
    """Ours: the backward of a depthwise conv inside a net is weight grad + input grad, each as many MACs as the
    forward. PyTorch's FlopCounterMode counts the weight gradient 'groups' times over."""
    from torch.utils.flop_counter import FlopCounterMode

    net = nn.Sequential(nn.Conv2d(64, 64, 1, bias=False), nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False))
    depthwise = flops.count(net, (64, 16, 16)).rows[1]
    assert depthwise.backward_macs == 2 * depthwise.macs == 2 * 16 * 16 * 64 * 9

    x = torch.randn(1, 64, 16, 16, requires_grad=True)  # alone, with both gradients, as inside the net
    with FlopCounterMode(display=False) as counter:
        net[1](x).sum().backward()
    their_backward = counter.get_total_flops() - depthwise.flops
    # input gradient counted right, weight gradient counted once per group: 64x over
    assert their_backward == depthwise.flops + 64 * depthwise.flops
    assert their_backward > 30 * depthwise.backward_flops


def test_first_layer_gets_no_input_gradient():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    c = flops.count(model, (3, 10, 10))
    first, _, second = c.rows
    assert first.backward_macs == first.macs  # the image needs no gradient: weights only
    assert second.backward_macs == 2 * second.macs


def test_frozen_parameters_are_counted_apart():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    c = flops.count(model, (4,))
    assert (c.params, c.trainable, c.frozen) == (30, 10, 20)
    assert c.rows[0].backward_macs == 0  # frozen weights and data input: nothing to compute


def test_timing_fills_every_leaf_row():
    counts = profiler.count_by_name("smallcnn", (3, 16, 16), 10)
    model = profiler.builder("smallcnn", (3, 16, 16), 10)()
    t = profiler.time_model(model, counts, batch=4, device=torch.device("cpu"), amp_dtype=None, iters=2, warmup=1)
    leaves = [r for r in counts.rows if r.leaf]
    assert all(r.fwd_ms is not None and r.fwd_ms >= 0 for r in leaves)
    assert all(r.bwd_ms is not None for r in leaves if r.type in ("Conv2d", "BatchNorm2d", "Linear"))
    assert t.step_ms > 0 and t.infer_ms > 0 and t.layers_ms > 0 and t.train_img_s > 0
    assert t.mfu(counts) is None  # no known peak for a CPU


def test_peak_table_matches_names():
    assert device.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert device.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert device.peak_tflops("NVIDIA L4", "bf16") == 121.0
    assert device.peak_tflops("NVIDIA L40S", "bf16") == 362.1
    assert device.peak_tflops("Some CPU", "fp32") is None
    assert device.mfu(1_000_000_000_000, 100.0, 200.0) == pytest.approx(0.5)
    assert [device.precision_name(device.PRECISIONS[n]) for n in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


def mirante(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """`mirante ARGS` in its own session; on a timeout its whole process group is killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run_group([sys.executable, "-m", "tui.cli", *args], cwd=cwd, timeout=timeout, env=env)


@pytest.fixture
def profile(capsys):
    """`mirante profile ARGS` in this process (torch is loaded once): exit code, stdout, stderr. One test below
    runs the real process."""
    from tui import cli

    def run(*args: str) -> subprocess.CompletedProcess:
        code = cli.main(["profile", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_profile_command_prints_resnet50_and_writes_the_same_rows(tmp_path):
    out = tmp_path / "r50.json"
    csv_out = tmp_path / "r50.csv"
    result = mirante("profile", "--model", "resnet50", "--json", str(out), "--csv", str(csv_out))
    assert result.returncode == 0, result.stderr
    assert "25,557,032 params" in result.stdout and "4.09 GMACs" in result.stdout
    assert "layer4" in result.stdout and "FLOPs = 2 x MACs" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["totals"]["params"] == 25_557_032 and doc["totals"]["macs"] == 4_089_184_256
    assert {r["name"] for r in doc["rows"]} >= {"conv1", "layer1.0.conv1", "fc"}
    assert len(csv_out.read_text().splitlines()) == len(doc["rows"]) + 1


def test_profile_compare_shows_the_lecture_numbers(profile):
    result = profile("--compare")
    assert result.returncode == 0, result.stderr
    assert "34,560,000" in result.stdout and "4,110,000" in result.stdout and "8.4x fewer" in result.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "alexnet", "--input", "3x32x32"], "smallest it takes is 63x63"),
        (["--model", "resnet18", "--input", "3by32"], "--input '3by32': give channels x height x width"),
        (["--model", "smallcnn", "--time", "--device", "cuda"], "no CUDA device"),
    ],
)
def test_profile_bad_input(profile, args, words):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is here")
    result = profile(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_profile_prints_torchvisions_figures_for_a_transformer_and_a_regnet(profile):
    vit = profile("--model", "vit_b_16")
    assert vit.returncode == 0, vit.stderr
    assert "86,567,656 params" in vit.stdout and "forward: 17.56 GMACs" in vit.stdout
    assert "not counted" not in vit.stdout and "note:" not in vit.stdout
    regnet = profile("--model", "regnet_y_400mf")
    assert regnet.returncode == 0, regnet.stderr
    assert "4,344,144 params" in regnet.stdout and "forward: 0.40 GMACs" in regnet.stdout


USER_MODELS = """
import torch
from torch import nn


class Decoder(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.up = nn.ConvTranspose2d(width, 4, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(self.conv(x))


class Tagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.emb = nn.Embedding(10, 8)

    def forward(self, image, tag):
        return self.conv(image).mean((2, 3)) + self.emb(tag).sum(1)


def spectral():
    return nn.Sequential(nn.Conv2d(1, 1, 1), Fft())


class Fft(nn.Module):
    def forward(self, x):
        return torch.fft.rfft2(x).abs()


class Broken(nn.Module):
    def __init__(self):
        raise RuntimeError("no weights here")
"""


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """mynets.py in the working directory, imported in this process: the directory, the path and the import
    undone after."""
    (tmp_path / "mynets.py").write_text(USER_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    return tmp_path


def test_profile_a_users_module_with_a_transposed_conv(user_models, profile):
    out = user_models / "decoder.json"
    result = profile("--model", "mynets:Decoder", "--kwargs", '{"width": 16}', "--input", "3x32x32", "--json", str(out))
    assert result.returncode == 0, result.stderr
    conv, up = 32 * 32 * 16 * 3 * 9, 32 * 32 * 16 * 4 * 16  # the upsampler: each of 32x32 input positions once
    doc = json.loads(out.read_text())
    assert doc["totals"]["macs"] == conv + up == 1_490_944
    assert {r["name"]: r["macs"] for r in doc["rows"]} == {"conv": conv, "up": up}
    assert "mynets:Decoder at 3x32x32: 1,476 params" in result.stdout and "1.49 MMACs" in result.stdout


def test_profile_a_users_module_with_two_inputs_and_time_it(user_models, profile):
    result = profile(
        "--model", "mynets:Tagged", "--input", "3x16x16", "--input", "5:long",
        "--time", "--device", "cpu", "--batch", "4", "--iters", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mynets:Tagged at 3x16x16 + 5 (int64)" in result.stdout
    assert f"forward: {14 * 14 * 8 * 27 / 1e3:.2f} kMACs" in result.stdout
    assert "training" in result.stdout and "img/s" in result.stdout


def test_profile_lists_an_op_it_cannot_count(user_models, profile):
    result = profile("--model", "mynets:spectral", "--input", "1x8x8")
    assert result.returncode == 0, result.stderr
    assert "not counted, no rule for: aten._fft_r2c x1 (first in '1')" in result.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "mynets:Nope"], "mynets has no Nope"),
        (["--model", "nomodule:Net"], "cannot import nomodule (ModuleNotFoundError"),
        (["--model", "mynets:Broken"], "mynets:Broken(**{}) failed: RuntimeError: no weights here"),
        (["--model", "mynets:Decoder", "--kwargs", "{width: 3}"], "--kwargs '{width: 3}': not JSON"),
        (["--model", "mynets:Decoder", "--kwargs", '{"depth": 3}'], "unexpected keyword argument 'depth'"),
        (["--model", "mynets:Tagged", "--input", "3x16x16"], "missing 1 required positional argument: 'tag'"),
        (["--model", "mynets:Tagged", "--input", "3x16x16", "--input", "5:complex"], "input dtype 'complex'"),
        (["--model", "resnet18", "--kwargs", '{"a": 1}'], "--kwargs is for your own model"),
        (["--model", "vit_b_16", "--input", "3x100x100"], "16x16 patches"),
    ],
)
def test_profile_a_users_module_bad_input(user_models, profile, args, words):
    result = profile(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
