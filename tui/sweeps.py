"""`mirante sweep` and `mirante lab`: many runs from one command (engine.sweep, engine.search, engine.lab),
watched in the compare view or reported a line each; their command-line parts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from engine.store import SUFFIX
from tui.cli import RUNS_DIR, CliError, Parser, print_runs


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The sweep and lab subcommands."""
    sw = sub.add_parser(
        "sweep",
        allow_abbrev=False,  # --seed is train's, not short for --seeds
        help="train every combination of options given comma lists, one run each",
        description="Run a grid: any option of `mirante train` given a comma list (--lr 0.01,0.1 --momentum "
        "0.5,0.9) is swept, and every combination is trained, times --seeds, each an ordinary run named "
        "GROUP_VALUES_sSEED in --runs-dir whose config records its group and values. Members that finished (or "
        "failed) are not run again: repeat the command to finish an interrupted sweep. Ctrl-C stops it: the "
        "running members end interrupted, the rest are not started. At the end, the table of runs, the best "
        "first. Takes every option of `mirante train`.",
    )
    sw.add_argument("--seeds", type=int, default=1, metavar="N", help="each point of the grid with seeds 0..N-1")
    sw.add_argument("--group", default=None, help="the sweep's name (default: sweep-KEYS, from the swept options)")
    sw.add_argument("--parallel", type=int, default=1, metavar="K", help="members trained at once (default 1; "
                    "with several GPUs, one each, round robin)")  # fmt: skip
    sw.add_argument("--shard", default=None, metavar="I/N", help="only the members whose index is I modulo N: "
                    "N machines sharing the runs directory cover the sweep between them")  # fmt: skip
    sw.add_argument("--yes", action="store_true", help=f"run a grid of more than {100} members")
    sw.add_argument("--search", choices=("optuna",), default=None, help="not a grid: Optuna picks each trial's "
                    "values from ranges (--lr 1e-4:1:log, --batch-size 32:256) and lists, and its median pruner "
                    "stops poor trials early (pip install 'mirante[optuna]')")  # fmt: skip
    sw.add_argument("--trials", type=int, default=None, metavar="N", help="--search: trials to run in all")
    sw.add_argument("--storage", default=None, metavar="URL", help="--search: the study's storage, which several "
                    "machines may share (default: sqlite:///RUNS_DIR/optuna.db)")  # fmt: skip
    sw.add_argument("--prune-after", type=int, default=2, metavar="N", help="--search: trials that complete "
                    "before the pruner may stop one (default 2)")  # fmt: skip
    sw.add_argument("--headless", action="store_true", help="no compare view: a line per member, then the table "
                    "(always so when stdout is not a terminal)")  # fmt: skip
    sw.set_defaults(func=cmd_sweep, train_options=[])

    lb = sub.add_parser(
        "lab",
        allow_abbrev=False,
        help="the lecture's experiments, ready to run on shapes on a CPU",
        description="Run one of the lecture's experiments: a few ordinary runs on the built-in shapes data, "
        "each testing one of its claims (mirante lab --list), run and shown as a sweep is. Any option of "
        "`mirante train` after the lab's name overrides its presets (--steps, --epochs, --device...).",
    )
    lb.add_argument("lab", nargs="?", help="the experiment: lr, momentum, batch, activation, skip, optimizer, init, "
                    "regularization, loss, separable, seeds")  # fmt: skip
    lb.add_argument("--list", action="store_true", help="each lab, its runs and the lecture's claim it tests")
    lb.add_argument("--parallel", type=int, default=1, metavar="K", help="runs trained at once (default 1)")
    lb.add_argument("--headless", action="store_true", help="no compare view: a line per run, then the table")
    lb.set_defaults(func=cmd_lab)


def train_options(prog: str) -> argparse.ArgumentParser:
    """The options of `mirante train`, for reading a sweep's or a lab's command lines."""
    from engine.config import add_arguments

    train = Parser(prog=prog, add_help=False)
    add_arguments(train)
    return train


def cmd_sweep(args: argparse.Namespace) -> int:
    from engine import sweep as sw

    train = train_options("mirante sweep")
    if args.parallel < 1:
        raise CliError(f"--parallel must be at least 1, got {args.parallel}")
    if args.search is not None:
        return search(args, train)
    try:
        shard = sw.parse_shard(args.shard) if args.shard else None
        whole = sw.plan(train, args.train_options, seeds=args.seeds, group=args.group)
        plan = sw.plan(train, args.train_options, seeds=args.seeds, group=args.group, shard=shard)
    except sw.SweepError as exc:
        raise CliError(str(exc)) from None
    if len(whole.members) > sw.MAX_MEMBERS and not args.yes:
        raise CliError(f"{len(whole.members)} members (more than {sw.MAX_MEMBERS}): say --yes to run them all")
    return carry_out(plan, train, args, f" (shard {args.shard} of {len(whole.members)})" if shard else "")


