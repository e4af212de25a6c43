"""`mirante sweep --search optuna`: options given as ranges (`--lr 1e-4:1:log`) or lists, searched by Optuna.

Each trial is an ordinary run (`mirante train --headless` in a child, as a sweep's member) whose
values Optuna's sampler picked; each epoch's validation accuracy is reported to the study, and when
its median pruner says so the run is asked to end (`prune`, through the run's command pipe) and is
recorded as pruned, not failed. The study lives in a storage URL (default: an SQLite file beside
the runs) that several machines may share, as Optuna documents; repeating the command goes on with
it until it has `trials` trials that completed or were pruned. Optuna is an optional extra
(`pip install 'mirante[optuna]'`), imported only here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import control
from engine.names import SUFFIX
from engine.store import RunReader, StoreError
from engine.sweep import SweepError, _range, _safe, _wait, outcome, read_options, set_aside

POLL_S = 0.5  # how often a running trial's store is read for new epochs


def study(group: str, storage: str, prune_after: int) -> Any:
    """The search's study (made, or found in `storage` under `group`), maximising validation accuracy."""
    try:
        import optuna
    except ImportError:
        raise SweepError("--search optuna needs Optuna: pip install 'mirante[optuna]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=prune_after, n_warmup_steps=0)
    return optuna.create_study(
        study_name=group, storage=storage, load_if_exists=True, direction="maximize", pruner=pruner
    )


def space(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], dict[str, tuple], dict[str, str]]:
    """(fixed options, the search space, flags): each varied option a range ("float"|"int", lo, hi, log) or a
    list ("list", values)."""
    options = read_options(parser, argv, ranges=True)
    actions = {a.dest: a for a in parser._actions}
    searched: dict[str, tuple] = {}
    for dest, values in options.varied.items():
        flag = options.flags[dest]
        if len(values) == 1 and ":" in values[0]:
            lo, hi, log = _range(actions[dest], flag, values[0])
            searched[dest] = ("int" if actions[dest].type is int else "float", lo, hi, log)
        else:
            searched[dest] = ("list", values)
    if not searched:
        raise SweepError("nothing to search: give an option a range (--lr 1e-4:1:log) or a comma list")
    return options.fixed, searched, options.flags


def suggest(trial: Any, searched: dict[str, tuple]) -> dict[str, str]:
    """The trial's values, as command-line text."""
    out = {}
    for dest, spec in searched.items():
        if spec[0] == "list":
            out[dest] = trial.suggest_categorical(dest, spec[1])
        elif spec[0] == "int":
            out[dest] = str(trial.suggest_int(dest, int(spec[1]), int(spec[2]), log=spec[3]))
        else:
            out[dest] = f"{trial.suggest_float(dest, spec[1], spec[2], log=spec[3]):.4g}"
    return out


class Trial:
    """One trial running: its run's child process, and the epochs reported to the study so far."""

    def __init__(self, trial: Any, name: str, process: subprocess.Popen, log: Any) -> None:
        self.trial, self.name, self.process, self.log = trial, name, process, log
        self.reported = 0
        self.pruned = False

    def report(self, store: Path) -> None:
        """Report the run's new epochs; ask it to end if the pruner says so."""
        try:
            with RunReader(store) as run:
                epochs = run.epochs()
        except (StoreError, FileNotFoundError):
            return  # not created yet
        for epoch in epochs[self.reported :]:
            self.reported += 1
            if epoch.val_acc is None:
                continue
            self.trial.report(epoch.val_acc, epoch.epoch)
            if not self.pruned and self.trial.should_prune():
                self.pruned = True
                try:
                    control.send(store, "prune")
                except control.ControlError:
                    pass  # it has just ended: its last epoch is its result


def run(
    group: str,
    fixed: list[str],
    searched: dict[str, tuple],
    flags: dict[str, str],
    trials: int,
    runs_dir: Path,
    storage: str,
    *,
    parallel: int = 1,
    prune_after: int = 2,
    report: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> int:
    """Run trials until the study has `trials` that completed or were pruned, `parallel` at once; 130 when
    stopped by Ctrl-C (or `stop`), else 0."""
    import optuna

    study_ = study(group, storage, prune_after)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    running: list[Trial] = []
    interrupted = False
    try:
        while True:
            if stop is not None and stop.is_set():
                interrupted = True
            done = len(study_.get_trials(deepcopy=False, states=done_states))
            if not interrupted and done + len(running) < trials and len(running) < parallel:
                running.append(_start(study_, group, fixed, searched, flags, runs_dir))
                continue
            if not running:
                break
            for entry in list(running):
                store = runs_dir / f"{entry.name}{SUFFIX}"
                entry.report(store)
                if entry.process.poll() is None:
                    continue
                entry.report(store)
                entry.log.close()
                running.remove(entry)
                _tell(study_, entry, store)
                report(f"{entry.name}: {outcome(store)} ({_values(entry.trial.params)})")
            time.sleep(POLL_S)
    except KeyboardInterrupt:  # the trials got it too: they end interrupted, and their trials fail
        report(f"stopping: {len(running)} running trials end interrupted")
        for entry in running:
            _wait(entry.process)
            entry.log.close()
            _tell(study_, entry, runs_dir / f"{entry.name}{SUFFIX}")
        interrupted = True
    return 130 if interrupted else 0


def best(group: str, storage: str) -> str:
    """The study's best trial so far, in a line."""
    import optuna

    found = optuna.load_study(study_name=group, storage=storage)
    try:
        trial = found.best_trial
    except ValueError:
        return "no trial has completed"
    return f"best: trial {trial.number}, val acc {100 * trial.value:.2f}% ({_values(trial.params)})"


def _start(study_: Any, group: str, fixed: list[str], searched: dict, flags: dict, runs_dir: Path) -> Trial:
    trial = study_.ask()
    values = suggest(trial, searched)
    name = _safe(f"{group}_t{trial.number}")
    store = runs_dir / f"{name}{SUFFIX}"
    if store.exists():  # a trial number reused in a new storage: the old run is kept aside, not overwritten
        set_aside(store)
    argv = [*fixed, *(w for dest, v in values.items() for w in (flags[dest], v))]
    argv += ["--name", name, "--group", group, "--swept", _values(values)]
    runs_dir.mkdir(parents=True, exist_ok=True)
    log = open(runs_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed when the trial ends)
    command = [sys.executable, "-m", "tui.cli", "train", "--headless", *argv]
    return Trial(trial, name, subprocess.Popen(command, stdout=log, stderr=log), log)


def _tell(study_: Any, entry: Trial, store: Path) -> None:
    import optuna

    try:
        with RunReader(store) as run:
            summary = run.summary()
    except (StoreError, FileNotFoundError):
        study_.tell(entry.trial, state=optuna.trial.TrialState.FAIL)
        return
    if summary.status == "pruned":
        study_.tell(entry.trial, state=optuna.trial.TrialState.PRUNED)
    elif summary.status == "finished" and summary.best_val_acc is not None:
        study_.tell(entry.trial, summary.best_val_acc)
    else:
        study_.tell(entry.trial, state=optuna.trial.TrialState.FAIL)


def _values(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())
