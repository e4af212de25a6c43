"""A user's own training loop, as the README shows it with a Monitor: one step of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def monitored_step(mon, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y) -> torch.Tensor:
    """Forward, loss, backward, `mon.step` (with the logits, for accuracy and the class count), update."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    mon.step(loss, logits=logits, targets=y)
    optimizer.step()
    return loss