def search(args: argparse.Namespace, train: argparse.ArgumentParser) -> int:
    """`mirante sweep --search optuna`: trials of ranges and lists picked by Optuna, poor ones pruned."""
    from engine import search as se
    from engine import sweep as sw
    from engine.config import from_args

    if args.trials is None or args.trials < 1:
        raise CliError("--search optuna needs --trials N (N at least 1)")
    if args.shard or args.seeds != 1:
        raise CliError("--shard and --seeds are a grid's: several machines share a search through --storage")
    try:
        fixed, searched, flags = se.space(train, args.train_options)
    except sw.SweepError as exc:
        raise CliError(str(exc)) from None
    lowest = [w for dest, spec in searched.items() for w in (flags[dest], str(spec[1]))]  # a trial, checked
    config = from_args(train.parse_args([*fixed, *lowest]))
    runs_dir = Path(config.runs_dir)
    group = args.group or "search-" + "-".join(dest.replace("_", "") for dest in searched)
    if args.storage is None:
        runs_dir.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(runs_dir / 'optuna.db').resolve()}"
    try:
        se.study(group, storage, args.prune_after)  # Optuna there, the storage reachable: before any trial
    except sw.SweepError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # whatever the storage's driver raises: said in a line
        raise CliError(f"--storage {storage}: {str(exc).splitlines()[0]}") from None
    print(f"search {group}: {args.trials} trials of {', '.join(searched)} in {storage}", flush=True)

    def work(report: Callable[[str], None], stop) -> int:
        return se.run(group, fixed, searched, flags, args.trials, runs_dir, storage, parallel=args.parallel,
                      prune_after=args.prune_after, report=report, stop=stop)  # fmt: skip

    if args.headless or not sys.stdout.isatty():
        code = work(lambda line: print(line, flush=True), None)
    else:
        code = in_view(work, runs_dir, keep=lambda path: path.name.startswith(f"{group}_t"))
    print(se.best(group, storage), flush=True)
    return code


def cmd_lab(args: argparse.Namespace) -> int:
    from engine import lab

    if args.list or args.lab is None:
        print(lab.listing())
        return 0
    if args.parallel < 1:
        raise CliError(f"--parallel must be at least 1, got {args.parallel}")
    try:
        plan = lab.plan(args.lab, args.train_options)
    except lab.LabError as exc:
        raise CliError(str(exc)) from None
    train = train_options("mirante lab")
    for word in args.train_options:  # an option the lab cannot take: one line, before anything starts
        flag = word.partition("=")[0]
        if flag.startswith("--") and flag not in {f for a in train._actions for f in a.option_strings}:
            raise CliError(f"unknown option {word!r} (see: mirante train --help)")
    print(f"lab {args.lab}: {lab.LABS[args.lab].claim}", flush=True)
    return carry_out(plan, train, args)


def carry_out(plan, train: argparse.ArgumentParser, args: argparse.Namespace, said: str = "") -> int:
    """Run the members of a sweep (or a lab) that have not run yet: in the compare view in a terminal, else a line
    per member; then the table of runs, the best first."""
    from engine import compare
    from engine import sweep as sw
    from engine.config import from_args

    configs = [from_args(train.parse_args(m.argv)) for m in plan.members]  # every member valid before any starts
    runs_dir = Path(configs[0].runs_dir) if configs else RUNS_DIR
    pending = sw.todo(plan, runs_dir)
    done = len(plan.members) - len(pending)
    print(f"{plan.group}: {len(plan.members)} members{said}, {done} done, {len(pending)} to run", flush=True)
    gpus = _gpus() if args.parallel > 1 else None
    if args.headless or not sys.stdout.isatty():
        code = sw.run(pending, runs_dir, args.parallel, report=lambda line: print(line, flush=True), gpus=gpus)
    else:
        names = {m.name for m in plan.members}
        work = lambda report, stop: sw.run(pending, runs_dir, args.parallel, report, gpus, stop)  # noqa: E731
        code = in_view(work, runs_dir, keep=lambda path: path.name.removesuffix(SUFFIX) in names)
    rows = [compare.read_row(p) for p in (runs_dir / f"{m.name}{SUFFIX}" for m in plan.members) if p.exists()]
    rows.sort(key=lambda r: (r.best_val_acc is None, -(r.best_val_acc or 0.0)))
    if rows:
        print()
        print_runs(rows)
    return code


def in_view(work: Callable, runs_dir: Path, keep: Callable[[Path], bool]) -> int:
    """Run `work(report, stop)` (a sweep's or a search's runs) in a thread while the compare view shows the runs
    that `keep` takes, live (each joins as its store appears); each run's end is said in the status line.
    Leaving the view (q) leaves the work going here, a line per run; Ctrl-C then stops it."""
    import threading

    from tui.sources import CompareSource

    stop, lines, ended = threading.Event(), [], {}
    app = None

    def report(line: str) -> None:
        if app is not None and app.is_running:
            app.call_from_thread(app.tell, line)
            lines.append(line)
        else:
            print(line, flush=True)

    runner = threading.Thread(target=lambda: ended.setdefault("code", work(report, stop)), name="sweep", daemon=True)
    runner.start()
    stores = sorted(p for p in runs_dir.glob(f"*{SUFFIX}") if keep(p)) if runs_dir.is_dir() else []
    source = CompareSource(stores, watch=[runs_dir], keep=keep)
    from tui.app import MiranteApp

    app = MiranteApp(source.prefetch())
    app.run()
    print("\n".join(lines), flush=True)
    if runner.is_alive():
        print("the sweep goes on here (Ctrl-C stops it; mirante compare shows it again)", flush=True)
    while runner.is_alive():
        try:
            runner.join(0.2)
        except KeyboardInterrupt:  # the runs got it too
            stop.set()
    return ended.get("code", 130)


def _gpus() -> int:
    """CUDA devices this machine has (0 without torch's CUDA): a parallel sweep gives each member one."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
