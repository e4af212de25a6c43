"""A sweep: `mirante train` options given comma lists, expanded into the runs of their grid. No torch here.

`plan(argv)` reads a `mirante train` command line in which some options hold comma lists
(`--lr 0.01,0.1 --momentum 0.5,0.9`) and returns the sweep: its group name, the swept options and
the members, one per point of the grid times `seeds`, each an ordinary `mirante train` command
line with its own `--name`, `--seed`, `--group` and `--swept`. `todo(sweep, runs_dir)` says which
members still have to run: a member whose store says it finished (or failed: a diverged run is a
result) is done; one interrupted or crashed is run again, from its checkpoint where it has one.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import finite_float
from engine.names import SUFFIX
from engine.store import RunReader, StoreError

MAX_MEMBERS = 100  # a grid larger than this needs --yes
DONE = (
    "finished",
    "failed",
    "pruned",
)  # a member that ended so is not run again; interrupted, crashed or absent ones are
SET_HERE = {"name": "", "group": " (--group names the sweep)", "swept": "", "seed": " (--seeds N: seeds 0..N-1)"}


class SweepError(ValueError):
    """A sweep command line that cannot work: one line for the user."""


@dataclass
class Member:
    """One run of a sweep: its place in the grid, its name, the swept values and the command line that trains it."""

    index: int
    name: str
    values: dict[str, str]  # option (dest) -> the value given for it, as typed
    seed: int
    argv: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    group: str
    swept: list[str]  # the swept options (dests), in the order given
    members: list[Member]


@dataclass
class Options:
    """A `mirante train` command line read for a sweep or a search: what is fixed, and what varies."""

    fixed: list[str]  # the options given one value, as given
    varied: dict[str, list[str]]  # dest -> its comma list's values (or [range] for a search), in the order given
    flags: dict[str, str]  # dest -> the flag it was given with


def read_options(parser: argparse.ArgumentParser, argv: list[str], ranges: bool = False) -> Options:
    """Read `argv` as `parser` (mirante train's options) would, but with comma lists (and, for a search, ranges
    LO:HI[:log]) allowed: each list's values are checked as the option parses one value."""
    actions = {flag: action for action in parser._actions for flag in action.option_strings}
    out = Options([], {}, {})
    words = list(argv)
    while words:
        word = words.pop(0)
        flag, eq, value = word.partition("=")
        action = actions.get(flag)
        if action is None or action.dest in ("help",):
            raise SweepError(f"unknown option {word!r} (see: mirante train --help)")
        if action.nargs == 0:
            if eq or (words and "," in words[0] and not words[0].startswith("--")):
                raise SweepError(f"{flag} takes no value: sweep it as {flag} and --no-{flag[2:]} in two sweeps")
            out.fixed.append(word)
            continue
        if action.nargs == "+":  # a list option (--milestones 30 60): passed on as it is
            taken = [value] if eq else []
            while words and not words[0].startswith("--"):
                taken.append(words.pop(0))
            out.fixed += [flag, *taken]
            continue
        if not eq:
            if not words:
                raise SweepError(f"{flag} needs a value")
            value = words.pop(0)
        if action.dest in SET_HERE:
            raise SweepError(f"{flag}: a sweep sets it for each member{SET_HERE[action.dest]}")
        numeric = action.type in (int, finite_float)
        if ":" in value and numeric and not ranges:
            raise SweepError(f"{flag} {value}: a range is for --search optuna; a grid takes a comma list")
        if ":" in value and numeric:
            values = [value]
            _range(action, flag, value)
        else:
            values = value.split(",")
            for one in values:
                _parse(action, flag, one)
        if len(values) > 1 or ":" in value and numeric:
            if action.dest in out.varied:
                raise SweepError(f"{flag} is given twice")
            out.varied[action.dest], out.flags[action.dest] = values, flag
        else:
            out.fixed += [flag, value]
    return out


