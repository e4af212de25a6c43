"""Runs launched by torchrun: one process per device, DistributedDataParallel, rank 0 records.

`Dist.from_env()` is None in a plain process. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK
and a rendezvous in the environment) it joins the process group: NCCL on GPUs, gloo on
CPUs, plus a small gloo group for host-side control figures, so that agreeing on a stop or
gathering each rank's memory needs no device sync even when training runs on NCCL.

The collectives mirante adds are per logging interval, never per step: `gather_host` (a few
host floats from every rank, and whether any rank wants to stop) and `sum_` (the interval's
losses and correct counts, on the device, without waiting). Everything else is
DistributedDataParallel's.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

FAILED_KEY = "mirante/failed"  # in torchrun's store: which rank failed, and why
PID_KEY = "mirante/pid/{rank}"  # host:pid of each rank, to name one that vanished


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    backend: str
    control: Any  # a gloo process group for host-side collectives

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str, timeout_s: float = 120.0) -> Dist | None:
        """Join torchrun's process group, or None when not launched by torchrun."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        timeout = dt.timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, timeout=timeout)
        control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
        out = cls(rank, world, local_rank, backend, control)
        out.store().set(PID_KEY.format(rank=rank), f"{socket.gethostname()}:{os.getpid()}")
        return out

    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def store(self) -> Any:
        return dist.distributed_c10d._get_default_store()

    def gather_host(self, values: list[float]) -> list[list[float]]:
        """Every rank's `values` (the same length on all), on the host: one gloo all-gather."""
        mine = torch.tensor(values, dtype=torch.float64)
        rows = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(rows, mine, group=self.control)
        return [r.tolist() for r in rows]

    def any_(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (every rank calls this at the same point): one gloo all-gather."""
        return any(row[0] for row in self.gather_host([float(flag)]))

    def sum_(self, tensor: Tensor) -> Tensor:
        """Add `tensor` up over the ranks in place, on its device; no host wait on NCCL."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def note_failure(self, reason: str) -> None:
        """Tell rank 0 why this rank is going down (best effort: the store may be gone too)."""
        try:
            self.store().set(FAILED_KEY, f"rank {self.rank}: {reason}")
        except Exception:
            pass

    def failure(self) -> str | None:
        """Why the run failed, as a rank that knows said, or which local rank vanished; None if unknown."""
        store = self.store()
        try:
            if store.check([FAILED_KEY]):
                return store.get(FAILED_KEY).decode()
        except Exception:
            return None
        here = socket.gethostname()
        for rank in range(self.world):
            try:
                host, pid = store.get(PID_KEY.format(rank=rank)).decode().rsplit(":", 1)
            except Exception:
                continue
            if host == here and not _alive(int(pid)):
                return f"rank {rank} (pid {pid}) died"
        return None

    def close(self) -> None:
        """Leave the process group together: every rank that ends normally waits here for the others first. A rank
        that tore its gloo group down while rank 0 was still taking its last capture and checkpoint aborted at exit
        ("terminate called without an active exception", twice in a fresh-clone run of the suite)."""
        try:
            dist.barrier(group=self.control)
        except Exception:
            pass
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped by torchrun) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True
