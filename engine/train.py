"""The training loop: build everything from a TrainConfig, train epoch by epoch, emit events.

Read it top to bottom: `setup` builds device, data, model and optimizer; `Trainer.fit` runs
epochs of `train_one_epoch` and `evaluate`; monitoring (`probes`) reads values back in
batches, so no step waits for the device on its account. The few host syncs that remain are
marked `# note: ... sync point` and happen once per interval, evaluation or run.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from engine import diagnostics, flops, models, probes
from engine import events as ev
from engine.checks import LiveChecks
from engine.config import ConfigError, TrainConfig
from engine.control import OWNER_ENV, Channel, ControlError, RunControl
from engine.data import Data, DataError, build_data
from engine.device import device_peak, pick_device, pick_precision
from engine.distributed import Dist
from engine.emit import Emitter, NullEmitter
from engine.names import find_run, store_path
from engine.progress import PrintingQueue, Progress
from engine.recorder import Recorder
from engine.schedule import Plateau, learning_rate
from engine.store import SUFFIX, RunReader, RunWriter, StoreError

# --- setup ------------------------------------------------------------------------------


def init_weights(model: nn.Module, how: str, std: float) -> None:
    """The lecture's initialisations for conv and linear weights; biases zeroed."""
    if how == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if how == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif how == "xavier":
                nn.init.xavier_normal_(module.weight)
            else:
                nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    c = config
    if c.optimizer == "sgd":
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    return torch.optim.RMSprop(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


OVERFIT_STEPS = 200  # --overfit-batches without --steps
RANGE_TEST_STEPS = 400  # mirante lr-find without --steps: about 60 steps a decade from 1e-6 to 10


def loss_function(config: TrainConfig, num_classes: int) -> Callable[[Tensor, Tensor], Tensor]:
    if config.loss == "mse":

        def mse(logits: Tensor, target: Tensor) -> Tensor:
            one_hot = F.one_hot(target, num_classes).to(logits.dtype)
            return F.mse_loss(logits.float().softmax(dim=1), one_hot.float())

        return mse
    smoothing = config.label_smoothing
    return lambda logits, target: F.cross_entropy(logits.float(), target, label_smoothing=smoothing)


@dataclass
class Setup:
    """Everything a run is made of, built once."""

    config: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    data: Data
    model: nn.Module  # what is trained (compiled, when --compile)
    eager: nn.Module  # the same module uncompiled: hooks and state_dict go here
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    total_steps: int
    counts: flops.Counts
    # the validation images of captures, their labels and indices: read here, so a bad file fails setup
    fixed: tuple[Tensor, list[int], list[int]]

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup(config: TrainConfig, dist: Dist | None = None) -> Setup:
    """Build the run; ConfigError, ModelError or DataError (exit 2) for what cannot work.

    Under torchrun (`dist`), each process trains on its device its share of every batch, the
    model wrapped in DistributedDataParallel.
    """
    c = config
    device = dist.device() if dist is not None else pick_device(c.device)
    amp_dtype = pick_precision(c.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest kernels
    spec = models.get_spec(c.model)
    torch.manual_seed(c.seed)
    data = build_data(
        c.dataset,
        data_dir=c.data_dir,
        batch_size=c.batch_size,
        val_fraction=c.val_fraction,
        seed=c.seed,
        device=device,
        channels=3 if c.pretrained else None,  # ImageNet weights expect RGB
        augment=c.augment and not c.overfit_batches,  # overfitting a subset means the same images every time
        workers=c.workers,
        with_test=c.test,
        channels_last=c.channels_last,
    )
    size = models.input_size(c.model, data.spec.source_size, c.image_size)
    data.set_size(size)
    if dist is not None:
        data.shard(dist.rank, dist.world)
    if data.steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {c.batch_size} is larger than the training split ({data.spec.n_train})")
    if c.overfit_batches > data.steps_per_epoch:
        raise ConfigError(
            f"--overfit-batches {c.overfit_batches}: the training split has only {data.steps_per_epoch} batches"
        )
    eager = models.build_model(
        spec.name,
        num_classes=data.spec.num_classes,
        in_channels=data.spec.channels,
        image_size=size,
        activation=c.activation,
        depth=c.depth,
        residual=c.residual,
        pretrained=c.pretrained,
        aux_logits=c.aux_logits,
    )
    if c.capture_layer is not None:
        check_capture_layer(eager, spec.name, c.capture_layer)
    if not c.pretrained:
        init_weights(eager, c.init, c.init_std)
    counts = flops.count(eager, (data.spec.channels, size, size))
    eager = eager.to(device)
    if c.channels_last:
        eager = eager.to(memory_format=torch.channels_last)
    model: nn.Module = eager
    if dist is not None:  # gradients are averaged over the ranks during backward: the global batch's gradient
        model = DistributedDataParallel(eager, device_ids=[device.index] if device.type == "cuda" else None)
    model = torch.compile(model) if c.compile else model
    params = [p for p in eager.parameters() if p.requires_grad]
    if c.steps is not None:
        total = c.steps
    elif c.overfit_batches:
        total = OVERFIT_STEPS
    elif c.range_test:
        total = RANGE_TEST_STEPS
    else:
        total = c.epochs * data.steps_per_epoch
    return Setup(
        config=c,
        device=device,
        amp_dtype=amp_dtype,
        data=data,
        model=model,
        eager=eager,
        optimizer=build_optimizer(c, params),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16),
        loss_fn=loss_function(c, data.spec.num_classes),
        total_steps=total,
        counts=counts,
        fixed=data.fixed_images(c.capture_images),
    )


def check_capture_layer(model: nn.Module, model_name: str, layer: str) -> None:
    """ConfigError unless `model` has a module named `layer` (--capture-layer): said before a store exists."""
    names = [name for name, _ in model.named_modules() if name]
    if layer in names:
        return
    convs = [name for name, _ in probes.conv_layers(model)]
    kind, shown = ("conv layers", convs) if convs else ("layers", names)
    listed = ", ".join(shown[:8]) + (f", ... ({len(shown)} in all)" if len(shown) > 8 else "")
    raise ConfigError(f"--capture-layer {layer!r}: {model_name} has no layer of that name; its {kind}: {listed}")


# --- checkpoints ------------------------------------------------------------------------


def checkpoint_dir(runs_dir: str | Path, name: str) -> Path:
    return Path(runs_dir) / f"{name}.ckpt"


def save_checkpoint(path: Path, s: Setup, state: dict[str, Any]) -> None:
    """Write atomically: a crash while saving leaves the previous checkpoint intact.

    CheckpointError if it cannot be written ("disk full: ..." on a full disk); the partial file is
    removed, so the space it took is there again for the store to record the failure.
    """
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a file, not a path: torch's own writer says only "enforce fail at inline_container.cc" on a full disk,
        # a Python file raises OSError with its errno
        with open(tmp, "wb") as f:
            torch.save(
                {
                    "model": s.eager.state_dict(),
                    "optimizer": s.optimizer.state_dict(),
                    "scaler": s.scaler.state_dict(),
                    "config": s.config.to_dict(),
                    "state": state,
                },
                f,
            )
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink()
        cause = os_error(exc)
        if cause is None:
            raise
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"disk full: cannot write checkpoint {path}") from None
        raise CheckpointError(f"cannot write checkpoint {path}: {cause.strerror or cause}") from None