def plan(
    parser: argparse.ArgumentParser,
    argv: list[str],
    *,
    seeds: int = 1,
    group: str | None = None,
    shard: tuple[int, int] | None = None,
) -> Sweep:
    """The sweep of a `mirante train` command line (`argv`, as `parser` reads it) in which options hold comma lists.

    The grid is their cartesian product, in the order the options were given, times seeds 0..seeds-1. With
    `shard` (I, N), only the members whose index is I modulo N.
    """
    if seeds < 1:
        raise SweepError(f"--seeds must be at least 1, got {seeds}")
    options = read_options(parser, argv)
    swept, flags = options.varied, options.flags
    if not swept and seeds == 1:
        raise SweepError("nothing to sweep: give an option a comma list (--lr 0.01,0.1) or --seeds N")
    group = group or "sweep-" + ("-".join(dest.replace("_", "") for dest in swept) or "seeds")
    grid = list(itertools.product(*swept.values()))
    members = []
    for index, (point, seed) in enumerate(itertools.product(grid, range(seeds))):
        values = dict(zip(swept, point, strict=True))
        name = "_".join([group, *(f"{dest.replace('_', '')}{v}" for dest, v in values.items()), f"s{seed}"])
        argv_member = [*options.fixed, *(w for dest, v in values.items() for w in (flags[dest], v))]
        argv_member += ["--seed", str(seed), "--name", _safe(name), "--group", group]
        argv_member += ["--swept", ",".join(f"{dest}={v}" for dest, v in values.items())]
        members.append(Member(index, _safe(name), values, seed, argv_member))
    if shard is not None:
        i, n = shard
        members = [m for m in members if m.index % n == i]
    return Sweep(group, list(swept), members)


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise SweepError(f"--shard {text}: expected I/N with 0 <= I < N, for example --shard 0/4")
    return int(match[1]), int(match[2])


def status(runs_dir: str | Path, member: Member) -> str | None:
    """The member's run status as its store has it; None when it has no store."""
    path = Path(runs_dir) / f"{member.name}{SUFFIX}"
    if not path.exists():
        return None
    try:
        with RunReader(path) as run:
            return run.status()
    except StoreError:
        return "unreadable"


def todo(sweep: Sweep, runs_dir: str | Path) -> list[Member]:
    """The members still to run: without a store, or whose run did not end finished or failed."""
    return [m for m in sweep.members if status(runs_dir, m) not in DONE]


