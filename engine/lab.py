"""The lecture's experiments, ready to run: `mirante lab NAME`. No torch here.

Each lab is a set of ordinary runs on the built-in `shapes` data, small enough for a CPU in a few
minutes, that tests one claim of the lecture; it runs as a sweep does (`engine.sweep`), and is
watched and compared the same way. Options given after the lab's name override its presets.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.sweep import Member, Sweep, _safe

QUICK = ["--dataset", "shapes", "--capture-every", "0", "--log-every", "5"]  # every lab's


@dataclass(frozen=True)
class Lab:
    claim: str  # what the lecture says, which the lab tests
    base: tuple[str, ...]  # options of every member
    members: tuple[tuple[str, tuple[str, ...]], ...]  # (label, its own options)


def _grid(option: str, values: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((f"{option.lstrip('-').replace('-', '')}{v}", (option, v)) for v in values)


LABS: dict[str, Lab] = {
    "lr": Lab(
        "a learning rate too small barely moves, one too large diverges; start large and decay it",
        ("--model", "smallcnn", "--steps", "300"),
        (
            ("too-small", ("--lr", "0.0001", "--schedule", "none")),
            ("lecture-0.01", ("--lr", "0.01", "--schedule", "none")),
            ("too-large", ("--lr", "20", "--schedule", "none")),
            ("large-decayed", ("--lr", "0.05", "--schedule", "cosine")),  # 0.1 and 0.5 were too large without warm-up
        ),
    ),
    "momentum": Lab(
        "momentum speeds SGD up: investigate m in 0.5, 0.9, 0.95, 0.99",
        ("--model", "smallcnn", "--steps", "300", "--optimizer", "sgd", "--lr", "0.01", "--schedule", "none"),
        _grid("--momentum", ["0", "0.5", "0.9", "0.95", "0.99"]),
    ),
    "batch": Lab(
        "adjust the learning rate with the batch size (in proportion); compare by epochs, not steps",
        # a warm-up, as the linear scaling rule asks (Goyal et al. 2017): 512 at 0.2 without one reached 48%, with 68%
        ("--model", "smallcnn", "--epochs", "2", "--schedule", "none", "--warmup-steps", "20"),
        (
            ("batch32-lr0.05", ("--batch-size", "32", "--lr", "0.05")),
            ("batch128-lr0.05", ("--batch-size", "128", "--lr", "0.05")),
            ("batch512-lr0.05", ("--batch-size", "512", "--lr", "0.05")),
            ("batch32-lr0.0125", ("--batch-size", "32", "--lr", "0.0125")),
            ("batch512-lr0.2", ("--batch-size", "512", "--lr", "0.2")),
        ),
    ),
    "activation": Lab(
        "prefer ReLU to sigmoid: a deep sigmoid stack's first layers get vanishing gradients",
        # plainnet starts slowly (300 steps are too few) and SGD at 0.05 moves its ReLU stack nowhere in 1,000
        ("--model", "plainnet", "--depth", "10", "--optimizer", "adam", "--lr", "0.001")
        + ("--steps", "1000", "--probe-every", "5"),
        _grid("--activation", ["sigmoid", "tanh", "relu"]),
    ),
    "skip": Lab(
        "a deep plain stack trains worse than the same depth with skip connections: the reason ResNet exists",
        ("--model", "plainnet", "--depth", "30", "--steps", "1000", "--probe-every", "5"),
        (("plain", ()), ("residual", ("--residual",))),
    ),
    "optimizer": Lab(
        "SGD with momentum or Adam; Adam wants a smaller learning rate than SGD",
        ("--model", "smallcnn", "--steps", "300", "--schedule", "none"),
        (
            ("sgd", ("--optimizer", "sgd", "--momentum", "0", "--lr", "0.05")),
            ("sgd-momentum", ("--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05")),
            ("adam-0.001", ("--optimizer", "adam", "--lr", "0.001")),
            ("adam-0.05", ("--optimizer", "adam", "--lr", "0.05")),
        ),
    ),
    "init": Lab(
        "initialise weights with care: normal(0, 1) is too large; Xavier and Kaiming keep the signal's scale",
        ("--model", "plainnet", "--depth", "10", "--steps", "1000", "--lr", "0.01"),
        (
            ("normal-std1", ("--init", "normal", "--init-std", "1")),
            ("xavier", ("--init", "xavier")),
            ("kaiming", ("--init", "kaiming")),
        ),
    ),
    "regularization": Lab(
        "L2 and L1 penalties shrink the weights and narrow the gap between training and validation",
        ("--model", "smallcnn", "--epochs", "3", "--no-augment"),
        (
            ("none", ("--weight-decay", "0")),
            ("l2", ("--weight-decay", "0.005")),
            ("l1", ("--weight-decay", "0", "--l1", "0.0001")),
        ),
    ),
    "loss": Lab(
        "cross-entropy, not mean squared error, for classification",
        ("--model", "smallcnn", "--steps", "300"),
        _grid("--loss", ["ce", "mse"]),
    ),
    "separable": Lab(
        "depthwise-separable convolutions: far fewer parameters and MACs for a little accuracy",
        ("--epochs", "5"),  # sepcnn learns more slowly: 15 points behind at 300 steps, 2.4 at 5 epochs
        _grid("--model", ["smallcnn", "sepcnn"]),
    ),
    "seeds": Lab(
        "every initialisation differs: the same config under five seeds",
        ("--model", "smallcnn", "--steps", "300"),
        _grid("--seed", ["0", "1", "2", "3", "4"]),
    ),
}


class LabError(ValueError):
    """An unknown lab: one line for the user."""


def plan(name: str, overrides: list[str]) -> Sweep:
    """The lab's runs: each member's options after the lab's and before `overrides` (the last given wins)."""
    if name not in LABS:
        raise LabError(f"unknown lab {name!r}: choose one of {', '.join(LABS)} (mirante lab --list)")
    lab, group = LABS[name], f"lab-{name}"
    members = []
    for index, (label, own) in enumerate(lab.members):
        run = _safe(f"{group}_{label}")
        argv = [*QUICK, *lab.base, *own, *overrides, "--name", run, "--group", group, "--swept", f"lab={label}"]
        members.append(Member(index, run, {"lab": label}, 0, argv))
    return Sweep(group, ["lab"], members)


def listing() -> str:
    """Every lab, its runs and the claim it tests."""
    lines = []
    for name, lab in LABS.items():
        lines.append(f"{name:15} {lab.claim}")
        lines.append(f"{'':15} runs: {', '.join(label for label, _ in lab.members)}")
    return "\n".join(lines)
