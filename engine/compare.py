"""The table of runs a compare shows: which runs, what differs in their configs, and each run's figures.

Read from the stores only (no torch): `mirante compare --format csv|json` prints it, the compare view
shows it. A run is named by the config keys on which the runs differ (`lr=0.5`), not by its file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from engine.names import SUFFIX, find_run
from engine.store import RunReader, StoreError, find_runs
from engine.store.reader import start_time

# config entries that are bookkeeping, follow from others, or set how the run is watched rather than trained:
# never what a compare is about
NOT_COMPARED = frozenset(
    {
        "name",
        "runs_dir",
        "data_dir",
        "resumed_at_step",
        "discarded_events",
        "diagnostics",
        "steps_per_epoch",
        "total_steps",
        "batch_per_rank",
        "backend",
        "log_every",
        "probe_every",
        "update_every",
        "capture_every",
        "capture_layer",
        "peak_tflops",
        "workers",
        "group",
        "swept",
    }
)
LABEL_KEYS = 3  # a run is named by at most this many config keys in legends (the table has them all)
# the keys a run's name shows first when the runs differ in many: what a person changes first
WEIGHTY = ("model", "dataset", "optimizer", "lr", "momentum", "batch_size", "activation", "seed", "epochs", "steps")
FIGURES = ("status", "best val acc", "best epoch", "final train loss", "img/s", "wall s", "worst")  # in a table
LEVELS = {"fail": 2, "warn": 1}  # the findings a table of runs reports; ok and info are not problems


class CompareError(Exception):
    """A RUN that names no run store (said in one line)."""


@dataclass
class RunRow:
    """One run of a compare: its config and the figures the table shows."""

    path: Path
    name: str
    model: str
    dataset: str
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    final_train_loss: float | None = None
    img_per_s: float | None = None  # the median of the throughputs recorded
    wall_s: float | None = None
    worst: str | None = None  # the worst diagnostic the run recorded: "fail divergence"
    error: str | None = None  # why the store could not be read; the row is then empty


def resolve(runs: list[str], runs_dir: str | Path = "runs", last: int | None = None) -> list[Path]:
    """The stores that RUN arguments name: a store, a run name in `runs_dir`, or a directory (all its runs); with
    none, the runs in `runs_dir`. `last` keeps the newest N. Each store once, in the order given."""
    paths: list[Path] = []
    for run in runs or [str(runs_dir)]:
        if Path(run).is_dir():
            try:
                found = find_runs(run)
            except StoreError as exc:
                raise CompareError(str(exc)) from None
            paths += sorted(found, key=lambda p: (start_time(p), p.name))  # oldest first, as they were run
            continue
        path = find_run(run, runs_dir)
        if path is None:
            raise CompareError(f"{run}: no such run (not a store, a directory, or a run in {runs_dir}/)")
        paths.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    if last is not None:
        unique = sorted(unique, key=start_time)[-last:] if last > 0 else []
    return unique


def read_row(path: Path) -> RunRow:
    """The figures of the run in `path`; a store that cannot be read gives a row that says why."""
    try:
        with RunReader(path) as run:
            summary = run.summary()
            started = run.started()
            epochs = run.epochs()
            _, losses = run.scalars("train/loss")
            _, throughput = run.scalars("throughput/img_s")
            diagnostics = run.events_of("Diagnostic")
    except StoreError as exc:
        return RunRow(path, path.name.removesuffix(SUFFIX), "?", "?", "unreadable", error=str(exc))
    row = RunRow(
        path=path,
        name=summary.name,
        model=summary.model,
        dataset=summary.dataset,
        status=summary.status,
        config=with_defaults(dict(started.config)) if started is not None else {},
        steps=summary.steps,
        wall_s=summary.duration,
    )
    scored = [e for e in epochs if e.val_acc is not None and math.isfinite(e.val_acc)]
    if scored:
        best = max(scored, key=lambda e: e.val_acc)  # the first epoch that reached it
        row.best_val_acc, row.best_epoch = best.val_acc, best.epoch
    finite = losses[np.isfinite(losses)]
    row.final_train_loss = float(finite[-1]) if len(finite) else None
    rates = throughput[np.isfinite(throughput)]
    row.img_per_s = float(np.median(rates)) if len(rates) else None
    problems = [d for d in diagnostics if d.level in LEVELS]
    if problems:
        worst = max(problems, key=lambda d: (LEVELS[d.level], -d.seq))  # the earliest of the worst
        row.worst = f"{worst.level} {worst.code}"
    return row


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config with every option of `mirante train` it lacks at its default: a run recorded before an option
    existed was trained as the option's default trains, and does not differ from a newer run in it."""
    from engine.config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return {**{k: v for k, v in defaults.items() if k not in NOT_COMPARED}, **config}