def _parse(action: argparse.Action, flag: str, value: str) -> None:
    if value == "":
        raise SweepError(f"{flag}: an empty value in its list")
    try:
        parsed = action.type(value) if action.type is not None else value
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise SweepError(f"{flag} {value}: {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        raise SweepError(f"{flag} {value}: choose from {', '.join(map(str, action.choices))}")


def _range(action: argparse.Action, flag: str, value: str) -> tuple[float, float, bool]:
    """LO:HI or LO:HI:log of a numeric option, checked: (lo, hi, log)."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise SweepError(f"{flag} {value}: a range is LO:HI or LO:HI:log")
    for one in parts[:2]:
        _parse(action, flag, one)
    lo, hi = float(parts[0]), float(parts[1])
    log = len(parts) == 3
    if not lo < hi or (log and lo <= 0):
        raise SweepError(f"{flag} {value}: a range needs LO < HI (and LO > 0 on a log scale)")
    return lo, hi, log


def _safe(name: str) -> str:
    """A run name from a member's values: characters a run name may not hold become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# --- running the members ---------------------------------------------------------------------------


def command(member: Member, runs_dir: Path) -> list[str]:
    """The `mirante train --headless` command line of a member: from its checkpoint where an earlier try left one
    (interrupted, or crashed after an epoch), else from the start (an earlier try's store kept aside)."""
    store = runs_dir / f"{member.name}{SUFFIX}"
    base = [sys.executable, "-m", "tui.cli", "train", "--headless"]
    if (runs_dir / f"{member.name}.ckpt" / "last.pt").exists() and store.exists():
        return [*base, "--resume", member.name, "--runs-dir", str(runs_dir)]
    if store.exists():
        set_aside(store)
    return [*base, *member.argv]


def set_aside(store: Path) -> Path:
    """Move an earlier try's store (and its SQLite side files) out of the runs: NAME.mirante.try-N."""
    n = 1
    while store.with_name(f"{store.name}.try-{n}").exists():
        n += 1
    aside = store.with_name(f"{store.name}.try-{n}")
    for side in ("-wal", "-shm"):
        if store.with_name(store.name + side).exists():
            store.with_name(store.name + side).rename(aside.with_name(aside.name + side))
    store.rename(aside)
    return aside


def outcome(store: Path) -> str:
    """A member's end in a line: its status, best validation accuracy and wall time (or why it failed)."""
    try:
        with RunReader(store) as run:
            summary = run.summary()
            ended = run.events_of("RunEnded", limit=1)
    except StoreError as exc:
        return f"no run recorded ({exc})"
    said = [summary.status]
    if summary.best_val_acc is not None:
        said.append(f"best val acc {100 * summary.best_val_acc:.2f}%")
    if summary.duration is not None:
        said.append(f"{summary.duration:.0f} s")
    if ended and ended[-1].status != "finished" and ended[-1].reason:
        said.append(ended[-1].reason)
    return ", ".join(said)


def run(
    members: list[Member],
    runs_dir: Path,
    parallel: int = 1,
    report: Callable[[str], None] = print,
    gpus: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Train `members`, `parallel` at once, each `mirante train --headless` in a child (its output in
    runs_dir/NAME.log), saying one line as each ends. A member that fails does not stop the others. Ctrl-C: the
    running members stop (they get the same SIGINT and end interrupted, with a checkpoint), the rest are not
    started; returns 130 then, else 0. Run in a thread, it stops so when `stop` is set (the members got the
    Ctrl-C themselves). With `gpus` > 1 each member sees one GPU, round robin."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    waiting = list(members)
    running: list[tuple[Member, subprocess.Popen, Any]] = []
    started = 0
    interrupted = False
    try:
        while waiting or running:
            if stop is not None and stop.is_set() and not interrupted:  # Ctrl-C in the thread that runs the sweep
                interrupted = True
                report(f"stopping: {len(running)} running members end interrupted, {len(waiting)} not started")
            while waiting and len(running) < parallel and not interrupted:
                member = waiting.pop(0)
                env = dict(os.environ)
                if gpus and gpus > 1:
                    env["CUDA_VISIBLE_DEVICES"] = str(started % gpus)
                log = open(runs_dir / f"{member.name}.log", "ab")  # noqa: SIM115 (closed when the member ends)
                running.append(
                    (member, subprocess.Popen(command(member, runs_dir), stdout=log, stderr=log, env=env), log)
                )
                started += 1
            for entry in list(running):
                member, process, log = entry
                if process.poll() is not None:
                    log.close()
                    running.remove(entry)
                    report(f"{member.name}: {outcome(runs_dir / f'{member.name}{SUFFIX}')}")
            time.sleep(0.2)
    except KeyboardInterrupt:  # the members got it too: wait for them to stop with their checkpoints
        interrupted = True
        report(f"stopping: {len(running)} running members end interrupted, {len(waiting)} not started")
        for member, process, log in running:
            _wait(process)
            log.close()
            report(f"{member.name}: {outcome(runs_dir / f'{member.name}{SUFFIX}')}")
    return 130 if interrupted else 0


def _wait(process: subprocess.Popen) -> None:
    """Wait for a member through further Ctrl-Cs (each passes on to it: the second aborts it)."""
    while True:
        try:
            process.wait()
            return
        except KeyboardInterrupt:
            continue
