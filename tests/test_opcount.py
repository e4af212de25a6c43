"""Issue 14: what monitoring costs, in ATen ops per step (each a kernel launch on CUDA), counted on the CPU.

The bounds are the regression test of the probes' cost that needs no GPU: the ring of per-layer gradient norms
costs a few ops a step whatever the number of layers, where the old probe cloned every parameter (88 ops a
resnet18 step)."""

from __future__ import annotations

import pytest

from bench.opcount import Step, data_path_ops

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model", ["smallcnn", "resnet18"])
def test_per_layer_gradient_norms_cost_a_few_ops_whatever_the_layer_count(model):
    step = Step(model, size=32, batch=2)
    costs = step.probe_costs()
    assert len(step.norms.params) >= 15  # resnet18: 62 parameter tensors in 41 layers
    assert costs["gradient norms"] <= 8, costs
    assert costs["update ratio"] <= 12, costs
    assert costs["bare step"] > 10 * costs["gradient norms"], costs  # the count sees the whole step


def test_the_data_path_costs_a_bounded_number_of_ops_per_batch():
    per_batch = data_path_ops(batch=8, batches=3)
    assert 0 < per_batch <= 11, per_batch  # 14 before the index ranges were kept from batch to batch
