"""Probes: per-layer norms are right, captures are right, and nothing waits for the device per step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import models, probes
from engine.catalog import MODELS

pytestmark = pytest.mark.usefixtures("one_thread")


def layer_norm(module: nn.Module, what) -> float:
    return math.sqrt(sum(float(what(p).norm()) ** 2 for p in module.parameters(recurse=False)))


def grad_norms(norms: probes.LayerNorms) -> list[float]:
    """The ring's one row, taken: the per-layer gradient norms of the step probed."""
    rows, missing = norms.take()
    assert rows.shape[0] == 1 and len(missing) == 1
    return rows[0].tolist()


def test_layer_norms_match_a_per_module_computation():
    torch.manual_seed(0)
    model = models.build_model("smallcnn", image_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    norms = probes.LayerNorms(model)
    assert norms.names[:2] == ("conv1", "bn1") and norms.names[-1] == "fc"
    for _ in range(2):  # the second step: the optimizer has momentum, the probe's buffers exist
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        modules = dict(model.named_modules())
        expected_grad = [layer_norm(modules[n], lambda p: p.grad) for n in norms.names]
        before = {n: [p.detach().clone() for p in modules[n].parameters(recurse=False)] for n in norms.names}
        norms.grads()
        norms.snapshot()
        opt.step()
        update, weight = norms.update().tolist()
        assert grad_norms(norms) == pytest.approx(expected_grad, rel=1e-5)
        for i, name in enumerate(norms.names):
            params = list(modules[name].parameters(recurse=False))
            w = math.sqrt(sum(float(p.detach().norm()) ** 2 for p in params))
            d = math.sqrt(sum(float((p.detach() - b).norm()) ** 2 for p, b in zip(params, before[name], strict=True)))
            assert weight[i] == pytest.approx(w, rel=1e-5)
            assert update[i] == pytest.approx(d, rel=1e-4)


def test_layers_without_gradients_are_said_missing():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    norms = probes.LayerNorms(model)
    model[1](torch.randn(2, 3)).sum().backward()  # the first layer gets no gradient
    norms.grads()
    rows, missing = norms.take()
    assert missing == [(0,)] and rows[0, 1] > 0


def test_the_ring_holds_one_row_per_step_until_taken():
    model = nn.Sequential(nn.Linear(3, 2))
    norms = probes.LayerNorms(model, rows=3)
    for scale in (1.0, 2.0, 3.0):
        model.zero_grad()
        (scale * model(torch.ones(1, 3)).sum()).backward()
        norms.grads()
    assert norms.full
    with pytest.raises(RuntimeError, match="take"):
        norms.grads()
    rows, _ = norms.take()
    assert rows[:, 0].tolist() == pytest.approx([k * rows[0, 0].item() for k in (1, 2, 3)], rel=1e-5)
    assert norms.take() is None and not norms.full
    norms.grads()
    assert norms.take()[0][0, 0].item() == pytest.approx(3 * rows[0, 0].item(), rel=1e-5)  # the row was emptied


def test_clipping_from_the_probe_equals_clip_grad_norm():
    torch.manual_seed(0)
    model = models.build_model("smallcnn", image_size=16)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    copies = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
    for copy, p in zip(copies, model.parameters(), strict=True):
        copy.grad = p.grad.clone()
    total = nn.utils.clip_grad_norm_(copies, 0.1)
    norms = probes.LayerNorms(model)
    norms.grads(clip=0.1)
    for p, q in zip(model.parameters(), copies, strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-8)
    assert math.sqrt(sum(v * v for v in grad_norms(norms))) == pytest.approx(total.item(), rel=1e-5)  # before


@pytest.mark.parametrize("name", list(MODELS))
def test_every_zoo_model_gets_a_gradient_norm_for_every_layer(name):
    torch.manual_seed(0)
    size = MODELS[name].min_size
    model = models.build_model(name, num_classes=10, image_size=size)
    norms = probes.LayerNorms(model)
    logits, aux = models.split_outputs(model(torch.randn(2, 3, size, size)))
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    norms.grads()
    norms.snapshot()
    _, weight = norms.update().tolist()
    grad = grad_norms(norms)
    assert len(grad) == len(norms.names) == len(probes.parameterised_layers(model)) > 0
    assert all(math.isfinite(g) and g >= 0 for g in grad), [
        n for n, g in zip(norms.names, grad, strict=True) if not g >= 0
    ]
    assert all(w > 0 for w in weight)


def test_first_filters():
    model = models.build_model("smallcnn")
    f = probes.first_filters(model)
    assert f.layer == "conv1" and f.maps.shape == (32, 3, 3, 3) and f.maps.dtype == torch.float16


def test_readback_delivers_in_order_only_when_asked():
    rb = probes.ReadBack(torch.device("cpu"))
    got = []
    rb.submit([torch.tensor([1.0])], lambda h: got.append(h[0].tolist()))
    rb.submit([torch.tensor([2.0])], lambda h: got.append(h[0].tolist()))
    assert got == []
    rb.ready()
    assert got == [[1.0], [2.0]]