def os_error(exc: BaseException | None) -> OSError | None:
    """The OSError `exc` is or arose from: torch's zip writer, closing after a failed write, raises a RuntimeError
    of its own ("unexpected pos") while the write's OSError, the one with the errno, is only its context."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


def all_finite(model: nn.Module) -> bool:
    """Whether every weight and buffer of `model` is finite: a checkpoint of NaN or inf is never written."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return not tensors or bool(torch.stack([t.isfinite().all() for t in tensors]).all())


CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "config", "state")


class CheckpointError(Exception):
    """A checkpoint that cannot be read or written; the message is one line that names the file."""


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """What `save_checkpoint` wrote, as plain weights only (weights_only=True: a file that would run code is refused).

    CheckpointError for a file that cannot be read, is damaged, is not mirante's, or holds code.
    """
    try:
        with warnings.catch_warnings():  # a refused file is said in one line, not after torch's warning about it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            saved = torch.load(path, map_location=device, weights_only=True)
    except OSError as exc:  # not there, not readable: not the file's content
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except Exception:  # torch says why in many words, and in many ways: damaged, truncated, empty, refused
        saved = None
    if not (
        isinstance(saved, dict)
        and all(key in saved for key in CHECKPOINT_KEYS)
        and isinstance(saved["config"], dict)
        and isinstance(saved["state"], dict)
        and all(key in saved["state"] for key in STATE_KEYS)
    ):
        raise CheckpointError(
            f"{path}: not a checkpoint mirante can read (damaged, or refused because it holds code, not plain weights)"
        )
    return saved


