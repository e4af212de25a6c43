"""MACs of one ATen op, forward and backward: the rules `engine.flops` counts a model with.

A rule sees an op as the dispatcher runs it (below `F.linear`, `einsum`, `matmul` and
`nn.MultiheadAttention`, which all come down to the ops here) and returns its forward MACs
and the MACs its backward will cost. The backward follows the inputs that need a gradient:
each operand that requires one costs as many MACs again as the forward (the gradient of a
product with respect to one factor is a product of the same size). So a frozen weight costs
no weight gradient, the data going into the first layer no input gradient, and a grouped or
depthwise convolution's weight gradient is counted once, not `groups` times.

Ops without multiply-accumulates (element-wise, views, reductions, norms, pools, copies) cost
none by the convention torchvision's published figures use; `kind` tells them apart from ops
no rule covers, which the profile lists by name so that nothing is left out silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from typing import Any

import torch

aten = torch.ops.aten
Rule = Callable[[Sequence[Any], Any], tuple[int, int]]


def _needs_grad(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def _product(macs: int, *operands: Any) -> tuple[int, int]:
    """A product of operands: its backward computes one product of the same size per operand needing a gradient."""
    return macs, macs * sum(_needs_grad(t) for t in operands)


def mm(args: Sequence[Any], out: Any) -> tuple[int, int]:
    a, b = args[0], args[1]
    return _product(a.shape[0] * a.shape[1] * b.shape[1], a, b)


def addmm(args: Sequence[Any], out: Any) -> tuple[int, int]:
    return mm(args[1:], out)


def bmm(args: Sequence[Any], out: Any) -> tuple[int, int]:
    a, b = args[0], args[1]
    return _product(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2], a, b)


def baddbmm(args: Sequence[Any], out: Any) -> tuple[int, int]:
    return bmm(args[1:], out)


def mv(args: Sequence[Any], out: Any) -> tuple[int, int]:
    a, v = args[0], args[1]
    return _product(a.shape[0] * a.shape[1], a, v)


def addmv(args: Sequence[Any], out: Any) -> tuple[int, int]:
    return mv(args[1:], out)


def dot(args: Sequence[Any], out: Any) -> tuple[int, int]:
    return _product(args[0].numel(), args[0], args[1])


def convolution(args: Sequence[Any], out: Any) -> tuple[int, int]:
    """aten.convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups).

    The weight is (out, in / groups, *kernel), transposed (in, out / groups, *kernel); each
    output position of a convolution, each input position of a transposed one, takes one
    product of the kernel with every channel pair of its group.
    """
    x, w, transposed = args[0], args[1], args[6]
    positions = prod((x if transposed else out).shape[2:])
    return _product(x.shape[0] * positions * w.shape[0] * w.shape[1] * prod(w.shape[2:]), x, w)


def attention(args: Sequence[Any], out: Any) -> tuple[int, int]:
    """The fused scaled-dot-product attentions: q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev).

    Forward: scores q k^T and the weighted sum of v. Backward: the gradient of v, and, when q or
    k needs one, the gradient of the scores, then q's and k's each.
    """
    q, k, v = args[0], args[1], args[2]
    *batch, queries, width = q.shape
    keys, v_width = k.shape[-2], v.shape[-1]
    scores = prod(batch) * queries * keys * width
    weighted = prod(batch) * queries * keys * v_width
    backward = weighted * _needs_grad(v) + scores * (_needs_grad(q) + _needs_grad(k))
    if _needs_grad(q) or _needs_grad(k):
        backward += weighted
    return scores + weighted, backward


def trilinear(args: Sequence[Any], out: Any) -> tuple[int, int]:
    """aten._trilinear (nn.Bilinear): every term of the broadcast product of its three operands."""
    operands, expands = args[:3], args[3:6]
    shapes = []
    for t, dims in zip(operands, expands, strict=True):
        shape = list(t.shape)
        for d in sorted(dims):
            shape.insert(d, 1)
        shapes.append(shape)
    return _product(prod(max(sizes) for sizes in zip(*shapes, strict=True)), *operands)


RULES: dict[Any, Rule] = {
    aten.mm: mm,
    aten.addmm: addmm,
    aten.bmm: bmm,
    aten.baddbmm: baddbmm,
    aten.mv: mv,
    aten.addmv: addmv,
    aten.dot: dot,
    aten.vdot: dot,
    aten.convolution: convolution,
    aten._convolution: convolution,
    aten._trilinear: trilinear,
    aten._scaled_dot_product_flash_attention: attention,
    aten._scaled_dot_product_flash_attention_for_cpu: attention,
    aten._scaled_dot_product_efficient_attention: attention,
    aten._scaled_dot_product_cudnn_attention: attention,
}
"""Rules by op (overload packet): the products a model's MACs are made of."""

NO_MACS = {
    # creation, copies, layout and indexing
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full", "scalar_tensor", "arange", "linspace",
    "lift_fresh", "lift_fresh_copy", "clone", "copy", "copy_", "_to_copy", "to", "contiguous", "detach", "cat",
    "stack", "roll", "flip", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "index", "index_put",
    "index_put_", "_index_put_impl_", "index_select", "gather", "scatter", "scatter_add", "slice_scatter",
    "select_scatter", "masked_fill", "masked_fill_", "fill", "fill_", "zero_", "repeat", "tril", "triu",
    "_unsafe_view", "as_strided", "as_strided_", "_local_scalar_dense", "set_", "resize_", "randn", "rand",
    "randint", "normal_", "uniform_", "bernoulli",
    "bernoulli_", "native_dropout", "embedding", "_unsafe_index", "im2col", "col2im",
    # normalisation, pooling, softmax, resampling: arithmetic, but no products of two operands
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "native_layer_norm", "native_group_norm", "_fused_rms_norm",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool2d", "avg_pool3d", "_adaptive_avg_pool2d",
    "_adaptive_avg_pool3d", "adaptive_max_pool2d", "_softmax", "_log_softmax", "_safe_softmax",
    "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa",
    "_upsample_nearest_exact2d", "grid_sampler_2d", "linalg_vector_norm", "cumsum", "topk", "sort", "argsort",
    # activations torch does not tag pointwise
    "hardswish", "hardsigmoid", "hardtanh", "silu", "mish", "elu", "leaky_relu", "softplus", "_prelu_kernel",
    "log_sigmoid_forward", "glu",
}  # fmt: skip
"""Ops (by name, as in aten.NAME) that do no multiply-accumulates, besides views and those tagged so:"""
NO_MACS_TAGS = {torch.Tag.pointwise, torch.Tag.reduction}


def kind(func: Any) -> str:
    """'macs' (a rule counts it), 'none' (known to do no MACs) or 'unknown' (neither: listed by the profile)."""
    packet = getattr(func, "overloadpacket", func)
    if packet in RULES:
        return "macs"
    name = packet.__name__.split(".")[-1]
    functional = getattr(aten, name.removesuffix("_"), None) if name.endswith("_") else None  # relu_ as relu
    for op in (func, getattr(functional, "default", None)):
        if op is not None and (
            getattr(op, "is_view", False) or {torch.Tag.pointwise, torch.Tag.reduction} & set(op.tags)
        ):
            return "none"
    return "none" if name in NO_MACS or name.removesuffix("_") in NO_MACS else "unknown"


def count(func: Any, args: Sequence[Any], out: Any) -> tuple[int, int]:
    """(forward MACs, backward MACs) of one call of `func`, (0, 0) if no rule covers it."""
    rule = RULES.get(getattr(func, "overloadpacket", func))
    return rule(args, out) if rule is not None else (0, 0)
