"""Checklists 1 to 3: the loss at random weights, learning-rate decay, the optimizer."""

from __future__ import annotations

import math
from collections.abc import Mapping

from engine import events as ev
from engine.diagnostics.base import Check, Verdict, g
from engine.diagnostics.facts import RunFacts
from engine.diagnostics.settings import Settings

# --- checklist 1: the loss at random weights ---------------------------------------------


def expected_initial_loss(loss: str, classes: int) -> tuple[float, str]:
    """What random weights give (uniform predictions), and how to write it."""
    if loss == "mse":  # softmax against one-hot, averaged over the C outputs: ((C-1)^2/C^2 + (C-1)/C^2) / C
        return (classes - 1) / classes**2, f"(C-1)/C² for C={classes}"
    return math.log(classes), f"ln {classes}"


class InitialLoss(Check):
    code = "initial-loss"

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.done = run.resumed

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        observed = self.run.initial_loss
        if self.done or observed is None:
            return None
        self.done = True
        if self.run.num_classes is None or self.run.num_classes < 2:
            return None  # no class count (yet), or one class: no loss to expect
        values = [v for _, v in self.run.first_losses]
        steps = [s for s, _ in self.run.first_losses]
        expected, formula = expected_initial_loss(self.run.loss, self.run.num_classes or 2)
        ratio = observed / expected
        evidence = {
            "loss": observed,
            "expected": expected,
            "formula": formula,
            "ratio": ratio,
            "steps": steps,
            "losses": values,
        }
        lo, hi = self.s.initial_band
        first = (
            f"the loss at step {steps[0]} was {g(observed)}"
            if len(values) == 1
            else f"the loss over the first {len(values)} steps was {g(observed)}"
        )
        if lo <= ratio <= hi:
            return "ok", f"{first}, close to the {g(expected)} ({formula}) random weights give", evidence
        if not math.isfinite(observed) or ratio > hi:
            return (
                "warn",
                f"{first}, {g(ratio)}x the {g(expected)} ({formula}) random weights should give: the initial "
                "weights are probably too large (logits far from zero), or the labels or input normalisation are off",
                evidence,
            )
        return (
            "warn",
            f"{first}, far below the {g(expected)} ({formula}) random weights should give: the weights are not "
            "random (a trained head?), the labels leak into the inputs, or the loss is scaled wrongly",
            evidence,
        )


# --- checklist 2: learning-rate decay ----------------------------------------------------

DECAYING = ("step", "multistep", "exponential", "cosine", "onecycle", "plateau")


class LrDecay(Check):
    code = "lr-decay"

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.best = math.inf
        self.best_epoch = 0
        self.epochs = 0
        self.decayed = False
        self.warned = False

    def on_start(self) -> Verdict | None:
        schedule = self.run.config.get("schedule")
        if self.run.special_mode:
            return None
        if schedule in DECAYING:
            self.decayed = True
            return "ok", f"the learning rate follows a {schedule} schedule", {"schedule": schedule}
        return None

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        lr = scalars.get("lr")
        if lr is None or not math.isfinite(lr):
            return None
        run = self.run
        if not self.decayed and lr < 0.9 * run.peak_lr and not run.special_mode:
            self.decayed = True
            return (
                "ok",
                f"the learning rate decays: {g(run.peak_lr)} at its peak, {g(lr)} at step {step}",
                {"peak_lr": run.peak_lr, "lr": lr, "step": step},
            )
        return None

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        if self.run.special_mode:
            return None
        metric, value = ("validation", e.val_loss) if e.val_loss is not None else ("training", e.train_loss)
        if value is None or not math.isfinite(value):
            return None
        self.epochs = e.epoch
        if value < self.best * (1 - self.s.min_improvement):
            self.best, self.best_epoch = value, e.epoch
            return None
        stalled = e.epoch - self.best_epoch
        if self.decayed or self.warned or stalled < self.s.plateau_epochs:
            return None
        self.warned = True
        lr = self.run.lr
        return (
            "warn",
            f"the {metric} loss has not improved for {stalled} epochs (best {g(self.best)} at epoch "
            f"{self.best_epoch}) and the learning rate stays at {g(lr)}: decay it, by a fixed plan (--schedule step "
            f"or cosine) or by the validation loss (--schedule plateau)",
            {
                "metric": f"{metric} loss",
                "best": self.best,
                "best_epoch": self.best_epoch,
                "stalled": stalled,
                "lr": lr,
            },
        )

    def on_finish(self, step: int) -> Verdict | None:
        if self.decayed or self.warned or not self.epochs or self.run.special_mode:
            return None
        return (
            "ok",
            f"the learning rate stayed at {g(self.run.lr)}, and the loss never stalled for "
            f"{self.s.plateau_epochs} epochs in {self.epochs}",
            {"lr": self.run.lr, "epochs": self.epochs},
        )


# --- checklist 3: the optimizer ---------------------------------------------------------


class Optimizer(Check):
    code = "optimizer"

    def on_start(self) -> Verdict | None:
        c = self.run.config
        name = str(c.get("optimizer", "")).lower()
        lr = self.run.number("lr")
        if not name or lr is None or self.run.range_test:
            return None
        momentum = float(self.run.number("momentum") or 0.0)
        depth = len(self.run.weight_layers())
        evidence = {"optimizer": name, "lr": lr, "momentum": momentum, "weight_layers": depth}
        if name.startswith("adam") and lr >= self.s.adam_max_lr:
            return (
                "warn",
                f"{name} with lr {g(lr)}, an SGD-sized learning rate: Adam works best with smaller ones "
                "(1e-3 to 1e-4), or use SGD with momentum at this rate",
                evidence,
            )
        if name == "sgd" and lr <= self.s.sgd_min_lr:
            return (
                "warn",
                f"SGD with lr {g(lr)}, an Adam-sized learning rate: SGD will crawl; it usually takes 0.01 to 0.1 "
                "(with momentum 0.9), or use Adam at this rate",
                evidence,
            )
        if name == "sgd" and momentum == 0 and depth >= self.s.deep_layers:
            return (
                "warn",
                f"plain SGD without momentum on a net of {depth} weight layers: add momentum (--momentum 0.9) "
                "or use Adam, as the lecture advises",
                evidence,
            )
        what = f"SGD with momentum {g(momentum)}" if name == "sgd" and momentum else name
        return "ok", f"{what} at lr {g(lr)}", evidence
