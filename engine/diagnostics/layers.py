"""Checklists 6 and 7, per layer: vanishing and exploding gradients, dead ReLUs, update/weight ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from engine import events as ev
from engine.diagnostics.base import Check, Verdict, g
from engine.diagnostics.facts import RunFacts
from engine.diagnostics.settings import DEAD_SHARE_PREFIX, ZERO_SHARE_PREFIX, Settings

# --- gradients --------------------------------------------------------------------------


@dataclass(frozen=True)
class GradientHealth:
    """The gradients of one probe, judged: what the check warns on and the Gradients pane marks."""

    early: float  # median norm of the first quarter of the weight layers
    late: float  # ... and of the last quarter
    vanishing: bool  # the first layers' gradients are far smaller than the last layers' (or tiny outright)
    exploding: bool  # a layer's norm is above the ceiling or not finite
    small: tuple[str, ...]  # layers far below the largest healthy norm (or below the floor)
    large: tuple[str, ...]  # layers above the ceiling or not finite
    total: float  # the norm of all the weight layers' gradients together (inf if one is not finite)

    @property
    def ratio(self) -> float:
        return self.early / self.late if self.late > 0 else math.inf

    def flags(self) -> dict[str, str]:
        """Layer -> 'vanishing' | 'exploding': the small layers only while the gradients vanish."""
        flags = dict.fromkeys(self.small, "vanishing") if self.vanishing else {}
        return flags | dict.fromkeys(self.large, "exploding")


def gradient_health(known: list[tuple[str, float]], s: Settings, loss_near_zero: bool) -> GradientHealth | None:
    """The one rule for vanishing and exploding gradients, on (layer, norm) of the weight layers in order.

    Vanishing: the median norm of the first quarter of the layers is below `vanishing_ratio` times
    the last quarter's, or below `vanishing_floor` while the loss is not near zero (a net that has
    learned its data has tiny gradients everywhere). The layers named are those far below the
    largest healthy norm. Exploding: a layer above `exploding_ceiling`, or not finite.
    """
    if len(known) < 2:
        return None
    q = max(1, len(known) // 4)
    early = statistics.median(v for _, v in known[:q])
    late = statistics.median(v for _, v in known[-q:])
    ratio = early / late if late > 0 else math.inf
    floor = early < s.vanishing_floor and not loss_near_zero
    vanishing = math.isfinite(early) and math.isfinite(late) and (ratio < s.vanishing_ratio or floor)
    large = tuple(n for n, v in known if not math.isfinite(v) or v > s.exploding_ceiling)
    healthy = [v for _, v in known if math.isfinite(v) and v <= s.exploding_ceiling]
    top = max(healthy, default=0.0)
    small = tuple(n for n, v in known if v < s.vanishing_ratio * top or v < s.vanishing_floor)
    total = math.sqrt(sum(v * v for _, v in known)) if all(math.isfinite(v) for _, v in known) else math.inf
    return GradientHealth(early, late, vanishing, bool(large), small, large, total)


class Gradients(Check):
    """Vanishing and exploding gradients: two codes, one pass over each LayerStats."""

    code = "vanishing-gradients"
    codes = ("vanishing-gradients", "exploding-gradients")

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.streak = {"vanishing": 0, "exploding": 0}
        self.state = {"vanishing": "ok", "exploding": "ok"}
        self.first_totals: list[float] = []
        self.said: set[str] = set()  # kinds that have said ok once

    def on_layers(self, e: ev.LayerStats) -> Verdict | None:
        known = self.run.weight_values(e.grad_norm)
        health = gradient_health(known, self.s, self.run.loss_near_zero)
        if health is None:
            return None
        self._vanishing(e.step, known, health)
        self._exploding(e.step, known, health)
        return None

    def _flag(self, kind: str, condition: bool, step: int, verdict: Verdict, healthy: Verdict) -> None:
        """Warn after `probes_to_flag` probes in a row; say ok at the first healthy probe, and when it clears."""
        self.streak[kind] = self.streak[kind] + 1 if condition else 0
        code = f"{kind}-gradients"
        if self.streak[kind] >= self.s.probes_to_flag and self.state[kind] == "ok":
            self.state[kind] = verdict[0]
            self.pending.append((code, verdict))
        elif not condition and (self.state[kind] != "ok" or kind not in self.said):
            self.state[kind] = "ok"
            self.said.add(kind)
            self.pending.append((code, healthy))

    def _vanishing(self, step: int, known: list[tuple[str, float]], h: GradientHealth) -> None:
        small = list(h.small)
        evidence = {
            "step": step,
            "early_median": h.early,
            "late_median": h.late,
            "ratio": h.ratio,
            "layers": small[:12],
            "norms": {n: v for n, v in known if n in small[:12]} | {known[-1][0]: known[-1][1]},
        }
        names = ", ".join(small[:4]) + (f" and {len(small) - 4} more" if len(small) > 4 else "")
        factor = g(1 / h.ratio) if h.ratio > 0 else "inf"
        verdict = (
            "warn",
            f"gradients vanish: the first layers' norms (median {g(h.early)}) are {factor}x "
            f"smaller than the last layers' ({g(h.late)}) at step {step}, in {names}: use ReLU instead of sigmoid or "
            "tanh, batch normalisation, residual connections, or He/Xavier initialisation",
            evidence,
        )
        healthy = (
            "ok",
            f"the first layers' gradient norms (median {g(h.early)}) are {g(h.ratio)}x the last layers' "
            f"({g(h.late)}) at step {step}: no vanishing",
            evidence,
        )
        self._flag("vanishing", h.vanishing, step, verdict, healthy)

    def _exploding(self, step: int, known: list[tuple[str, float]], h: GradientHealth) -> None:
        total = h.total
        if len(self.first_totals) < self.s.probes_to_flag and math.isfinite(total):
            self.first_totals.append(total)
        base = statistics.median(self.first_totals) if self.first_totals else None
        bad = list(h.large)
        grown = base is not None and base > 0 and total > self.s.exploding_growth * base
        condition = h.exploding or grown
        evidence = {"step": step, "total_norm": total, "first_total_norm": base, "layers": bad[:12]}
        if not math.isfinite(total):
            evidence["norms"] = {n: v for n, v in known if not math.isfinite(v)}
        names = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        where = f" in {names}" if bad else ""
        level = "fail" if not math.isfinite(total) else "warn"
        verdict = (
            level,
            f"gradients explode: the total gradient norm is {g(total)} at step {step} (it was {g(base)} at the "
            f"start){where}: lower the learning rate, clip the gradients (--clip-grad), or add batch normalisation",
            evidence,
        )
        cleared = (
            "ok",
            f"the total gradient norm is {g(total)} at step {step}, no layer above {g(self.s.exploding_ceiling)}",
            evidence,
        )
        if level == "fail" and self.state["exploding"] == "warn":  # warn to fail is a change too
            self.state["exploding"] = "ok"
            self.streak["exploding"] = self.s.probes_to_flag
        self._flag("exploding", condition, step, verdict, cleared)


class DeadRelu(Check):
    code = "dead-relu"

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.dead: set[str] = set()
        self.said = False

    def on_step(self, step: int, scalars: Mapping[str, float]) -> Verdict | None:
        if "train/loss" in scalars:
            return None  # the recorder sends zero shares in Step events of their own
        shares = {k[len(ZERO_SHARE_PREFIX) :]: v for k, v in scalars.items() if k.startswith(ZERO_SHARE_PREFIX)}
        if not shares:
            return None
        channels = {k[len(DEAD_SHARE_PREFIX) :]: v for k, v in scalars.items() if k.startswith(DEAD_SHARE_PREFIX)}
        dead = {
            layer
            for layer, share in shares.items()
            if share >= self.s.dead_zero_share or channels.get(layer, 0.0) >= self.s.dead_channel_share
        }
        evidence = {"step": step, "zero_share": shares, "dead_channel_share": channels}
        if dead == self.dead and self.said:
            return None
        self.said = True
        self.dead = dead
        if not dead:
            worst = max(shares, key=shares.get)
            return (
                "ok",
                f"the ReLUs after the captured layers are alive: at most {100 * shares[worst]:.0f}% of outputs are "
                f"zero ({worst}, step {step})",
                evidence,
            )
        names = ", ".join(sorted(dead))
        layer = sorted(dead)[0]
        return (
            "warn",
            f"dead ReLUs after {names}: {100 * shares[layer]:.0f}% of outputs and {100 * channels.get(layer, 0):.0f}% "
            f"of channels are zero for the sample at step {step}: the learning rate may be too high, or the "
            "initialisation or a large negative bias has killed them; try a lower learning rate or LeakyReLU",
            evidence,
        )


# --- update size ------------------------------------------------------------------------


class UpdateRatio(Check):
    code = "update-ratio"

    def __init__(self, run: RunFacts, settings: Settings) -> None:
        super().__init__(run, settings)
        self.streak = {"high": 0, "low": 0}
        self.state = "ok"
        self.said = False

    def on_layers(self, e: ev.LayerStats) -> Verdict | None:
        ratios = self.run.weight_values(e.update_ratio)
        if not ratios:
            return None
        share = self.s.ratio_layers
        high = [n for n, r in ratios if r > self.s.ratio_high or not math.isfinite(r)]
        at_peak = not math.isfinite(self.run.lr) or self.run.lr >= 0.5 * self.run.peak_lr
        tiny = [n for n, r in ratios if r < self.s.ratio_low]
        low = tiny if at_peak else []
        self.streak["high"] = self.streak["high"] + 1 if len(high) >= share * len(ratios) else 0
        self.streak["low"] = self.streak["low"] + 1 if len(low) >= share * len(ratios) else 0
        median = statistics.median(r for _, r in ratios)
        evidence = {
            "step": e.step,
            "median_ratio": median,
            "layers": len(ratios),
            "too_high": high[:12],
            "too_low": low[:12],
            "lr": self.run.lr,
        }
        n = self.s.probes_to_flag
        if self.streak["high"] >= n and self.state != "high":
            self.state = "high"
            return (
                "warn",
                f"updates are too large: {len(high)} of {len(ratios)} weight layers change by more than "
                f"{g(self.s.ratio_high)} of their norm per step (median {g(median)}, step {e.step}), far from "
                "about 1e-3: lower the learning rate",
                evidence,
            )
        if self.streak["low"] >= n and self.state != "low":
            self.state = "low"
            return (
                "warn",
                f"updates are too small: {len(low)} of {len(ratios)} weight layers change by less than "
                f"{g(self.s.ratio_low)} of their norm per step (median {g(median)}, step {e.step}), far from about "
                "1e-3: raise the learning rate (or the layers learn nothing: check for vanishing gradients)",
                evidence,
            )
        calm = self.streak["high"] == 0 and len(tiny) < share * len(ratios)
        if calm and (self.state != "ok" or not self.said):
            self.state, self.said = "ok", True
            return (
                "ok",
                f"update/weight ratios are sane: median {g(median)} at step {e.step} (about 1e-3 is ideal)",
                evidence,
            )
        return None
