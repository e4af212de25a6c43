"""`Monitor`: mirante for your own training loop: the same events and store, the same no-sync rule.

    with Monitor(model, optimizer, run="my-run", batch_size=64) as mon:
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss.backward()
                mon.step(loss, logits=logits, targets=y)  # after backward(), before or after optimizer.step()
                optimizer.step()
            mon.epoch(val_loss=..., val_acc=...)

`mon.step` keeps the loss on the device and reads it back with others every `log_every`
steps; per-layer gradient norms are taken every `probe_every` steps (by default every step:
four device ops, no sync). The update/weight ratio of every `update_every`-th step is
measured at the next `step()` call, as the change of the weights between the two calls: one
optimizer step, whichever side of `optimizer.step()` you call it on.

Every call is checked before anything of it is kept (by shapes, dtypes and devices: host
metadata, no sync): a misuse raises one line at the call, the step is not counted, and the
run goes on. The loss may be a tensor of one value or a Python number. After `close()` a
call raises; a script that never calls `close()` has its run ended at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine import events as ev
from engine import flops
from engine.capture import MAX_IMAGES
from engine.checks import LiveChecks
from engine.diagnostics import VERSION, Diagnostics, Settings
from engine.emit import Emitter
from engine.names import check_name, store_path
from engine.recorder import Recorder
from engine.store import SUFFIX, RunWriter


class Monitor:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        run: str | Path = "run",
        runs_dir: str | Path = "runs",
        dataset: str = "custom",
        config: dict[str, Any] | None = None,
        batch_size: int | None = None,
        input_shape: tuple[int, int, int] | None = None,
        example_inputs: Any = None,
        sample: Tensor | None = None,
        sample_labels: Any = None,
        classes: Any = None,
        log_every: int = 10,
        probe_every: int = 1,
        update_every: int = 10,
        capture_every: int = 0,
        live: Any | None = None,
        peak_tflops: float | None = None,
        num_classes: int | None = None,
    ) -> None:
        """Start recording to `runs_dir/run.mirante` (or to `run` itself if it ends in .mirante).

        `input_shape` (C, H, W) adds parameter and MAC counts, and with `batch_size` TFLOP/s and,
        given the device's `peak_tflops`, MFU; `example_inputs` does the same for a model that takes
        more than an image: a batch of what it takes (a tensor, a tuple of positional arguments or a
        dict of keyword arguments), counted per sample; `sample` (a few inputs, [N, C, H, W], N <= 10)
        enables captures of every conv layer's maps every `capture_every` steps (0: at each `epoch()`, as
        `--capture-every 0` means in `mirante train`), with Grad-CAM for the true class when `sample_labels`
        (N class indices) says it; `classes` names the classes; `live` is a queue for the app.
        The lecture's checks run on what is recorded (they warn; they never stop your loop): the
        optimizer's settings are read from `optimizer`, and the class count for the initial-loss
        check from `num_classes` or the first `logits` passed to `step`.
        """
        path = _store_path(run, runs_dir)
        self.name = path.name.removesuffix(SUFFIX)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, not {type(optimizer).__name__}")
        first = next(model.parameters(), None)
        if first is None:  # nothing to train, count or probe, and no device to keep the loss on
            raise ValueError(f"model {type(model).__name__} has no parameters: Monitor records the training of one")
        self.device = device = first.device
        log_every, probe_every = _count(log_every, "log_every"), _count(probe_every, "probe_every")
        update_every = _count(update_every, "update_every")
        capture_every = _count(capture_every, "capture_every", least=0)
        if batch_size is not None:
            batch_size = _count(batch_size, "batch_size")
        if num_classes is not None:
            num_classes = _count(num_classes, "num_classes")
        if peak_tflops is not None and not _number(peak_tflops, "peak_tflops") > 0:
            raise ValueError(f"peak_tflops must be a positive number, not {peak_tflops!r}")
        if not isinstance(dataset, str):
            raise TypeError(f"dataset must be a str, not {type(dataset).__name__}")
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a dict, not {type(config).__name__}")
        summary: dict[str, Any] = {"peak_tflops": peak_tflops}
        counts = None
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else ()
            if len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
                raise ValueError(f"input_shape must be (channels, height, width), not {input_shape!r}")
            counts = _fits(lambda: flops.count(model, shape), f"input_shape {shape}")
        elif example_inputs is not None:
            counts = _fits(lambda: flops.count(model, inputs=example_inputs), "example_inputs")
        if counts is not None:
            summary |= counts.summary()
        else:
            summary["params"] = sum(p.numel() for p in model.parameters())
        if sample is not None:
            if not isinstance(sample, Tensor) or sample.dim() != 4 or not 1 <= sample.shape[0] <= MAX_IMAGES:
                what = tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
                raise ValueError(f"sample must be 1 to {MAX_IMAGES} inputs of shape [N, C, H, W], not {what}")
            if sample.device != device:
                raise ValueError(f"sample is on {sample.device}, the model on {device}")
            _fits(lambda: _forward(model, sample), f"sample of shape {tuple(sample.shape)}")
        labels = _labels(sample_labels, sample)
        names = tuple(str(c) for c in classes) if classes is not None else ()
        self.model = model
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.steps = 0
        self.epochs = 0
        self._epoch_start = 0  # self.steps at the last epoch()
        self.closed = False
        self._probed_step: int | None = None  # a probe waiting for the weights to move
        writer = RunWriter(path)  # all checked: from here on a store exists
        try:
            self.out = Emitter(writer, live)
            self.checks = LiveChecks(self.out, Diagnostics(Settings(on_divergence="warn")))  # warn: never stop a loop
            self.rec = Recorder(
                self.out,
                model,
                device,
                log_every=log_every,
                probe_every=probe_every,
                update_every=update_every,
                capture_every=capture_every,
                sample=sample,
                labels=labels,
            )
            if counts is not None:
                self.rec.train_flops, self.rec.peak_tflops = counts.train_flops, peak_tflops
            known = optimizer_config(optimizer) | ({"num_classes": num_classes} if num_classes else {})
            known["diagnostics"] = VERSION  # the checks run live, here
            self.rec.start(
                0,
                name=self.name,
                model=type(model).__name__,
                dataset=dataset,
                config=known | dict(config or {}),
                summary=summary,
                classes=names,
            )
        except BaseException:  # a run that never started leaves no store behind to block its name
            with contextlib.suppress(Exception):
                writer.close()
            path.unlink(missing_ok=True)
            raise
        # A script that ends without close() still ends its run. atexit runs handlers last-in first-out,
        # so this one, registered after the writer's own, delivers what is pending and RunEnded first.
        atexit.register(self._at_exit)

    def step(
        self,
        loss: Tensor,
        *,
        logits: Tensor | None = None,
        targets: Tensor | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Record one optimizer step. Call after `loss.backward()`; never waits for the device.

        Every argument is checked before anything is kept: a bad call raises (one line), the
        step is not counted, and the run goes on as if the call had not been made.
        """
        self._check_open("step")
        loss = self._loss(loss)
        if lr is not None:
            lr = _number(lr, "lr", on_host=True)
        elif self.optimizer is not None:
            lr = _number(self.optimizer.param_groups[0]["lr"], "the optimizer's lr (pass lr=)", on_host=True)
        else:
            lr = float("nan")
        if batch_size is not None:
            batch_size = _count(batch_size, "batch_size")
        _check_logits(logits, targets)
        # all checked: from here on the step is kept
        if self._probed_step is not None:  # the weights have moved by one optimizer step since the snapshot
            self.rec.probe_update(self._probed_step)
            self._probed_step = None
        if self.rec.is_probe_step(self.steps):
            self.rec.probe_grads(self.steps + 1)
        if self.rec.is_update_step(self.steps):
            self.rec.snapshot()
            self._probed_step = self.steps + 1
        correct = None
        if self.steps == 0 and logits is not None:
            self.checks.learn(num_classes=logits.shape[1])  # a shape: host metadata, no sync
        if logits is not None and targets is not None:
            labels = targets.argmax(dim=1) if targets.dim() == 2 else targets  # soft labels: their top class
            correct = self._on_device((logits.detach().argmax(dim=1) == labels).sum(), "logits")
        size = batch_size or self.batch_size or (len(targets) if targets is not None else None)
        self.steps += 1
        self.rec.record(self.steps, loss, lr, correct=correct, batch_size=size)

    def _check_open(self, call: str) -> None:
        if self.closed:
            raise RuntimeError(f"Monitor of run {self.name!r} is closed: {call}() after close() records nothing")

    def _on_device(self, value: Tensor, what: str) -> Tensor:
        """`value` on the monitor's device: copied without waiting, or refused where the copy would wait."""
        if value.device == self.device:
            return value
        if self.device.type == "cpu":
            raise ValueError(
                f"{what} is on {value.device}, the model on cpu: copying it back would wait for the device"
            )
        return value.to(self.device, non_blocking=True)

    def _loss(self, loss: Any) -> Tensor:
        """`loss` as a 0-d float tensor on the monitor's device; checked by shape, dtype and device only (no sync).

        A Python number becomes a tensor by a fill kernel (no copy); a tensor on another device
        is copied without waiting, or refused where that copy would wait (accelerator to CPU).
        """
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"loss must hold one value, not a tensor of shape {tuple(loss.shape)} (reduce it first)"
                )
            if loss.dtype == torch.bool or loss.is_complex():
                raise TypeError(f"loss must be a real number, not a {loss.dtype} tensor")
            return self._on_device(loss.detach().reshape(()).float(), "loss")
        if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
            raise TypeError(f"loss must be a tensor or a number, not {type(loss).__name__}")
        return torch.full((), float(loss), dtype=torch.float32, device=self.device)

    def epoch(
        self,
        *,
        train_loss: float | None = None,
        train_acc: float | None = None,
        val_loss: float | None = None,
        val_acc: float | None = None,
        **scalars: float,
    ) -> None:
        """Close an epoch. Train loss/accuracy default to the means of the steps since the last epoch.

        Each value is a number or a tensor of one value (read back here: once per epoch). All are
        checked before anything is kept; an epoch needs at least one `step()` since the last one.
        """
        self._check_open("epoch")
        named = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}
        values = {k: None if v is None else _number(v, k) for k, v in named.items()}
        extra = {k: _number(v, k) for k, v in scalars.items() if v is not None}
        if self.steps == self._epoch_start:
            raise RuntimeError(f"epoch() with no step() since {'the last epoch' if self.epochs else 'the start'}")
        # all checked: from here on the epoch is kept
        if self.rec.capture_every == 0 and self.rec.capturer is not None:  # 0: at epoch ends, as in mirante train
            self.rec.capture(self.steps)
        self.rec.flush(self.steps, wait=True)
        mean_loss, mean_acc = self.rec.take_epoch()
        self.epochs += 1
        self._epoch_start = self.steps
        self.out.emit(
            ev.Epoch,
            self.steps,
            epoch=self.epochs,
            train_loss=values["train_loss"] if train_loss is not None else mean_loss,
            train_acc=values["train_acc"] if train_acc is not None else mean_acc,
            val_loss=values["val_loss"],
            val_acc=values["val_acc"],
            scalars=extra,
        )

    def close(self, status: str = "finished", reason: str = "") -> None:
        """Deliver what is pending, end the run with `status` (finished, failed or interrupted), close the store."""
        if status not in ev.RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(ev.RUN_STATUSES)}, not {status!r}")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self._at_exit)
        if self._probed_step is not None:
            self.rec.probe_update(self._probed_step)
        self.rec.flush(self.steps, wait=True)
        self.checks.finish(self.steps)
        self.out.emit(ev.RunEnded, self.steps, status=status, reason=reason)
        self.out.close()

    def _at_exit(self) -> None:
        """At interpreter exit, unclosed: finished, or failed/interrupted if the script died of an exception."""
        if self.closed:
            return
        # the exception that ended a script (sys.last_value is set only when it was not caught);
        # in an interactive session it may be an old one, long handled
        died = None if hasattr(sys, "ps1") else getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        try:
            self.close(*_ending(type(died), died) if died is not None else ("finished",))
        except Exception as exc:  # atexit would print a traceback; one line says it
            line = (str(exc).splitlines() or [""])[0]
            print(f"mirante: error: run {self.name!r} not ended at exit: {type(exc).__name__}: {line}", file=sys.stderr)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        self.close(*_ending(kind, exc) if kind is not None else ("finished",))


