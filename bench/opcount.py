"""ATen ops per training step: the bare step, what each of mirante's probes adds, and the data path.

    python bench/opcount.py [--models smallcnn resnet18 resnet50] [--size 32] [--batch 2]

Counted on the CPU with a `TorchDispatchMode`, which sees every ATen op a step dispatches. On
CUDA each op that computes is at least one kernel launch, and in the launch-bound regime
(ResNet-18 at 32x32 on an H100/H200) every launch shows in the step time, so these counts
are the cost model of monitoring that needs no GPU to check. Views and allocations
(`view`, `t`, `detach`, `empty`, ...) launch nothing: they are counted apart.

The test suite bounds the probes' counts (tests/test_opcount.py), so a change that makes
monitoring cost more launches fails there, on any machine.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from engine import models, probes  # noqa: E402

FREE = {"empty", "empty_strided", "empty_like", "lift_fresh"}  # no kernel: allocation only


class Ops(TorchDispatchMode):
    """Counts the ATen ops dispatched while it is active: `launching` (compute) and `free` (views, allocations)."""

    def __init__(self) -> None:
        super().__init__()
        self.launching: Counter[str] = Counter()
        self.free: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        (self.free if func.is_view or name in FREE else self.launching)[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def count(self) -> int:
        return sum(self.launching.values())


def counted(fn: Callable[[], Any]) -> Ops:
    with Ops() as ops:
        fn()
    return ops


class Step:
    """One model, optimizer and batch on the CPU: the bare training step and the probes around it."""

    def __init__(self, model: str, size: int = 32, batch: int = 2, momentum: float = 0.9) -> None:
        torch.manual_seed(0)
        self.model = models.build_model(model, num_classes=10, image_size=size)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.01, momentum=momentum, weight_decay=5e-4)
        self.x = torch.randn(batch, 3, size, size)
        self.y = torch.randint(0, 10, (batch,))
        self.norms = probes.LayerNorms(self.model)

    def forward_backward(self) -> None:
        loss = F.cross_entropy(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def bare(self) -> None:
        self.forward_backward()
        self.optimizer.step()

    def probe_costs(self, steps: int = 3) -> dict[str, int]:
        """Launching ops of the bare step and of each probe (after warm-up steps, as in a run)."""
        for _ in range(steps):  # optimizer state, the probe's buffers and index patterns exist from here on
            self.forward_backward()
            self.norms.grads()
            self.norms.snapshot()
            self.optimizer.step()
            self.norms.update()
            self.norms.take()
        bare = counted(self.bare).count
        self.forward_backward()
        grads = counted(self.norms.grads).count
        snapshot = counted(self.norms.snapshot).count
        self.optimizer.step()
        update = counted(self.norms.update).count
        return {"bare step": bare, "gradient norms": grads, "update ratio": snapshot + update}


def data_path_ops(batch: int = 32, batches: int = 4) -> float:
    """Launching ops per batch of the built-in shapes data, with its random crops and flips, on the CPU."""
    from engine.data import build_data

    data = build_data("shapes", batch_size=batch, device=torch.device("cpu"), shapes_count=batch * (batches + 2))
    iterator = data.train_batches(0)
    next(iterator)  # the epoch's plan is made once, before the first batch: not a per-batch cost
    with Ops() as ops:
        for _ in range(batches):
            next(iterator)
    return ops.count / batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smallcnn", "resnet18", "resnet50"])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    print(f"torch {torch.__version__}; ops counted on the CPU (launching ops: not views or allocations)")
    print("| model | bare step | + gradient norms | + update ratio | layers | parameter tensors |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        step = Step(name, args.size, args.batch)
        costs = step.probe_costs()
        print(
            f"| {name} | {costs['bare step']} | {costs['gradient norms']} | {costs['update ratio']} "
            f"| {len(step.norms.names)} | {len(step.norms.params)} |"
        )
    print(f"data path (shapes, crops and flips): {data_path_ops():.1f} launching ops per batch")


if __name__ == "__main__":
    main()