def differing_keys(rows: list[RunRow]) -> list[str]:
    """The config keys whose values are not the same in every readable run (a key one run lacks counts), sorted."""
    configs = [r.config for r in rows if r.error is None]
    keys = sorted({k for c in configs for k in c} - NOT_COMPARED)
    return [k for k in keys if len({text(c.get(k)) for c in configs}) > 1]


def label(row: RunRow, keys: list[str]) -> str:
    """A run's name in a compare: its values of the differing keys (`lr=0.5 momentum=0.9`); its name when none
    differ or more than LABEL_KEYS do."""
    if row.error is not None or not keys or len(keys) > LABEL_KEYS:
        return row.name
    return " ".join(f"{k}={text(row.config.get(k)) or 'none'}" for k in keys)


def labels(rows: list[RunRow], keys: list[str]) -> list[str]:
    """Each run's name in a compare: its values of the differing keys, or where they are more than LABEL_KEYS, of
    the weightiest keys that tell the runs apart (the model first, then the learning rate, ...: a key is taken when
    it splits runs that the keys taken so far leave together, up to LABEL_KEYS). Every run is named by the same
    keys; a run those keys do not tell from another run of another config is named by its name."""
    config = [k for k in _all_keys(rows) if k != "seed" or "seed" in keys]  # (seedless labels: seeds may differ)
    if len(keys) > LABEL_KEYS:
        keys = telling_keys(rows, keys)
    named = [label(r, keys) for r in rows]
    out = list(named)
    for i, name in enumerate(named):
        same = [j for j, other in enumerate(named) if other == name and j != i]
        if any(_values(rows[i], config) != _values(rows[j], config) for j in same):
            out[i] = rows[i].name
    return out


def telling_keys(rows: list[RunRow], keys: list[str]) -> list[str]:
    """At most LABEL_KEYS of `keys`, the weightiest first, each splitting runs the ones before it left together."""
    readable = [r for r in rows if r.error is None]
    chosen: list[str] = []
    groups = len({tuple(_values(r, chosen)) for r in readable})
    for key in sorted(keys, key=lambda k: (WEIGHTY.index(k) if k in WEIGHTY else len(WEIGHTY), k)):
        split = len({tuple(_values(r, [*chosen, key])) for r in readable})
        if split > groups:
            chosen, groups = [*chosen, key], split
        if len(chosen) == LABEL_KEYS:
            break
    return chosen


def _all_keys(rows: list[RunRow]) -> list[str]:
    return sorted({k for r in rows for k in r.config} - NOT_COMPARED)


def _values(row: RunRow, keys: list[str]) -> list[str]:
    return [text(row.config.get(k)) for k in keys]


def matches(row: RunRow, where: list[str]) -> bool:
    """Whether the run's config has every KEY=VALUE of `where` (numbers compared as numbers: 0.1 = 1e-1)."""
    for condition in where:
        key, _, value = condition.partition("=")
        if not _same(row.config.get(key.strip()), value.strip()):
            return False
    return True


def parse_where(where: list[str]) -> list[str]:
    for condition in where:
        if "=" not in condition or not condition.partition("=")[0].strip():
            raise CompareError(f"--where {condition!r}: expected KEY=VALUE, for example --where lr=0.1")
    return where


def table(rows: list[RunRow]) -> tuple[list[str], list[list[Any]]]:
    """The header and the rows of the table of runs: the differing keys first, then the figures."""
    keys = differing_keys(rows)
    header = ["run", *keys, *FIGURES]
    body = []
    for r in rows:
        config = [r.config.get(k) for k in keys]
        body.append(
            [r.name, *config, r.status, r.best_val_acc, r.best_epoch, r.final_train_loss, r.img_per_s, r.wall_s]
            + [r.worst or r.error]
        )
    return header, body