class Checkpoints:
    """A run's last.pt and best.pt, each written whole once the store holds every event it accounts for."""

    def __init__(self, directory: Path, writer: RunWriter | None) -> None:
        self.last, self.best = directory / "last.pt", directory / "best.pt"
        self.writer = writer  # None on the ranks that do not record: they write no checkpoint

    def write(self, s: Setup, state: dict[str, Any], best: bool) -> None:
        state = state | {"seq": self.durable_seq()}
        save_checkpoint(self.last, s, state)
        if best:
            save_checkpoint(self.best, s, state)

    def durable_seq(self) -> int:
        """Commit every event emitted so far to the store, and return the last one's seq.

        A checkpoint relies on what the store holds at its step (the Epoch event that says the epoch
        is done, its best accuracy): the store commits every 250 ms, so without this wait a kill in
        that window would leave a checkpoint ahead of the record. --resume removes what the store
        holds after this seq. A host wait on the writer thread, not on the device; once a checkpoint.
        """
        if self.writer is None:
            return 0
        self.writer.flush()
        return self.writer.last_seq


# --- the loop ---------------------------------------------------------------------------


@dataclass
class Position:
    """Where a run is: with the plateau's state, what a checkpoint keeps and --resume restores."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_val_acc: float = -1.0

    @classmethod
    def restored(cls, state: dict[str, Any]) -> Position:
        return cls(*(state[f.name] for f in fields(cls)))


STATE_KEYS = (*(f.name for f in fields(Position)), *Plateau.KEYS)  # what a checkpoint's state must hold


class Trainer:
    """Runs a Setup to the end, emitting events as it goes."""

    def __init__(
        self,
        s: Setup,
        emitter: Emitter,
        channel: Channel | None = None,
        *,
        name: str,
        dist: Dist | None = None,
        checks: LiveChecks | None = None,
    ) -> None:
        self.s, self.c, self.out, self.dist, self.run_name = s, s.config, emitter, dist, name
        # whether the run goes on: commands from the app and other terminals, the parent's death, the ranks' vote
        self.control = RunControl(channel, poll_every=self.c.log_every, agree=dist.any_ if dist else None)
        self.checks = checks  # the lecture's checks, live (rank 0): a divergence or lr-find's end stops the run
        self.rec = run_recorder(s, emitter, dist)
        self.at = Position()
        self.plateau = Plateau(self.c.patience, self.c.gamma)
        # --overfit-batches and lr-find are sanity checks, not training: no validation, no checkpoints
        self.sanity_check = bool(self.c.overfit_batches or self.c.range_test)
        self.checkpoints = Checkpoints(checkpoint_dir(self.c.runs_dir, name), emitter.writer)

    def start(self, resumed: dict[str, Any] | None = None) -> None:
        """Record the run's start; on --resume from the checkpoint's position (its weights and optimizer state
        were restored by `restore`), saying what the store discarded after it."""
        writer = self.out.writer
        discarded = writer.discarded if resumed is not None and writer is not None else 0
        if resumed is not None:
            self.at, self.plateau = Position.restored(resumed["state"]), self.plateau.restored(resumed["state"])
        record_start(self.rec, self.s, self.run_name, self.dist, self.at.step, discarded if resumed else None)

    def fit(self) -> str:
        """Train to the end; returns the RunEnded status."""
        control = self.control
        self.rec.capture(self.at.step)
        while not control.stopped and self.at.step < self.s.total_steps:
            self.train_one_epoch()
            if control.stopped and self.at.step_in_epoch < self.s.data.steps_per_epoch:
                break  # stopped mid-epoch: no validation of a partial epoch
            self.end_epoch()
        self.rec.flush(self.at.step, wait=True)
        self.check_stop()  # a divergence in the last values read back fails the run: it did not finish
        if control.stopped:
            if control.status == "interrupted":
                self.save()  # to resume from; a diverged run's weights are not worth keeping
            return control.status
        if self.c.test:
            loss, acc, _ = evaluate(self.s, self.dist, self.s.data.test_batches())
            self.out.emit(ev.Step, self.at.step, scalars={"test/loss": loss, "test/acc": acc})
        return "finished"

    def train_one_epoch(self) -> None:
        s, c, rec, at = self.s, self.c, self.rec, self.at
        model, optimizer, scaler = s.model, s.optimizer, s.scaler
        params = rec.norms.params
        model.train()
        batches = epoch_batches(s.data, self.at, c.overfit_batches)
        while at.step < s.total_steps and not self.control.stopped:
            t0 = time.perf_counter()
            batch = next(batches, None)
            data_time = time.perf_counter() - t0
            if batch is None:
                break
            x, y = batch
            lr = learning_rate(c, at.step, s.data.steps_per_epoch, s.total_steps, self.plateau.factor)
            for group in optimizer.param_groups:
                group["lr"] = lr
            probe_now, update_now = rec.is_probe_step(at.step), rec.is_update_step(at.step)

            with s.autocast():
                logits, aux = models.split_outputs(model(x))
                loss = s.loss_fn(logits, y)
                objective = loss + sum(0.3 * s.loss_fn(a, y) for a in aux) if aux else loss
            if c.l1:
                objective = objective + c.l1 * torch.stack(torch._foreach_norm(params, 1)).sum()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(objective).backward()
            if scaler.is_enabled() and (c.clip_grad or probe_now):
                scaler.unscale_(optimizer)  # norms and clipping see true gradients
            if probe_now:  # the per-layer norms, and the clipping from the same norms
                rec.probe_grads(at.step + 1, clip=c.clip_grad)
            elif c.clip_grad:
                nn.utils.clip_grad_norm_(params, c.clip_grad, foreach=True)
            if update_now:
                rec.snapshot()
            scaler.step(optimizer)  # fp16 only: GradScaler checks for inf here (PyTorch's own sync)
            scaler.update()

            at.step += 1
            at.step_in_epoch += 1
            if update_now:
                rec.probe_update(at.step)
            correct = (logits.detach().argmax(dim=1) == y).sum()
            rec.record(at.step, loss, lr, correct=correct, batch_size=len(y), data_time=data_time)
            self.control.poll(at.step, self.act, idle=self.out.send)
            self.check_stop()
            self.control.vote(at.step)  # under torchrun: every rank stops at the same step

    def end_epoch(self) -> None:
        at, data = self.at, self.s.data
        self.rec.flush(at.step, wait=True)
        self.check_stop()  # the epoch's last values are in: a divergence among them ends the run here
        if self.control.stopped and self.control.failing():
            return  # no validation of broken weights, no checkpoint of them
        val_loss, val_acc, confusion = (
            (None, None, []) if self.sanity_check else evaluate(self.s, self.dist, data.val_batches())
        )
        train_loss, train_acc = self.rec.take_epoch()
        lr = self.s.optimizer.param_groups[0]["lr"]
        self.out.emit(
            ev.Epoch,
            at.step,
            epoch=at.epoch + 1,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            scalars={"lr": lr},
            confusion=confusion,
        )
        if self.c.schedule == "plateau" and val_loss is not None:
            self.plateau.update(val_loss)
        at.epoch, at.step_in_epoch = at.epoch + 1, 0
        if self.c.capture_every == 0:
            self.rec.capture(at.step)
        if val_acc is not None:
            improved, at.best_val_acc = val_acc > at.best_val_acc, max(at.best_val_acc, val_acc)
            self.save(best=improved)
        self.rec.flush(at.step)

    def check_stop(self) -> None:
        """Stop if a live check asked to, as of the values read back so far (host state: no sync)."""
        self.control.heed(self.checks.stop if self.checks is not None else None)

    def save(self, best: bool = False) -> None:
        """last.pt (and best.pt when `best`); rank 0 writes them: the weights are the same on all ranks."""
        if self.sanity_check or not self.rec.main or self.control.failing():
            return
        if not all_finite(self.s.eager):  # note: a CPU-GPU sync point, once per checkpoint
            why = f"diverged: the weights hold NaN or inf at step {self.at.step}; no checkpoint written"
            self.control.request(why, "failed")
            return
        world = self.dist.world if self.dist is not None else 1
        self.checkpoints.write(self.s, asdict(self.at) | self.plateau.state() | {"world_size": world}, best)

    def act(self, command: str) -> None:
        """What RunControl leaves to the trainer: capture now (of one layer whole: "capture LAYER"); detach, or the
        parent gone (no live queue)."""
        word, _, layer = command.partition(" ")
        if word == "capture":  # "capture LAYER": that layer kept whole this time
            self.rec.capture(self.at.step, whole=layer.strip() or None)
        elif command in ("detach", "gone"):
            self.out.detach(flush=command == "detach")


def run_recorder(s: Setup, emitter: Emitter, dist: Dist | None) -> Recorder:
    """The Recorder of a mirante run: what is measured and read back, and how often, from its config."""
    c = s.config
    return Recorder(
        emitter,
        s.eager,
        s.device,
        log_every=c.log_every,
        probe_every=c.probe_every,
        update_every=c.update_every,
        capture_every=c.capture_every,
        **capture_options(s),
        autocast=s.autocast,
        train_flops=s.counts.train_flops,
        peak_tflops=c.peak_tflops or device_peak(s.device, s.amp_dtype),
        dist=dist,
    )


def capture_options(s: Setup) -> dict[str, Any]:
    """The Recorder's capture settings: the fixed validation images, their labels and indices, the budget."""
    images, labels, indices = s.fixed
    return {
        "sample": images,
        "labels": labels,
        "indices": indices,
        "capture_budget": s.config.capture_kb * 1024,
        "capture_layer": s.config.capture_layer,
    }


