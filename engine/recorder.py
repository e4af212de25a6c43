"""`Recorder`: what a training step leaves for the monitor, gathered on the device and emitted in batches.

Shared by mirante's own loop (`engine.train`) and the `Monitor` API for users' loops. Per
step it keeps the loss (and correct count) as device tensors and the learning rate as a host
float: no kernel launch beyond the three of the correct count (argmax, compare, sum), no
copy. Every `log_every` steps it stacks them and starts one non-blocking copy. Every
`probe_every` steps (by default every step) it folds per-layer gradient norms into a device
ring, read back with the interval; every `update_every` steps it takes weight norms and
update/weight ratios; every `capture_every` steps it captures activation maps. Values reach
the store when their copy has finished (`probes.ReadBack`), so no step waits for the device
on the monitor's account.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import time
from typing import Any

import torch
from torch import Tensor, nn

from engine import capture as capture_mod
from engine import events as ev
from engine import probes
from engine.device import device_info
from engine.diagnostics import DEAD_SHARE_PREFIX, ZERO_SHARE_PREFIX
from engine.emit import Emitter

SYSTEM_EVERY_S = 5.0  # seconds between System events


def versions() -> dict[str, str]:
    """What a run records of the software that ran it."""
    try:
        mirante = importlib.metadata.version("mirante")
    except importlib.metadata.PackageNotFoundError:
        mirante = "unknown"
    return {"python": platform.python_version(), "torch": str(torch.__version__), "mirante": mirante}


class Recorder:
    def __init__(
        self,
        emitter: Emitter,
        model: nn.Module,
        device: torch.device,
        *,
        log_every: int = 10,
        probe_every: int = 1,
        update_every: int = 10,
        capture_every: int = 0,
        sample: Tensor | None = None,
        labels: list[int] | None = None,
        indices: list[int] | None = None,
        capture_budget: int = capture_mod.BUDGET,
        capture_layer: str | None = None,
        autocast: Any = None,
        train_flops: int | None = None,
        peak_tflops: float | None = None,
        dist: Any | None = None,
    ) -> None:
        self.out = emitter
        self.dist = dist  # engine.distributed.Dist under torchrun: rank 0 records, every rank joins the collectives
        self.main = dist is None or dist.is_main
        self.model = model
        self.device = device
        self.log_every = log_every
        self.probe_every = probe_every
        self.update_every = update_every
        self.capture_every = capture_every
        self._autocast = autocast  # a zero-argument factory of the training's autocast context
        self.train_flops = train_flops  # forward + backward FLOPs per sample, for TFLOP/s and MFU
        self.peak_tflops = peak_tflops
        # the ring holds one logging interval of gradient norms (taken early should an interval hold more)
        self.norms = probes.LayerNorms(model, rows=min(256, log_every // probe_every + 1))
        self._grad_steps: list[int] = []  # the step of each of the ring's rows
        self._updates: list[tuple[int, Tensor]] = []  # (step, [update norm, weight norm] on the device)
        self.readback = probes.ReadBack(device)
        self.capturer = (
            capture_mod.Capturer(
                model, sample, labels, indices, budget=capture_budget, whole=capture_layer, autocast=self._ctx
            )
            if sample is not None
            else None
        )
        # the interval being gathered: device tensors and host floats
        self._losses: list[Tensor] = []
        self._correct: list[Tensor] = []
        self._sizes: list[int] = []
        self._lrs: list[float] = []
        self._data_time = 0.0
        self._interval_start = time.perf_counter()
        self._last_system = 0.0
        self._last_cpu = 0.0
        # epoch totals, filled in as read-backs arrive
        self.epoch_loss = 0.0
        self.epoch_correct = 0.0
        self.epoch_seen = 0
        self.epoch_steps = 0

    @property
    def layers(self) -> tuple[str, ...]:
        return self.norms.names

    def is_probe_step(self, step: int) -> bool:
        """Whether the update that follows `step` steps taken gets per-layer gradient norms (on the recording rank)."""
        return self.main and bool(self.norms.params) and step % self.probe_every == 0  # no layers: nothing to probe

    def is_update_step(self, step: int) -> bool:
        """Whether the update that follows `step` steps taken gets weight norms and update/weight ratios."""
        return self.main and bool(self.norms.params) and step % self.update_every == 0

    def probe_grads(self, step: int, clip: float | None = None) -> None:
        """Per-layer gradient norms of the update that makes `step` steps: after backward (and unscaling), before
        the optimizer's step. With `clip`, the gradients are clipped to that total norm from the same norms."""
        if self.norms.full:
            self._submit_layers()
        self.norms.grads(clip)
        self._grad_steps.append(step)

    def snapshot(self) -> None:
        """The weights before the optimizer's step, on an update step (`probe_update` measures the change)."""
        self.norms.snapshot()

    def probe_update(self, step: int) -> None:
        """Weight norms and update/weight ratios once the weights have moved by one optimizer step."""
        self._updates.append((step, self.norms.update()))

    def record(
        self,
        step: int,
        loss: Tensor,
        lr: float,
        *,
        correct: Tensor | None = None,
        batch_size: int | None = None,
        data_time: float = 0.0,
    ) -> None:
        """Record the step just taken (`step` counts it); emits only at interval ends."""
        lr = float(lr)  # first: a value that cannot be kept leaves the interval's lists as they were
        self._losses.append(loss.detach())  # no copy, no conversion: converted once per interval
        if correct is not None:
            self._correct.append(correct.detach())
        self._sizes.append(batch_size or 0)
        self._lrs.append(lr)
        self._data_time += data_time
        if self.capture_every and step % self.capture_every == 0 and self.main:
            self.capture(step)
        if step % self.log_every == 0:
            self.flush(step)

    def start(
        self,
        step: int,
        *,
        name: str,
        model: str,
        dataset: str,
        config: dict[str, Any],
        summary: dict[str, Any],
        classes: tuple[str, ...] = (),
    ) -> None:
        """Emit the run's RunStarted: the one place its fields are made, for mirante's loop and the Monitor."""
        world = self.dist.world if self.dist is not None else 1
        self.out.emit(
            ev.RunStarted,
            step,
            name=name,
            model=model,
            dataset=dataset,
            config=config,
            model_summary=summary | {"layer_types": list(self.norms.types)},
            layers=self.layers,
            classes=classes,
            device=device_info(self.device) | ({"count": world} if world > 1 else {}),
            versions=versions(),
        )

    def flush(self, step: int, wait: bool = False) -> None:
        """End an interval: start copying its values, deliver the copies that have finished."""
        ranks = self._end_interval(step) if self._losses else None
        self._submit_layers()
        self.readback.ready(wait=wait)
        if self.main and time.monotonic() - self._last_system > SYSTEM_EVERY_S:
            self._emit_system(step, ranks)
        self.out.send()

    def _end_interval(self, step: int) -> list[list[float]] | None:
        """The interval's losses, correct counts and timing on their way to the host; its totals over the ranks
        under torchrun (their rows returned, for their memory)."""
        n = len(self._losses)
        seconds = time.perf_counter() - self._interval_start
        images, data_time, sizes = sum(self._sizes), self._data_time, self._sizes
        ranks = None
        if self.dist is not None:  # one host collective per interval: images, data time, memory
            ranks = self.dist.gather_host([images, data_time, *rank_memory(self.device)])
            images = int(sum(r[0] for r in ranks))
            data_time = sum(r[1] for r in ranks) / len(ranks)
            sizes = [size * self.dist.world for size in sizes]
        timing = self._timing(n, seconds, images, data_time)
        tensors = [torch.stack(self._losses).float()]
        if len(self._correct) == n:
            tensors.append(torch.stack(self._correct))
        if self.dist is not None:  # one device collective per interval: the global batch's mean loss, correct
            both = self.dist.sum_(torch.stack([tensors[0], *[t.float() for t in tensors[1:]]]))
            tensors = [both[0] / self.dist.world, *both[1:]]
        first, lrs = step - n + 1, self._lrs
        if self.main:
            self.readback.submit(tensors, lambda host: self._emit_steps(first, host, lrs, sizes, timing))
        self._losses, self._correct, self._sizes, self._lrs = [], [], [], []
        self._data_time = 0.0
        self._interval_start = time.perf_counter()
        return ranks

    def _timing(self, n: int, seconds: float, images: int, data_time: float) -> dict[str, float]:
        """Seconds per step and waiting for data; images/s, TFLOP/s and MFU when they can be known."""
        timing = {"time/step_s": seconds / n, "time/data_s": data_time / n}
        if images:
            timing["throughput/img_s"] = images / seconds
            if self.train_flops:
                timing["perf/tflops"] = images / seconds * self.train_flops / 1e12
                if self.peak_tflops:
                    timing["perf/mfu"] = timing["perf/tflops"] / self.peak_tflops
        return timing

    def _emit_system(self, step: int, ranks: list[list[float]] | None) -> None:
        """Memory and CPU use: this process's, and under torchrun each other rank's memory."""
        now = time.monotonic()
        metrics = system_metrics(self.device)
        cpu = time.process_time()
        if self._last_system:  # this process's CPU seconds per wall second, all threads: 100% = one core
            metrics["cpu/util_pct"] = 100 * (cpu - self._last_cpu) / (now - self._last_system)
        self._last_system, self._last_cpu = now, cpu
        self.out.emit(ev.System, step, rank=0, metrics=metrics)
        for rank, row in enumerate(ranks or []):
            if rank == 0:
                continue  # rank 0's own figures went out just above, with its utilisation
            others = {k: v for k, v in zip(RANK_MEMORY, row[2:], strict=True) if v == v}  # NaN: not measured
            self.out.emit(ev.System, step, rank=rank, metrics=others)

    def take_epoch(self) -> tuple[float | None, float | None]:
        """Mean train loss and accuracy over the steps delivered since the last call."""
        loss = self.epoch_loss / self.epoch_steps if self.epoch_steps else None
        acc = self.epoch_correct / self.epoch_seen if self.epoch_seen else None
        self.epoch_loss, self.epoch_correct, self.epoch_seen, self.epoch_steps = 0.0, 0.0, 0, 0
        return loss, acc

    def capture(self, step: int, whole: str | None = None) -> None:
        """Every layer's maps of the fixed images with the model's predictions and Grad-CAM, and the first layer's
        filters (rank 0 only): computed on the device, read back without waiting. The layer `whole` is kept whole
        this time (all its channels, full size)."""
        if not self.main:
            return
        captured = self.capturer.capture(whole) if self.capturer is not None else None
        filters = probes.first_filters(self.model)
        tensors: list[Tensor] = [filters.maps] if filters else []
        if captured is not None:
            tensors.append(captured.probs)
            tensors += [captured.cams] if captured.cams is not None else []
            for layer in captured.layers:
                tensors += [layer.q, layer.lo, layer.hi]
                tensors += [t for t in (layer.dead, layer.zero) if t is not None]
        if not tensors:
            return

        def deliver(host: list[Tensor]) -> None:
            values = iter(host)
            if filters:
                first = next(values)
                self.out.emit(ev.Filters, step, layer=filters.layer, shape=tuple(first.shape), data=_f16(first))
            if captured is not None:
                self._emit_capture(step, captured, values)

        self.readback.submit(tensors, deliver)

    def _emit_capture(self, step: int, captured: capture_mod.Captured, host: Any) -> None:
        """Capture, then each layer's Maps, then the dead-ReLU shares of the convs, from the host copies in the
        order `capture` submitted them."""
        probs = next(host)
        cams = next(host) if captured.cams is not None else None
        capturer = self.capturer
        self.out.emit(
            ev.Capture,
            step,
            images=capturer.indices,
            labels=capturer.labels if capturer.labels is not None else [-1] * len(probs),
            probs=probs.numpy().reshape(-1),
            layers=[layer.layer for layer in captured.layers],
            budget=capturer.budget,
            cam_layer=captured.cam_layer,
            cam_shape=tuple(cams.shape) if cams is not None else (),
            cam=cams.numpy().tobytes() if cams is not None else b"",
        )
        shares: dict[str, float] = {}
        for layer in captured.layers:
            q, lo, hi = next(host), next(host), next(host)
            dead = next(host) if layer.dead is not None else None
            zero = next(host) if layer.zero is not None else None
            self.out.emit(
                ev.Maps,
                step,
                layer=layer.layer,
                shape=tuple(q.shape),
                channels=layer.channels,
                size=layer.size,
                block=layer.block,
                lo=lo.numpy(),
                hi=hi.numpy(),
                data=q.contiguous().numpy().tobytes(),
                dead=dead.to(torch.uint8).numpy().tobytes() if dead is not None else b"",
            )
            if zero is not None and dead is not None:
                share = float(dead.float().mean())
                shares |= {f"{ZERO_SHARE_PREFIX}{layer.layer}": float(zero), f"{DEAD_SHARE_PREFIX}{layer.layer}": share}
        if shares:
            self.out.emit(ev.Step, step, scalars=shares)

    def _ctx(self) -> Any:
        return self._autocast() if self._autocast is not None else torch.autocast(self.device.type, enabled=False)

    def _emit_steps(self, first: int, host: list[Tensor], lrs: list[float], sizes: list[int], timing: dict) -> None:
        losses = host[0].tolist()
        correct = host[1].tolist() if len(host) > 1 else None
        for i, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
            scalars = {"train/loss": loss, "lr": lr}
            if correct is not None and sizes[i]:
                scalars["train/acc"] = correct[i] / sizes[i]
            if i == len(losses) - 1:
                scalars |= timing
            self.out.emit(ev.Step, first + i, scalars=scalars)
        self.epoch_loss += sum(losses)
        self.epoch_steps += len(losses)
        if correct is not None:
            self.epoch_correct += sum(correct)
            self.epoch_seen += sum(sizes)

    def _submit_layers(self) -> None:
        """Start copying the interval's per-layer norms: the ring's rows and the update probes, one read-back."""
        taken = self.norms.take()
        steps, self._grad_steps = self._grad_steps, []
        updates, self._updates = self._updates, []
        if taken is None and not updates:
            return
        tensors = ([taken[0]] if taken else []) + [u for _, u in updates]
        missing = taken[1] if taken else []
        update_steps = [step for step, _ in updates]
        self.readback.submit(tensors, lambda host: self._emit_layer_stats(steps, missing, update_steps, host))

    def _emit_layer_stats(
        self, steps: list[int], missing: list[tuple[int, ...]], update_steps: list[int], host: list[Tensor]
    ) -> None:
        """One LayerStats per probed step, in step order: its gradient norms (NaN for layers without a gradient),
        and on update steps the weight norms and update/weight ratios."""
        grads: dict[int, list[float]] = {}
        if steps:
            for step, row, gone in zip(steps, host[0].tolist(), missing, strict=True):
                for i in gone:
                    row[i] = math.nan
                grads[step] = row
        moved: dict[int, tuple[list[float], list[float]]] = {}
        for step, values in zip(update_steps, host[1 if steps else 0 :], strict=True):
            update, weight = values.tolist()
            ratio = [u / w if w else (math.nan if u == 0 else math.inf) for u, w in zip(update, weight, strict=True)]
            moved[step] = weight, ratio
        for step in sorted(grads.keys() | moved.keys()):
            weight, ratio = moved.get(step, ((), ()))
            self.out.emit(ev.LayerStats, step, grad_norm=grads.get(step, ()), weight_norm=weight, update_ratio=ratio)