def to_csv(rows: list[RunRow]) -> str:
    header, body = table(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for line in body:
        writer.writerow(["" if v is None else text(v) for v in line])
    return out.getvalue()


def to_json(rows: list[RunRow]) -> str:
    """{"differing": [keys], "runs": [each run's row, its config whole]}; NaN and infinities as null."""
    keys = differing_keys(rows)
    names = labels(rows, keys)
    runs = [_finite(asdict(r) | {"path": str(r.path), "label": name}) for r, name in zip(rows, names, strict=True)]
    return json.dumps({"differing": keys, "runs": runs}, indent=1, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def hms(seconds: float | None) -> str:
    """A duration as h:mm:ss ("-" when unknown)."""
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def cell(column: str, value: Any) -> str:
    """A value of the table of runs as a person reads it: 96.80%, 0:01:05, 1,234 img/s, 0.1234."""
    if value is None:
        return "-"
    if column == "best val acc":
        return f"{100 * value:.2f}%"
    if column == "wall s":
        return hms(value)
    if column == "img/s":
        return f"{value:,.0f}"
    if column == "final train loss":
        return f"{value:.4g}"
    return text(value)


def text(value: Any) -> str:
    """A config value as the table writes it: 0.1, sgd, [30, 60], true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _same(value: Any, wanted: str) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value) == float(wanted)
        except ValueError:
            return False
    return text(value) == wanted


# --- curves: the x axis, and runs that differ only by their seed ---------------------------------------------

AXES = ("step", "epoch", "samples", "wall")  # batch-size comparisons are fair by samples seen or by epochs


def x_of(
    steps: np.ndarray, axis: str, config: dict[str, Any], clock: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray | None:
    """`steps` as the x of `axis`: the step, the epoch (step / steps per epoch), the samples seen (step x the
    global batch size) or the seconds since the run's first step (from `clock`, the run's `step_walls()`); None
    when the run does not say (a Monitor run that gave no batch size, a run with no steps)."""
    if axis == "step":
        return steps.astype(np.float64)
    if axis == "wall":
        if clock is None or not len(clock[0]):
            return None
        at, walls = clock
        return np.interp(steps, at, walls) - walls[0]
    per = {"epoch": config.get("steps_per_epoch"), "samples": config.get("batch_size")}[axis]
    if not isinstance(per, (int, float)) or isinstance(per, bool) or per <= 0:
        return None
    return steps / per if axis == "epoch" else steps * float(per)


def seed_groups(rows: list[RunRow]) -> list[list[int]]:
    """The runs (indices into `rows`) grouped by config with the seed left out: runs that differ only in --seed
    are one group, drawn as one line with a band. Groups in the order of their first run."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.error is not None:
            groups[f"unreadable {i}"] = [i]
            continue
        config = {k: text(v) for k, v in row.config.items() if k != "seed" and k not in NOT_COMPARED}
        key = json.dumps([row.model, row.dataset, config], sort_keys=True)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def seedless_labels(rows: list[RunRow], keys: list[str]) -> list[str]:
    """Each run's label with the seed left out: the name of the seed group it is in."""
    told = telling_keys(rows, keys) if len(keys) > LABEL_KEYS else keys  # the keys the runs' own labels show
    shown = [k for k in told if k != "seed"]
    return labels(rows, shown) if shown else [r.name for r in rows]


def group_label(group: list[int], names: list[str], seedless: list[str]) -> str:
    """A group's name in a legend: a run alone by its label (`names`), runs that differ only by seed by their label
    without the seed and how many seeds (`lr=0.1 x3 seeds`)."""
    return names[group[0]] if len(group) == 1 else f"{seedless[group[0]]} x{len(group)} seeds"


def band(curves: list[tuple[np.ndarray, np.ndarray]], points: int = 200) -> tuple[np.ndarray, ...]:
    """(x, mean, low, high) of several curves (x, y) over the x range they all cover, each interpolated on one
    grid of `points`; a curve's NaN and infinities are left out of the mean there, not spread by interpolation."""
    covered = [(x, y) for x, y in curves if len(x)]
    if not covered:
        empty = np.empty(0)
        return empty, empty, empty, empty
    lo_x, hi_x = max(float(x[0]) for x, _ in covered), min(float(x[-1]) for x, _ in covered)
    if hi_x < lo_x:  # the curves share no stretch of x
        empty = np.empty(0)
        return empty, empty, empty, empty
    grid = np.linspace(lo_x, hi_x, points) if hi_x > lo_x else np.array([lo_x])
    stack = []
    for x, y in covered:
        finite = np.isfinite(y)
        values = np.interp(grid, x[finite], y[finite]) if finite.any() else np.full(len(grid), np.nan)
        stack.append(values)
    ys = np.vstack(stack)
    with warnings.catch_warnings():  # a column where no curve has a value: NaN there, said by the NaN itself
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
