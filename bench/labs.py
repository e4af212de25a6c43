"""Every `mirante lab`, run as a user runs it, on this machine: wall time, each run's outcome, and whether the
lecture's claim held on the shapes data.

    python bench/labs.py [--only NAME ...] [--tiny] [--json FILE] [--markdown FILE]

Each lab is `mirante lab NAME --headless` in a fresh process in its own runs directory, timed from spawn
to exit. The claim is judged from the stores by the rule written beside it here (`RULES`), and said
plainly where it did not hold. `--tiny` runs each member a few steps (the test suite runs one lab so,
so the script cannot rot); its verdicts mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import lab  # noqa: E402
from engine.store import RunReader, StoreError  # noqa: E402


class Result:
    """What one run of a lab came to: its status, best validation accuracy, last train/val accuracy, params."""

    def __init__(self, store: Path) -> None:
        self.status, self.acc, self.train_acc, self.val_acc, self.params, self.grad_warn = (
            "absent",
            None,
            None,
            None,
            0,
            False,
        )
        try:
            with RunReader(store) as run:
                summary, epochs, started = run.summary(), run.epochs(), run.started()
                findings = run.events_of("Diagnostic")
        except (StoreError, FileNotFoundError):
            return
        self.status, self.acc = summary.status, summary.best_val_acc
        if epochs:
            self.train_acc, self.val_acc = epochs[-1].train_acc, epochs[-1].val_acc
        self.params = int(dict(started.model_summary).get("params", 0)) if started else 0
        self.grad_warn = any(d.code == "vanishing-gradients" and d.level != "ok" for d in findings)

    @property
    def score(self) -> float:
        """Best validation accuracy; -1 for a run that failed or has none."""
        return -1.0 if self.acc is None or self.status != "finished" else self.acc

    def said(self) -> str:
        if self.status != "finished":
            return self.status
        return "-" if self.acc is None else f"{100 * self.acc:.1f}%"


R = dict[str, Result]
RULES: dict[str, tuple[str, Callable[[R], bool]]] = {  # (the rule in words, the rule)
    "lr": (
        "too large fails; too small below 0.01; large and decayed at least 0.01",
        lambda r: (
            r["too-large"].status == "failed"
            and r["too-small"].score < r["lecture-0.01"].score <= r["large-decayed"].score
        ),
    ),
    "momentum": ("0.9 above 0 (plain SGD)", lambda r: r["momentum0.9"].score > r["momentum0"].score),
    "batch": (
        "the rate scaled with the batch above the fixed 0.05, at 512 (0.2) and at 32 (0.0125), by the same epochs",
        lambda r: (
            r["batch512-lr0.2"].score > r["batch512-lr0.05"].score
            and r["batch32-lr0.0125"].score > r["batch32-lr0.05"].score
        ),
    ),
    "activation": (
        "ReLU above sigmoid, and the sigmoid run's gradients flagged vanishing",
        lambda r: r["activationrelu"].score > r["activationsigmoid"].score and r["activationsigmoid"].grad_warn,
    ),
    "skip": ("residual above plain at depth 30", lambda r: r["residual"].score > r["plain"].score),
    "optimizer": (
        "SGD with momentum above plain SGD; Adam at 0.001 above Adam at SGD's 0.05",
        lambda r: r["sgd-momentum"].score > r["sgd"].score and r["adam-0.001"].score > r["adam-0.05"].score,
    ),
    "init": (
        "normal(0, 1) below both Xavier and Kaiming",
        lambda r: r["normal-std1"].score < min(r["xavier"].score, r["kaiming"].score),
    ),
    "regularization": (
        "the train-validation gap at the end narrower with L2 and with L1 than with none",
        lambda r: all(_gap(r[k]) < _gap(r["none"]) for k in ("l2", "l1")),
    ),
    "loss": ("cross-entropy at least MSE", lambda r: r["lossce"].score >= r["lossmse"].score),
    "separable": (
        "sepcnn with fewer parameters, within 5 points of smallcnn",
        lambda r: (
            r["modelsepcnn"].params < r["modelsmallcnn"].params
            and r["modelsepcnn"].score >= r["modelsmallcnn"].score - 0.05
        ),
    ),
    "seeds": (
        "the five seeds' best accuracies spread over more than 0.5 points",
        lambda r: max(x.score for x in r.values()) - min(x.score for x in r.values()) > 0.005,
    ),
}


def _gap(result: Result) -> float:
    if result.train_acc is None or result.val_acc is None:
        return math.inf
    return result.train_acc - result.val_acc


def run_lab(name: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "tui.cli", "lab", name, "--headless", *extra],
            cwd=tmp,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        seconds = time.perf_counter() - start
        if done.returncode not in (0,):
            raise RuntimeError(
                f"mirante lab {name}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        plan = lab.plan(name, [])
        results = {m.values["lab"]: Result(Path(tmp) / "runs" / f"{m.name}.mirante") for m in plan.members}
    rule, check = RULES[name]
    return {
        "lab": name,
        "seconds": seconds,
        "runs": {label: r.said() for label, r in results.items()},
        "rule": rule,
        "held": bool(check(results)),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| lab | wall time | runs: best validation accuracy (or how they ended) | the claim held? |",
        "|---|---|---|---|",
    ]
    for row in rows:
        runs = ", ".join(f"{label} {said}" for label, said in row["runs"].items())
        verdict = ("yes" if row["held"] else "**no**") + f": {row['rule']}"
        lines.append(f"| `mirante lab {row['lab']}` | {row['seconds']:.0f} s | {runs} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(lab.LABS), help="these labs only")
    parser.add_argument("--tiny", action="store_true", help="a few steps a run (the test suite's form)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    extra = ["--steps", "3", "--batch-size", "16", "--device", "cpu"] if args.tiny else []
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    rows = []
    for name in args.only or list(lab.LABS):
        row = run_lab(name, extra)
        rows.append(row)
        print(f"{name}: {row['seconds']:.0f} s; {row['runs']}; held: {row['held']} ({row['rule']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(rows) + "\n")


if __name__ == "__main__":
    main()