def _ending(kind: type, exc: BaseException | None) -> tuple[str, str]:
    """The RunEnded status and reason of a run ended by an exception of type `kind`."""
    if issubclass(kind, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt"
    return "failed", (f"{kind.__name__}: {exc}".splitlines() or [kind.__name__])[0]


def optimizer_config(optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """The optimizer's name and first parameter group's settings, as mirante's own config names them."""
    if optimizer is None or not optimizer.param_groups:
        return {}
    group = optimizer.param_groups[0]
    out: dict[str, Any] = {"optimizer": type(optimizer).__name__.lower()}
    for key in ("lr", "momentum", "weight_decay", "nesterov"):
        value = group.get(key)
        if isinstance(value, (int, float, bool)):
            out[key] = value
    return out


def _number(value: Any, what: str, *, on_host: bool = False) -> float:
    """`value` as a float, if it is one number: a Python or NumPy number, or a tensor of one value.

    `on_host`: on a step, a tensor must be on the CPU, where reading it costs no device sync.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must be one number, not a tensor of shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{what} must be a real number, not a {value.dtype} tensor")
        if on_host and value.device.type != "cpu":
            raise ValueError(f"{what} on {value.device} would make every step wait for the device: pass a float")
        return float(value.item())  # a CPU tensor: no device sync; per epoch otherwise
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    return float(value)


def _store_path(run: Any, runs_dir: Any) -> Path:
    """`runs_dir/run.mirante`, or `run` itself when it ends in .mirante; the run's name checked either way."""
    if not isinstance(run, (str, os.PathLike)) or not isinstance(runs_dir, (str, os.PathLike)):
        raise TypeError(f"run and runs_dir must be str or paths, not {type(run).__name__}, {type(runs_dir).__name__}")
    if str(run).endswith(SUFFIX):
        path = Path(run)
        check_name(path.name.removesuffix(SUFFIX))
        return path
    return store_path(runs_dir, str(run))


def _fits(call: Callable[[], Any], what: str) -> Any:
    """`call()`, whose failure means `what` does not fit the model: one line saying so."""
    try:
        return call()
    except Exception as exc:
        line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{what} does not fit the model: {line}") from None


def _forward(model: nn.Module, sample: Tensor) -> None:
    """One eval-mode forward pass of `sample`, as a capture makes; the model's mode is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)


def _labels(labels: Any, sample: Tensor | None) -> list[int] | None:
    """`sample_labels` as a list of class indices, one per sample image (None: not given)."""
    if labels is None:
        return None
    if sample is None:
        raise ValueError("sample_labels needs a sample")
    values = labels.tolist() if isinstance(labels, Tensor) else labels  # a few labels, once, at the start
    if not isinstance(values, (list, tuple)) or len(values) != sample.shape[0]:
        raise ValueError(f"sample_labels must hold one class index per sample image ({sample.shape[0]})")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError("sample_labels must be class indices (whole numbers >= 0)")
    return [int(v) for v in values]


def _count(value: Any, what: str, least: int = 1) -> int:
    """`value` if it is a whole number >= `least`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be a whole number, not {type(value).__name__}")
    if value < least:
        raise ValueError(f"{what} must be at least {least}, not {value}")
    return int(value)


def _check_logits(logits: Any, targets: Any) -> None:
    """Logits [N, C] and targets [N] (class indices) or [N, C] (class probabilities): by shape and dtype, no sync."""
    for what, value in (("logits", logits), ("targets", targets)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{what} must be a tensor, not {type(value).__name__}")
    if logits is not None and (logits.dim() != 2 or logits.is_complex() or logits.dtype == torch.bool):
        raise ValueError(
            f"logits must be a [batch, classes] tensor of scores, not {logits.dtype} {tuple(logits.shape)}"
        )
    if targets is not None and targets.dim() == 0:
        raise ValueError("targets must hold a batch of labels, not a single value")
    if logits is None or targets is None:
        return
    if targets.device != logits.device:
        raise ValueError(f"targets are on {targets.device}, logits on {logits.device}")
    if targets.shape == logits.shape:
        return  # class probabilities
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not fit logits of shape {tuple(logits.shape)} "
            f"(class indices [{logits.shape[0]}] or probabilities {list(logits.shape)})"
        )
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"targets of class indices must be integers, not {targets.dtype}")