def _f16(values: Tensor) -> bytes:
    return values.contiguous().numpy().tobytes()


RANK_MEMORY = ("cpu/rss_gb", "gpu/allocated_gb", "gpu/reserved_gb", "gpu/peak_gb")


def rank_memory(device: torch.device) -> list[float]:
    """This process's figures of RANK_MEMORY (NaN where there is none), to gather at rank 0."""
    metrics = system_metrics(device, utilisation=False)
    return [metrics.get(name, float("nan")) for name in RANK_MEMORY]


def system_metrics(device: torch.device, utilisation: bool = True) -> dict[str, float]:
    """Memory figures the allocator keeps on the host: reading them costs no device sync."""
    metrics: dict[str, float] = {}
    try:
        with open("/proc/self/statm") as f:
            metrics["cpu/rss_gb"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        pass
    if device.type == "cuda":
        metrics["gpu/allocated_gb"] = torch.cuda.memory_allocated(device) / 2**30
        metrics["gpu/reserved_gb"] = torch.cuda.memory_reserved(device) / 2**30
        metrics["gpu/peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        try:
            if utilisation:
                metrics["gpu/util_pct"] = float(torch.cuda.utilization(device))  # NVML's counter: no device sync
        except Exception:  # pynvml missing, or no NVML on this machine
            pass
    return metrics
