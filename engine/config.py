"""`TrainConfig`: every option of `mirante train`, its validation, and its argparse form. No torch here."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import catalog
from engine.names import RunNameError, check_name

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau")
LOSSES = ("ce", "mse")
INITS = ("default", "kaiming", "xavier", "normal")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cuda", "mps", "cpu")
DIVERGENCE_ACTIONS = ("stop", "warn")
DATASETS = ("shapes", "mnist", "fashionmnist", "cifar10", "cifar100")  # or a path to an ImageFolder


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # what engine.names refuses: a folder's name is made safe with "_"
DATASET_IN_NAME = 64  # characters of a dataset's name kept in a default run name


class ConfigError(ValueError):
    """An option value that cannot work; the message is one line for the user."""


def _opt(help: str, **kwargs: Any) -> Any:
    """A dataclass field that carries its command-line help (and choices, flag names...)."""
    default = kwargs.pop("default")
    meta = {"help": help, **kwargs}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """What to train, on what, how, and how closely to watch it."""

    # what
    model: str = _opt("model to train (see the list above)", default="smallcnn")
    dataset: str = _opt(
        "shapes (built in, no download), mnist, fashionmnist, cifar10, cifar100, or a path to an ImageFolder",
        default="shapes",
    )
    data_dir: str = _opt("where torchvision datasets are downloaded and looked for", default="data")
    image_size: int | None = _opt("input side fed to the model (default: the data's, or the model's own)", default=None)
    activation: str = _opt("activation of plainnet", default="relu", choices=catalog.ACTIVATIONS)
    depth: int | None = _opt("conv layers of plainnet after its stem (default 20)", default=None)
    residual: bool = _opt("plainnet with a skip connection around each conv of equal input and output shape",
                          default=False)  # fmt: skip
    pretrained: bool = _opt("start from torchvision's ImageNet weights (downloads them)", default=False)
    aux_logits: bool = _opt("train googlenet/inception_v3 with their auxiliary heads", default=False)
    val_fraction: float = _opt("share of the training data held out for validation", default=0.1)
    test: bool = _opt("also evaluate on the test set at the end", default=False)
    workers: int = _opt("data loader workers (image folders only)", default=2)
    augment: bool = _opt("random crop and flip while training", default=True)

    # how
    epochs: int = _opt("epochs to train", default=3)
    steps: int | None = _opt("optimizer steps to train (overrides --epochs)", default=None)
    batch_size: int = _opt("images per optimizer step", default=128)
    lr: float = _opt("peak learning rate", default=0.05)
    optimizer: str = _opt("optimizer", default="sgd", choices=OPTIMIZERS)
    momentum: float = _opt("momentum of sgd and rmsprop", default=0.9)
    nesterov: bool = _opt("Nesterov momentum (sgd)", default=False)
    weight_decay: float = _opt("L2 penalty, as the optimizer's weight decay", default=5e-4)
    l1: float = _opt("L1 penalty: adds l1 * sum|w| over weights to the loss", default=0.0)
    schedule: str = _opt("learning-rate schedule", default="cosine", choices=SCHEDULES)
    warmup_steps: int = _opt("linear learning-rate warm-up over this many steps", default=0)
    step_size: int = _opt("step: epochs between decays", default=10)
    milestones: list[int] = _opt("multistep: epochs at which to decay", default=[], nargs="+", type=int)
    gamma: float = _opt("step/multistep/exponential: decay factor (exponential: per epoch)", default=0.1)
    patience: int = _opt("plateau: epochs without validation improvement before decaying", default=3)
    loss: str = _opt(
        "ce: cross-entropy; mse: mean squared error of softmax against one-hot", default="ce", choices=LOSSES
    )
    label_smoothing: float = _opt("cross-entropy label smoothing", default=0.0)
    init: str = _opt("weight initialisation (biases zeroed unless default)", default="default", choices=INITS)
    init_std: float = _opt("sigma of --init normal", default=0.01)
    clip_grad: float | None = _opt("clip the gradient's global norm to this", default=None)
    seed: int = _opt("random seed", default=0)
    overfit_batches: int = _opt(
        "sanity check: train only on this many fixed batches (no augmentation, no validation; 200 steps unless "
        "--steps) and report whether the loss gets near zero",
        default=0,
    )

    # where
    device: str = _opt("device", default="auto", choices=DEVICES)
    precision: str = _opt("auto: bf16 autocast on CUDA, fp32 elsewhere", default="auto", choices=PRECISIONS)
    channels_last: bool = _opt("channels_last memory format (faster for convs on CUDA and most CPUs)", default=True)
    compile: bool = _opt("torch.compile the model", default=False)
    peak_tflops: float | None = _opt("the device's peak TFLOP/s, for MFU (default: from a table of GPUs)", default=None)

    # watching
    name: str | None = _opt("run name (default: MODEL-DATASET-TIME)", default=None)
    runs_dir: str = _opt("where run stores and checkpoints go", default="runs")
    log_every: int = _opt("steps between loss/LR read-backs (one batched device-to-host copy each)", default=10)
    probe_every: int = _opt("steps between per-layer gradient norms (1: every step, at almost no cost)", default=1)
    update_every: int = _opt("steps between per-layer weight norms and update/weight ratios", default=10)
    capture_every: int = _opt("steps between activation and filter captures (0: at epoch ends only)", default=200)
    capture_images: int = _opt("validation images each capture shows, one per class in turn", default=10)
    capture_kb: int = _opt("KiB per capture: channels capped and maps pooled down to fit", default=960)
    capture_layer: str | None = _opt("a layer every capture keeps whole: all channels, full size", default=None)
    on_divergence: str = _opt(
        "on a NaN/infinite loss, or one grown 100x: stop the run (as failed), or only warn",
        default="stop",
        choices=DIVERGENCE_ACTIONS,
    )
    group: str | None = _opt("the sweep this run is a member of (mirante sweep sets it)", default=None)
    swept: str | None = _opt("the values this sweep member was given: lr=0.1,momentum=0.9 (set by mirante sweep)",
                             default=None)  # fmt: skip
    # [min, max]: the learning-rate range test of `mirante lr-find` (not an option of `mirante train`)
    range_test: list[float] | None = _opt("", default=None, cli=False)
    headless: bool = _opt("no app: progress lines on stdout (always so when stdout is not a terminal)", default=False)

    def validate(self) -> TrainConfig:
        """Raise ConfigError for values that cannot work; returns self."""
        self._check_finite()  # first: NaN passes every comparison below
        positive = {"batch_size": self.batch_size, "lr": self.lr, "epochs": self.epochs}
        positive |= {"log_every": self.log_every, "probe_every": self.probe_every, "update_every": self.update_every}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        checks = [
            (self.steps is not None and self.steps <= 0, f"--steps must be positive, got {self.steps}"),
            (not 0 < self.val_fraction < 1, f"--val-fraction must be between 0 and 1, got {self.val_fraction}"),
            (self.weight_decay < 0 or self.l1 < 0, "--weight-decay and --l1 cannot be negative"),
            (not 0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (not 0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.clip_grad is not None and self.clip_grad <= 0, "--clip-grad must be positive"),
            (self.image_size is not None and self.image_size <= 0, "--image-size must be positive"),
            (self.depth is not None and self.depth <= 0, "--depth must be positive"),
            (self.capture_every < 0 or self.warmup_steps < 0, "--capture-every and --warmup-steps cannot be negative"),
            (self.capture_images < 1 or self.capture_kb < 1, "--capture-images and --capture-kb must be positive"),
            (self.nesterov and (self.optimizer != "sgd" or self.momentum == 0), "--nesterov needs sgd with momentum"),
            (self.init_std <= 0, "--init-std must be positive"),
            (self.gamma <= 0, "--gamma must be positive"),
            (self.peak_tflops is not None and self.peak_tflops <= 0, "--peak-tflops must be positive"),
            (self.overfit_batches < 0, "--overfit-batches cannot be negative"),
            (
                self.range_test is not None and not 0 < self.range_test[0] < self.range_test[1],
                "lr-find: --min-lr must be positive and below --max-lr",
            ),
        ]
        for failed, message in checks:
            if failed:
                raise ConfigError(message)
        problem = writable_dir_problem(Path(self.runs_dir))
        if problem:
            raise ConfigError(f"--runs-dir {self.runs_dir}: {problem}")
        if self.name is not None:  # the one check of a run name for `mirante train` and `lr-find`
            try:
                check_name(self.name)
            except RunNameError as exc:
                raise ConfigError(f"--name: {exc}") from None
        try:
            spec = catalog.get_spec(self.model)
        except catalog.ModelError as exc:
            raise ConfigError(str(exc)) from None
        if self.image_size is not None:
            try:
                catalog.check_size(spec, self.image_size)
            except catalog.ModelError as exc:
                raise ConfigError(f"--image-size {self.image_size}: {exc}") from None
        if self.dataset not in DATASETS and not Path(self.dataset).exists():
            raise ConfigError(
                f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}, or give an ImageFolder path"
            )
        return self

    def _check_finite(self) -> None:
        """Every float option is a finite number: the command line's type says so, a checkpoint's config may not."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    flag = "lr-find: --min-lr/--max-lr" if f.name == "range_test" else "--" + f.name.replace("_", "-")
                    raise ConfigError(f"{flag} must be a finite number, got {v}")

    @property
    def run_name(self) -> str:
        return self.name or self.default_name()

    def default_name(self, prefix: str = "") -> str:
        """PREFIX MODEL-DATASET-TIME, a valid run name whatever the characters of an ImageFolder's name."""
        data = _UNSAFE.sub("_", Path(self.dataset).name).lstrip(".")[:DATASET_IN_NAME] or "data"
        return f"{prefix}{self.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from `to_dict` output; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field: --batch-size for batch_size; booleans get --x/--no-x."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        if not meta.pop("cli", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kind = meta.pop("type", None) or _scalar_type(f.type)
        shown = "" if default in (None, []) else f" (default: {default})"
        parser.add_argument(flag, type=kind, default=default, help=help_text + shown, **meta)


def writable_dir_problem(path: Path) -> str:
    """Why `path` cannot be a directory this process writes in (as it is, or once made), or "" if it can.

    Nothing is created: the nearest existing folder on the way must be a directory this user may write in.
    """
    for existing in (path, *path.parents):
        if os.path.exists(existing):  # False, not an error, where a folder on the way cannot be searched
            break
    else:  # a relative path's last parent is ".", which exists unless the working directory was removed
        return "its parent folders do not exist"
    if not os.path.isdir(existing):
        return f"not a directory ({existing} is a file)"
    if not os.access(existing, os.W_OK | os.X_OK):
        made = "" if existing == path else f" (it would be made in {existing})"
        return f"not writable by this user{made}"
    return ""


def finite_float(text: str) -> float:
    """argparse type of every float option: NaN and infinities are refused where they are typed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _scalar_type(annotation: Any) -> Any:
    text = str(annotation)
    for name, kind in (("int", int), ("float", finite_float)):
        if text.startswith(name):
            return kind
    return str


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig held by parsed arguments (extra attributes are ignored)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names}).validate()


def explicit_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Destinations of the options written out in `argv` (not left at their defaults)."""
    import sys

    words = sys.argv[1:] if argv is None else argv
    given = set()
    for action in parser._actions:
        for flag in action.option_strings:
            if any(w == flag or w.startswith(flag + "=") for w in words):
                given.add(action.dest)
    return given