def record_start(rec: Recorder, s: Setup, name: str, dist: Dist | None, step: int, discarded: int | None) -> None:
    """RunStarted: the config with the run's plan; on a resume (`discarded` not None) where it resumed and,
    in a Diagnostic, how many recorded events it discarded, so nothing recorded vanishes silently."""
    c, data = s.config, s.data
    per_epoch = s.total_steps if c.overfit_batches else data.steps_per_epoch  # overfit: one long epoch
    plan = {"steps_per_epoch": per_epoch, "total_steps": s.total_steps, "num_classes": data.spec.num_classes}
    plan["diagnostics"] = diagnostics.VERSION  # the checks run here, live: readers need not run them again
    if dist is not None:
        plan |= {"world_size": dist.world, "backend": dist.backend, "batch_per_rank": data.local_batch}
    if discarded is not None:
        plan |= {"resumed_at_step": step, "discarded_events": discarded}
    summary = s.counts.summary() | {"peak_tflops": rec.peak_tflops}
    rec.start(
        step,
        name=name,
        model=c.model,
        dataset=data.spec.name,
        config=c.to_dict() | plan,
        summary=summary,
        classes=data.spec.classes,
    )
    if discarded:
        rec.out.emit(
            ev.Diagnostic,
            step,
            level="info",
            code="resume",
            message=f"resumed from step {step}; {discarded} events recorded after that checkpoint were discarded",
            evidence={"step": step, "discarded": discarded},
        )


