"""Checklist 4: validation, overfitting and the train/validation accuracy gap, judged at each epoch."""

from __future__ import annotations

from engine import events as ev
from engine.diagnostics.base import Check, Verdict, g
from engine.diagnostics.facts import RunFacts
from engine.diagnostics.settings import Settings

# --- checklist 4: validation ------------------------------------------------------------


class Validation(Check):
    code = "validation"

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.seen = False

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        if self.seen or self.run.special_mode:
            return None
        self.seen = True
        if e.val_loss is None:
            return (
                "warn",
                "no validation split: the training loss alone cannot show overfitting; hold out part of the "
                "training data (not the test set) and evaluate on it every epoch",
                {"epoch": e.epoch},
            )
        share = self.run.number("val_fraction")
        held = f" ({g(100 * share)}% of the training data held out)" if share else ""
        return "ok", f"the loss is watched on a validation split{held}", {"epoch": e.epoch, "val_loss": e.val_loss}


class Overfitting(Check):
    code = "overfitting"

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.history: list[ev.Epoch] = []
        self.warned_from: float | None = None  # the validation loss where the rise began

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        if e.val_loss is None or e.train_loss is None or self.run.special_mode:
            return None
        self.history.append(e)
        if len(self.history) == 1:
            return (
                "ok",
                f"validation loss {g(e.val_loss)} at epoch {e.epoch}: watched for rising while the training loss falls",
                {"epoch": e.epoch, "val_loss": e.val_loss, "train_loss": e.train_loss},
            )
        if self.warned_from is not None:
            if e.val_loss < self.warned_from:
                self.warned_from = None
                return "ok", f"the validation loss is back down to {g(e.val_loss)} at epoch {e.epoch}", {}
            return None
        n = self.s.overfit_evals
        recent = self.history[-(n + 1) :]
        if len(recent) < n + 1:
            return None
        rising = all(b.val_loss > a.val_loss for a, b in zip(recent, recent[1:], strict=False))
        falling = all(b.train_loss < a.train_loss for a, b in zip(recent, recent[1:], strict=False))
        if not (rising and falling):
            return None
        first, last = recent[0], recent[-1]
        self.warned_from = first.val_loss
        return (
            "warn",
            f"the validation loss rose for {n} evaluations ({g(first.val_loss)} to {g(last.val_loss)}, epochs "
            f"{first.epoch}-{last.epoch}) while the training loss fell ({g(first.train_loss)} to "
            f"{g(last.train_loss)}): the net is overfitting; keep the best checkpoint, and add data, augmentation "
            "or regularisation (weight decay)",
            {
                "epochs": [x.epoch for x in recent],
                "val_loss": [x.val_loss for x in recent],
                "train_loss": [x.train_loss for x in recent],
            },
        )


class GeneralizationGap(Check):
    code = "generalization-gap"

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.warned = False
        self.said = False

    def on_epoch(self, e: ev.Epoch) -> Verdict | None:
        if e.val_acc is None or e.train_acc is None or self.run.special_mode:
            return None
        gap = e.train_acc - e.val_acc
        evidence = {"epoch": e.epoch, "train_acc": e.train_acc, "val_acc": e.val_acc, "gap": gap}
        if not self.warned and gap > self.s.gap_warn:
            self.warned = self.said = True
            return (
                "warn",
                f"training accuracy {100 * e.train_acc:.1f}% against {100 * e.val_acc:.1f}% on validation at epoch "
                f"{e.epoch}, a gap of {100 * gap:.1f} points: the net memorises its training data; regularise "
                "(weight decay, augmentation, dropout) or get more data",
                evidence,
            )
        if self.warned and gap < self.s.gap_clear:
            self.warned = False
            return "ok", f"the accuracy gap closed to {100 * gap:.1f} points at epoch {e.epoch}", evidence
        if not self.warned and not self.said:
            self.said = True
            return (
                "ok",
                f"training accuracy {100 * e.train_acc:.1f}% and validation {100 * e.val_acc:.1f}% at epoch "
                f"{e.epoch}: " + (f"{100 * gap:.1f} points apart" if gap >= 0 else "validation is ahead"),
                evidence,
            )
        return None
