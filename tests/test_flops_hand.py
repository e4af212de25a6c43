"""Counts of small modules against counts by hand: every product a model computes, however it is called."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import flops


def test_a_transposed_conv_counts_each_input_position_once():
    """A 4x4 stride-2 upsampler, 16 -> 8 channels, 32x32 -> 64x64: each of the 32x32 input positions
    multiplies its 16 channels by 8 x 4 x 4 weights. Counting over the output positions instead is
    stride^2 = 4x too high."""
    up = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1))
    c = flops.count(up, (3, 32, 32))
    conv, deconv = c.rows
    assert deconv.out_shape == (8, 64, 64)
    assert deconv.macs == 32 * 32 * 16 * 8 * 4 * 4 == 2_097_152
    assert deconv.backward_macs == 2 * deconv.macs  # weight and input gradients
    assert conv.macs == 32 * 32 * 16 * 3 * 3 * 3
    assert c.flops == 2 * (conv.macs + deconv.macs)
    assert c.train_flops == 2 * (conv.macs + deconv.macs) + 2 * (conv.macs + 2 * deconv.macs)


def test_grouped_transposed_conv():
    deconv = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=4, bias=False)
    c = flops.count(deconv, (8, 5, 5))
    assert c.macs == 5 * 5 * 8 * (8 // 4) * 2 * 2 == 1_600
    assert c.backward_macs == 1_600  # the data: no input gradient


class FunctionalConv(nn.Module):
    """A conv written with F.conv2d on a parameter, then a matrix product with F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(32, 3, 3, 3))
        self.head = nn.Parameter(torch.randn(10, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.weight, padding=1))
        return F.linear(x.mean((2, 3)), self.head)


def test_functional_compute_counts_under_the_module_that_ran_it():
    c = flops.count(FunctionalConv(), (3, 32, 32))
    conv, linear = 32 * 32 * 32 * 3 * 3 * 3, 32 * 10
    assert c.macs == conv + linear == 885_056
    assert c.backward_macs == conv + 2 * linear  # conv: weight gradient only (the data); linear: both
    (top,) = c.rows
    assert (top.name, top.params, top.macs, top.own_macs) == (flops.TOP, 32 * 27 + 320, conv + linear, conv + linear)


class Attention(nn.Module):
    """A conv net with a single-head matmul attention block over its 8x8 positions."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, stride=4, padding=1)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # (N, 64 positions, dim)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(-1)
        mixed = torch.einsum("nij,njd->nid", weights, v)
        return self.out(mixed.mean(1))


def test_a_matmul_attention_block():
    c = flops.count(Attention(), (3, 32, 32))
    stem = 8 * 8 * 16 * 3 * 3 * 3
    qkv = 64 * 16 * 48
    scores = weighted = 64 * 64 * 16
    out = 16 * 10
    assert c.macs == stem + qkv + scores + weighted + out == 208_032
    rows = {r.name: r for r in c.rows}
    assert rows[flops.TOP].macs == scores + weighted  # the matmul and einsum in the model's own forward
    assert rows["qkv"].macs == qkv and rows["stem"].macs == stem
    # backward: the stem's input is data; every other product needs both gradients
    assert c.backward_macs == stem + 2 * (qkv + scores + weighted + out)


def test_multihead_attention():
    """nn.MultiheadAttention, 64 wide, 4 heads, over 10 tokens: in projection, scores, weighted sum, out
    projection; what its F.multi_head_attention_forward does with its own weights counts under it."""
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.zeros(1, 10, 64)
    c = flops.count(mha, inputs=(x, x, x))
    in_proj, scores, weighted, out_proj = 10 * 64 * 192, 4 * 10 * 10 * 16, 4 * 10 * 10 * 16, 10 * 64 * 64
    assert c.macs == in_proj + scores + weighted + out_proj == 176_640
    assert c.backward_macs == in_proj + 2 * (scores + weighted + out_proj)  # the tokens are data
    assert c.inputs == ["10x64"] * 3
    assert c.unknown == {}


def test_scaled_dot_product_attention_fused_or_not():
    """F.scaled_dot_product_attention: decomposed on meta, a fused kernel on the CPU; the count is the same."""

    class SDPA(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(32, 96)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.proj(x).view(x.shape[0], x.shape[1], 3, 2, 16).permute(2, 0, 3, 1, 4)
            return F.scaled_dot_product_attention(q, k, v)

    expected = 20 * 32 * 96 + 2 * (2 * 20 * 20 * 16)
    cpu = flops.count(SDPA(), (20, 32))
    with torch.device("meta"):
        meta = flops.count(SDPA(), (20, 32))
    assert cpu.macs == meta.macs == expected
    assert cpu.backward_macs == meta.backward_macs == 20 * 32 * 96 + 2 * 2 * (2 * 20 * 20 * 16)


def test_a_shared_module_called_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(torch.relu(self.block(x)))

    c = flops.count(Twice(), (8,))
    (block,) = c.rows
    assert (block.calls, block.macs, c.params) == (2, 2 * 64, 72)
    assert c.backward_macs == 64 + 2 * 64  # the first call's input is data


def test_a_frozen_layer_in_the_middle():
    """Frozen weights cost no weight gradient, but the gradient still flows through to the layer below."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1))
    net[1].requires_grad_(False)
    c = flops.count(net, (3, 6, 6))
    first, frozen, last = c.rows
    assert (first.macs, frozen.macs, last.macs) == (36 * 8 * 27, 36 * 8 * 72, 36 * 4 * 8)
    assert first.backward_macs == first.macs  # weights only: the data needs no gradient
    assert frozen.backward_macs == frozen.macs  # input gradient only
    assert last.backward_macs == 2 * last.macs
    assert c.train_flops == 2 * (c.macs + first.macs + frozen.macs + 2 * last.macs)