def epoch_batches(data: Data, at: Position, overfit: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's training batches from where the run is; with --overfit-batches the same few, over and over."""
    if not overfit:
        return data.train_batches(at.epoch, skip=at.step_in_epoch)
    return itertools.cycle(list(itertools.islice(data.train_batches(0), overfit)))


CONFUSION_CLASSES = 100  # a validation counts its confusion matrix up to this many classes (K x K floats)


def evaluate(s: Setup, dist: Dist | None, batches: Iterator[tuple[Tensor, Tensor]]) -> tuple[float, float, list[float]]:
    """Mean loss and accuracy over `batches` (under torchrun, each rank its share, added up), and the counts of
    the confusion matrix (true class x predicted, row-major; empty past CONFUSION_CLASSES classes)."""
    s.model.eval()
    k = s.data.spec.num_classes
    k = k if k <= CONFUSION_CLASSES else 0
    total = torch.zeros(2 + k * k, device=s.device)  # loss sum, correct, then the confusion counts
    seen = 0
    model = s.eager if dist is not None else s.model  # each rank its share; DDP's forward would sync buffers
    with torch.no_grad(), s.autocast():
        for x, y in batches:
            logits, _ = models.split_outputs(model(x))
            predicted = logits.argmax(dim=1)
            total[:2] += torch.stack([s.loss_fn(logits, y) * len(y), (predicted == y).sum().float()])
            if k:  # index_add_, not bincount: bincount reads its input's maximum back on a GPU
                total[2:].index_add_(0, y * k + predicted, torch.ones_like(predicted, dtype=total.dtype))
            seen += len(y)
    s.model.train()
    if dist is not None:  # one collective per evaluation: the ranks' shares added up, the count of images last
        total = dist.sum_(torch.cat([total, torch.tensor([float(seen)], device=total.device)]))
    values = total.tolist()  # note: a CPU-GPU sync point, once per evaluation
    if dist is not None:
        seen, values = int(values[-1]), values[:-1]
    loss_sum, correct = values[:2]
    return loss_sum / max(1, seen), correct / max(1, seen), values[2:]


# --- entry points -----------------------------------------------------------------------


class Terminated(Exception):
    """SIGTERM: torchrun stopping the ranks because one failed, or a scheduler ending the job."""


def run(
    config: TrainConfig,
    live: Any | None = None,
    commands: Any | None = None,
    resume: str | None = None,
    overrides: dict[str, Any] | None = None,
    dist: Dist | None = None,
    lifeline: Any | None = None,
) -> int:
    """Train one run to its end. Exit code: 0 finished, 1 failed, 2 bad input, 130 interrupted.

    With `resume` (a run's name or store), the run's stored config is used, changed only by
    `overrides` (the options given on the command line, e.g. a larger --epochs). Under
    torchrun (`dist`), every rank trains and rank 0 alone writes the store and checkpoints.
    The process that writes the store takes commands (`engine.control`): from the FIFO beside
    the store, from the app's `commands` queue, and its parent's death from `lifeline` (or,
    under torchrun, from OWNER_ENV).
    """
    main = dist is None or dist.is_main
    world = dist.world if dist is not None else 1
    channel: Channel | None = None
    try:
        resumed = None
        if resume is not None:
            config, resumed, path = prepare_resume(config.runs_dir, resume, overrides or {})
            trained_on = resumed["state"].get("world_size", 1)
            if trained_on != world:
                raise ConfigError(
                    f"{resume} was trained by {trained_on} processes: resume it with as many, not {world}"
                )
        name = config.run_name if resumed is None else path.name.removesuffix(SUFFIX)
        if resumed is None:
            path = store_path(config.runs_dir, name)
        if main:  # before the slow setup: commands sent meanwhile wait in the pipe
            channel = Channel(path, queue=commands, lifeline=lifeline, owner=os.environ.get(OWNER_ENV))
        try:
            s = setup(config, dist)
            if (
                resumed is not None
            ):  # before the store is cut back to the checkpoint: one that does not fit changes nothing
                restore(s, resumed, checkpoint_dir(path.parent, name) / "last.pt")
            keep = kept_seq(path, resumed["state"]) if resumed is not None and main else None
            writer = RunWriter(path, append=resumed is not None, keep_upto_seq=keep) if main else None
        except BaseException:
            if channel is not None:
                channel.close()
            raise
    except (ConfigError, ControlError, models.ModelError, DataError, StoreError, CheckpointError, OSError) as exc:
        print(f"mirante: error: {exc}", file=sys.stderr)
        return 2
    emitter: Any = Emitter(writer, live) if main else NullEmitter()
    checks = LiveChecks(emitter) if main else None
    trainer = Trainer(s, emitter, channel, name=name, dist=dist, checks=checks)
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def on_interrupt(signum: int, frame: Any) -> None:
        trainer.control.request("interrupted (Ctrl-C)")
        if dist is None:  # a second Ctrl-C stops at once; under torchrun the agent passes the first one on again
            signal.signal(signal.SIGINT, previous[0])

    def on_terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the store close
        raise Terminated("terminated (SIGTERM)")

    def ending() -> None:  # from here on the run's end is recorded: a SIGTERM (torchrun's agent) must not cut it short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_terminate)
    room = reserve_room(checkpoint_dir(path.parent, name)) if main else None
    status, reason, code = "failed", "", 1
    try:
        trainer.start(resumed)
        status = trainer.fit()
        reason = trainer.control.reason or ""
        code = {"finished": 0, "failed": 1, "pruned": 0}.get(status, 130)
    except torch.cuda.OutOfMemoryError:
        ending()
        reason = f"out of GPU memory at --batch-size {config.batch_size}: try --batch-size {config.batch_size // 2}"
        if dist is not None:
            dist.note_failure(reason)
    except KeyboardInterrupt:
        ending()
        status, reason, code = "interrupted", "interrupted (second Ctrl-C): no checkpoint", 130
    except Exception as exc:  # the run failed: say why in one line, keep the traceback in the store
        ending()
        said = isinstance(exc, (DataError, StoreError, CheckpointError))  # their messages speak for themselves
        reason = (str(exc) if said else f"{type(exc).__name__}: {exc}").splitlines()[0]
        if dist is not None and main:  # say which rank failed, as the rank itself said or as its process is gone
            reason = dist.failure() or f"rank 0: {reason}"
        elif dist is not None and not isinstance(exc, Terminated):
            dist.note_failure(reason)
        with suppress(StoreError):  # a full store: its end is tried below, and said on stderr anyway
            emitter.emit(
                ev.Diagnostic,
                trainer.at.step,
                level="fail",
                code="exception",
                message=reason,
                evidence={"traceback": traceback.format_exc()},
            )
    finally:
        ending()
        if channel is not None:
            channel.close()  # first: a run that has ended takes no commands, and leaves no pipe behind
        unrecorded = end_run(emitter, trainer.at.step, status, reason, room, checks)
        s.data.close()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    if unrecorded is not None:  # the store could not take the run's end: whatever the run did, it failed
        status, reason, code = "failed", unrecorded, 1
    if status == "failed":
        who = f"rank {dist.rank}: " if dist is not None and not main else ""
        print(f"mirante: {who}run failed: {reason}", file=sys.stderr)
    if dist is not None and status != "failed":
        dist.close()
    return code


RESERVE_BYTES = 256 * 1024  # disk kept for the store's last commits, should the disk fill during the run


def reserve_room(directory: Path) -> Path | None:
    """Take RESERVE_BYTES of the disk that holds the store, as a file in `directory`; None if even that does not fit.

    `end_run` deletes it before the store's last commits: on a disk that filled up during the run,
    that room is what lets the store record how the run ended.
    """
    path = directory / "reserve"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(os.urandom(RESERVE_BYTES))  # not zeros: a compressing file system would keep no room for them
        return path
    except OSError:
        release_room(path)
        return None


def release_room(path: Path) -> None:
    with suppress(OSError):
        path.unlink()
    with suppress(OSError):
        path.parent.rmdir()  # the checkpoint folder, when the run left nothing else in it


def end_run(
    emitter: Any, step: int, status: str, reason: str, room: Path | None = None, checks: LiveChecks | None = None
) -> str | None:
    """Emit RunEnded and close the store. None, or when the store could not take it (a full disk) why the run failed.

    `room` (`reserve_room`) is given back first. On a full disk the writer keeps what it could not
    commit and tries once more at close, in that room. If that fails too, the run has failed (its
    record is incomplete) and its end alone is written by a fresh writer (a small commit may fit where
    the events held did not), so the store says "failed" and why, rather than reading as crashed.
    """
    try:
        if checks is not None:
            checks.finish(step)
        emitter.emit(ev.RunEnded, step, status=status, reason=reason)
    except StoreError:  # the disk is full: the event is kept and tried again by close()
        pass
    if room is not None:
        release_room(room)
    try:
        emitter.close()
        return None
    except StoreError as exc:
        lost = str(exc)
    path = emitter.writer.path
    if status == "failed" and not reason.startswith(f"{path}: "):  # (a store error was the cause: `lost` says it)
        lost = f"{reason}; {lost}"
    with suppress(StoreError), RunWriter(path, append=True) as writer:
        end = ev.RunEnded(seq=writer.last_seq + 1, wall_time=time.time(), step=step, status="failed", reason=lost)
        writer.write(end)
    return lost


def prepare_resume(runs_dir: str, run: str, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any], Path]:
    """The stored config with `overrides` applied, the last checkpoint, and the run's store."""
    path = find_run(run, runs_dir)
    if path is None:
        raise FileNotFoundError(f"{run}: no such run (looked in {runs_dir}/)")
    name = path.name.removesuffix(SUFFIX)
    ckpt = checkpoint_dir(path.parent, name) / "last.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: no checkpoint to resume from")
    saved = load_checkpoint(ckpt, torch.device("cpu"))
    stored = TrainConfig.from_dict(saved["config"] | overrides | {"runs_dir": str(path.parent), "name": name})
    return stored.validate(), saved, path