def test_an_op_without_a_rule_is_listed_not_dropped():
    class Spectral(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft2(self.conv(x)).abs()

    c = flops.count(Spectral(), (1, 8, 8))
    assert c.macs == 64
    assert list(c.unknown) == ["aten._fft_r2c"] and c.unknown["aten._fft_r2c"] == (1, flops.TOP)


def test_example_inputs_a_tuple_or_a_dict_divided_by_the_batch():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image = nn.Linear(12, 4)
            self.meta = nn.Embedding(5, 4)

        def forward(self, image: torch.Tensor, tag: torch.Tensor) -> torch.Tensor:
            return self.image(image) + self.meta(tag)

    model = TwoInputs()
    image, tag = torch.zeros(8, 12), torch.zeros(8, dtype=torch.long)
    by_tuple = flops.count(model, inputs=(image, tag))
    by_dict = flops.count(model, inputs={"image": image, "tag": tag})
    assert by_tuple.macs == by_dict.macs == 12 * 4  # per sample: the batch of 8 divided out
    assert by_tuple.inputs == ["12", "scalar (int64)"]
    assert flops.count(nn.Linear(12, 4), inputs=torch.zeros(8, 12)).macs == 48  # a tensor: the one argument


def test_a_model_that_reads_a_value_is_counted_on_the_cpu():
    """A constructor or forward that needs values (`.item()`, `.tolist()`) cannot run on meta tensors."""

    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.scale = float(torch.ones(1).sum().item())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * y.abs().max().item()

    c = flops.count_build(Reads, (3, 10, 10))
    assert c.macs == 8 * 8 * 4 * 27
    assert len(c.notes) == 1 and c.notes[0].startswith("built and run on the CPU")


def test_a_constructor_that_computes_builds_with_meta_parameters():
    """torchvision's RegNets call .tolist() while building: only their parameters go to meta."""

    class Widths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = (torch.arange(1, 4) * 8).tolist()
            self.convs = nn.Sequential(*(nn.Conv2d(a, b, 1) for a, b in zip([3, *widths], widths, strict=False)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.convs(x)

    model, note = flops.build_for_count(Widths)
    assert note is None and all(p.is_meta for p in model.parameters())
    c = flops.count_build(Widths, (3, 4, 4))
    assert c.macs == 16 * (3 * 8 + 8 * 16 + 16 * 24) and c.notes == []