def restore(s: Setup, saved: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's weights, optimizer and scaler state into `s`; CheckpointError if they do not fit."""
    try:
        s.eager.load_state_dict(saved["model"])
        s.optimizer.load_state_dict(saved["optimizer"])
        s.scaler.load_state_dict(saved["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        why = str(exc).strip().splitlines()
        detail = next((line.strip() for line in why[1:] if line.strip()), why[0] if why else type(exc).__name__)
        raise CheckpointError(f"{path}: does not fit the run's model {s.config.model}: {detail}") from None


def kept_seq(path: Path, state: dict[str, Any]) -> int:
    """The last seq of the store that the checkpoint accounts for: --resume discards the events after it.

    A checkpoint carries it (`state["seq"]`); one written before it did is placed at the first
    event of a step after the checkpoint's own, the training that the resumed run repeats.
    """
    if "seq" in state:
        return state["seq"]
    with RunReader(path) as run:
        previous = 0
        for event in run.iter_events():
            if event.step > state["step"]:
                return previous
            previous = event.seq
    return previous


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.train ...`: train headless in this process (torchrun uses this)."""
    import argparse

    from engine.config import add_arguments, explicit_options, from_args

    parser = argparse.ArgumentParser(prog="python -m engine.train")
    add_arguments(parser)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in explicit_options(parser, argv)}
    try:
        config = from_args(args)
    except ConfigError as exc:
        print(f"mirante: error: {exc}", file=sys.stderr)
        return 2
    dist = Dist.from_env(config.device)  # under torchrun: join the other ranks
    progress = Progress()
    live = PrintingQueue(progress) if dist is None or dist.is_main else None
    code = run(config, live=live, resume=args.resume, overrides=overrides, dist=dist)
    if progress.started is not None:
        print(progress.summary(str(store_path(config.runs_dir, progress.started.name))), flush=True)
    return code


if __name__ == "__main__":
    exit_code = main()
    if "RANK" in os.environ:  # a torchrun rank: the store and checkpoints are closed by now, so leave without the
        sys.stdout.flush()  # interpreter's teardown, where a gloo rank aborted in C++ destructors twice in the
        sys.stderr.flush()  # fresh-clone suite ("terminate called without an active exception", exit -6)
        os._exit(exit_code)
    sys.exit(exit_code)
