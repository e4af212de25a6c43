"""The `mirante` command: subcommands, argument parsing, and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from engine.compare import hms
from engine.config import ConfigError, finite_float
from engine.export import printable
from engine.names import RunNameError, find_run, store_path
from engine.store import SUFFIX, RunReader, RunSummary, StoreError, find_runs
from tui.graphics import ENV as IMAGES_ENV
from tui.graphics import MODES as IMAGE_MODES
from tui.graphics import GraphicsError

EXIT_USAGE = 2
RUNS_DIR = Path("runs")


class CliError(Exception):
    """Bad input: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, as every other bad input (`mirante train --help` has the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"mirante: error: {message} (see: {self.prog} --help)\n")


def resolve_run(run: str) -> Path:
    """A run given as a path, or as a name in ./runs (with or without the suffix)."""
    path = find_run(run, RUNS_DIR)
    if path is not None:
        return path
    raise CliError(f"{run}: no such run (not a file, and not a run in {RUNS_DIR}/)")


# --- ls ----------------------------------------------------------------------------------

LS_COLUMNS = ("name", "model", "dataset", "status", "steps", "best val acc", "duration", "started")


def _ls_row(s: RunSummary) -> tuple[str, ...]:
    started = "-" if s.started is None else dt.datetime.fromtimestamp(s.started).strftime("%Y-%m-%d %H:%M")
    acc = "-" if s.best_val_acc is None else f"{100 * s.best_val_acc:.2f}%"
    cells = (s.path.stem, s.model, s.dataset, s.status, f"{s.steps:,}", acc, hms(s.duration), started)
    return tuple(printable(c) for c in cells)  # a store's strings may hold escape sequences: shown, not obeyed


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned columns: readable in a terminal, easy to grep and cut in a pipe."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def cmd_ls(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if directory.is_file():
        paths = [directory]
    else:
        try:
            paths = find_runs(directory)
        except StoreError as exc:
            raise CliError(str(exc)) from None
    if not paths:
        print(f"no runs in {directory}/ (run stores are *{SUFFIX} files)")
        return 0
    rows = []
    for path in paths:
        try:
            with RunReader(path) as run:
                summary = run.summary()
            rows.append(_ls_row(summary))
            if summary.missing:
                events = "event" if summary.missing == 1 else "events"
                print(
                    f"mirante: {printable(str(path))}: damaged run store: {summary.missing} {events} missing "
                    "from the sequence",
                    file=sys.stderr,
                )
        except StoreError as exc:
            print(f"mirante: {printable(str(exc))}", file=sys.stderr)
            rows.append((printable(path.stem), "-", "-", "unreadable", "-", "-", "-", "-"))
    print(format_table(LS_COLUMNS, rows))
    return 0


# --- compare -----------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    from engine import compare

    try:
        where = compare.parse_where(args.where)
        paths = compare.resolve(args.runs, runs_dir=args.runs_dir, last=args.last)
    except compare.CompareError as exc:
        raise CliError(str(exc)) from None
    rows = [r for r in map(compare.read_row, paths) if r.error is not None or compare.matches(r, where)]
    if not rows:
        print("no runs to compare" + (f" with {' '.join(args.where)}" if args.where else ""))
        return 0
    if all(row.error is not None for row in rows):  # nothing to compare: say why, as for one bad run
        raise CliError(printable(rows[0].error or ""))
    if args.format is None and not args.headless and sys.stdout.isatty():
        return open_compare(rows, args)
    for row in rows:
        if row.error is not None:
            print(f"mirante: {printable(row.error)}", file=sys.stderr)
    if args.format == "json":
        print(compare.to_json(rows))  # JSON escapes every control character itself
    elif args.format == "csv":
        print("\n".join(printable(line) for line in compare.to_csv(rows).splitlines()))
    else:
        print_runs(rows)
    return 0


def print_runs(rows: list) -> None:
    """The table of runs (engine.compare.RunRow), or a block per run in a terminal too narrow for its columns."""
    from engine import compare

    header, body = compare.table(rows)
    cells = [[printable(compare.cell(name, v)) for name, v in zip(header, line, strict=True)] for line in body]
    text = format_table(header, cells)
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    if width is not None and max(map(len, text.splitlines())) > width:
        text = _run_blocks(header, cells, width)  # a row per run would wrap into a muddle: a block per run
    print(text)


def open_compare(rows: list, args: argparse.Namespace) -> int:
    """The compare view of the runs: each followed live; a directory given is watched for runs that appear in it."""
    from engine import compare
    from tui.sources import CompareSource

    where = compare.parse_where(args.where)

    def keep(path: Path) -> bool:  # a run that appears in a watched directory: read only when there is a filter
        return not where or compare.matches(compare.read_row(path), where)

    watch = [Path(run) for run in args.runs or [args.runs_dir] if Path(run).is_dir()]
    source = CompareSource([row.path for row in rows], watch=watch, keep=keep).prefetch()
    from tui.app import MiranteApp

    return MiranteApp(source).run() or 0


def _run_blocks(header: list[str], cells: list[list[str]], width: int) -> str:
    """The table of runs as a block per run, for a terminal too narrow for its columns: the run and its differing
    keys, then its figures, wrapped to `width`."""
    keys = header[1 : header.index("status")]
    blocks = []
    for line in cells:
        value = dict(zip(header, line, strict=True))
        acc = value["best val acc"] + ("" if value["best epoch"] == "-" else f" (epoch {value['best epoch']})")
        figures = [value["status"], f"best val acc {acc}", f"final train loss {value['final train loss']}"]
        figures += [f"{value['img/s']} img/s", f"wall {value['wall s']}", f"worst: {value['worst']}"]
        blocks.append(_fill([value["run"] + " ", *(f"{k}={value[k]}" for k in keys)], "", width))
        blocks.append(_fill(figures, "  ", width, joint=" · "))
    return "\n".join(blocks)


def _fill(items: list[str], indent: str, width: int, joint: str = " ") -> str:
    """`items` joined and wrapped to `width`, each item kept whole on a line (where it fits)."""
    whole = [item.replace(" ", "\u00a0") for item in items]  # textwrap breaks lines only at ASCII spaces
    text = textwrap.fill(joint.join(whole), width, initial_indent=indent, subsequent_indent="    ")
    return text.replace("\u00a0", " ")


# --- export ------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from engine.export import export

    path = resolve_run(args.run)
    out_path = Path(args.output) if args.output else None
    if out_path is not None and out_path.resolve() == path.resolve():
        raise CliError(f"{out_path}: refusing to overwrite the run store itself")
    with RunReader(path) as run:
        if out_path is None:
            count = export(run, args.format, sys.stdout)
            sys.stdout.flush()
        else:
            tmp = out_path.with_name(out_path.name + ".partial")
            try:
                with open(tmp, "w", newline="") as out:
                    count = export(run, args.format, out)
                os.replace(tmp, out_path)
            except OSError as exc:
                raise CliError(f"{out_path}: cannot write ({exc.strerror})") from None
            finally:
                tmp.unlink(missing_ok=True)
            unit = "rows" if args.format == "csv" else "events"
            print(f"wrote {count:,} {unit} to {out_path}", file=sys.stderr)
    return 0


# --- train -------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from engine.config import explicit_options, from_args
    from tui.headless import train_headless

    config = from_args(args)
    overrides = None
    if args.resume is not None:
        given = explicit_options(args.parser, args.argv) - {"resume", "headless"}
        overrides = {k: v for k, v in vars(args).items() if k in given}
        if Path(args.resume).exists():  # a path to a store
            store = resolve_run(args.resume)
            store = store if store.suffix == SUFFIX else store.with_name(store.name + SUFFIX)
        else:  # the name of a run in --runs-dir
            try:
                store = store_path(config.runs_dir, args.resume.removesuffix(SUFFIX))
            except RunNameError as exc:
                raise CliError(f"--resume: {exc}") from None
    else:
        config.name = config.run_name  # fixed here, so the child and this process agree on it
        store = store_path(config.runs_dir, config.name)
        if store.exists():
            raise CliError(f"{store}: a run with this name exists (--resume it, or choose another --name)")
    if args.nproc is not None:
        return train_distributed(args, config, store)
    if config.headless or not sys.stdout.isatty():
        return train_headless(config.to_dict(), str(store), args.resume, overrides)
    return train_in_app(config.to_dict(), store, args.resume, overrides)


def torchrun_command(args: argparse.Namespace, name: str) -> list[str]:
    """torchrun on this machine, `--nproc` processes, running `python -m engine.train` with the same options."""
    forwarded, words = [], list(args.argv[1:])  # argv[0] is "train"
    while words:
        word = words.pop(0)
        if word == "--nproc":
            words.pop(0)
        elif not word.startswith("--nproc="):
            forwarded.append(word)
    if args.resume is None and "--name" not in forwarded:
        forwarded += ["--name", name]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
    return [*launcher, "-m", "engine.train", *forwarded]


def train_distributed(args: argparse.Namespace, config, store: Path) -> int:
    """`mirante train --nproc N`: N processes under torchrun on this machine, one run; rank 0 records it.

    Headless (or piped), torchrun's output passes through and Ctrl-C stops every rank at the same step. In a
    terminal, torchrun runs in the background, its output in runs/NAME.log, and the app follows the store.
    """
    import subprocess

    if args.nproc < 1:
        raise CliError(f"--nproc must be at least 1, got {args.nproc}")
    from engine import control

    command = torchrun_command(args, config.name or store.stem)
    env = os.environ | {control.OWNER_ENV: control.owner_token()}  # rank 0 stops the run if this process dies
    if config.headless or not sys.stdout.isatty():
        process = subprocess.Popen(command, env=env)
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:  # the ranks got it too (same process group): they stop together
                continue
    from tui.app import MiranteApp
    from tui.sources import FollowSource

    store.parent.mkdir(parents=True, exist_ok=True)
    log = store.with_suffix(".log")
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    MiranteApp(FollowSource(store), store=store).run()
    if process.poll() is None:
        try:  # leaving the app leaves the run going: tell rank 0 before this process, its owner, is gone
            control.send(store, "detach", wait=30.0)  # (rank 0 may still be starting)
        except control.ControlError as exc:
            if process.poll() is None:  # the ranks would stop when this process exits: wait for them instead
                print(f"mirante: {exc}; training goes on while this waits (Ctrl-C stops it)", file=sys.stderr)
                return process.wait()
        print(
            f"training goes on ({args.nproc} processes, log {log}); watch it: mirante watch {store}; "
            f"stop it: mirante stop {store}",
            flush=True,
        )
        return 0
    return process.returncode


def train_in_app(config: dict, store: Path, resume: str | None, overrides: dict | None) -> int:
    """Train in a child process and watch it in the app; `q` stops it or detaches."""
    import time

    from engine.launch import settle, start_trainer
    from tui.app import MiranteApp
    from tui.sources import LiveSource

    since = time.time()
    child = start_trainer(config, resume, overrides, own_session=True)
    source = LiveSource(child.live, store, child.process, since=since)  # reads the queue so that nothing blocks on it
    app = MiranteApp(source, store=store, commands=child.commands)
    try:
        app.run()
    except BaseException:
        child.lifeline.close()  # the app failed: the trainer stops at its next interval instead of running on
        raise
    if app.detached:
        child.detach()  # on the lifeline: it reaches the trainer before the lifeline closes as this process exits
        print(f"detached: training goes on; come back with: mirante watch {store}; stop it: mirante stop {store}")
        sys.stdout.flush()
        os._exit(0)  # do not wait for the trainer, as multiprocessing would at exit
    child.process.join()
    code = child.process.exitcode
    died = source.died if source.done else settle(store, code, since).died  # the app left before the source ended
    if died is not None:
        print(f"mirante: error: {died}", file=sys.stderr)
        return 1
    return code if code is not None and code >= 0 else 1


# --- stop --------------------------------------------------------------------------------


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop a run training on this machine, from any terminal, and wait until it has ended."""
    from engine import control

    if args.timeout < 0:
        raise CliError(f"--timeout cannot be negative, got {args.timeout:g}")
    try:
        ended = control.stop(resolve_run(args.run), timeout=args.timeout)
    except control.ControlError as exc:
        raise CliError(str(exc)) from None
    print(printable(f"{args.run}: {ended.status} at step {ended.step}"))
    return 0


# --- lr-find -----------------------------------------------------------------------------


def cmd_lr_find(args: argparse.Namespace) -> int:
    """Sweep the learning rate exponentially, stop when the loss blows up, draw it and suggest a rate."""
    from engine.config import from_args
    from tui.headless import train_headless
    from tui.lrfind import report

    config = from_args(args)
    config.range_test = [args.min_lr, args.max_lr]
    config.schedule, config.warmup_steps = "none", 0
    config.name = config.name or config.default_name("lrfind-")
    config.validate()
    store = store_path(config.runs_dir, config.name)
    if store.exists():
        raise CliError(f"{store}: a run with this name exists (choose another --name)")
    if config.headless or not sys.stdout.isatty():
        code = train_headless(config.to_dict(), str(store))
    else:
        code = train_in_app(config.to_dict(), store, None, None)
    if store.exists():
        try:
            width = min(100, os.get_terminal_size().columns)
        except OSError:
            width = 80
        print(report(store, width=width, height=18, color=sys.stdout.isatty() and "NO_COLOR" not in os.environ))
    return code


# --- watch and replay --------------------------------------------------------------------


def newest_running(directory: Path = RUNS_DIR) -> Path:
    try:
        paths = find_runs(directory)
    except StoreError:
        paths = []
    for path in paths:
        try:
            with RunReader(path) as run:
                if run.status() == "running":
                    return path
        except StoreError:
            continue
    raise CliError(f"no running run in {directory}/ (give a run to watch)")


def cmd_watch(args: argparse.Namespace) -> int:
    from tui.sources import FollowSource

    path = resolve_run(args.run) if args.run else newest_running()
    if path.stat().st_size:  # not a run store: one line and exit 2 now, not an app showing an error
        RunReader(path).close()
    source = FollowSource(path).prefetch()  # the run opens while the app's modules load
    from tui.app import MiranteApp

    return MiranteApp(source, store=path, images=args.images).run() or 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tui.sources import ReplaySource

    if args.speed <= 0:
        raise CliError(f"--speed must be positive, got {args.speed}")
    path = resolve_run(args.run)
    source = ReplaySource(path, speed=args.speed, start=args.start).prefetch()  # opens while the app's modules load
    from tui.app import MiranteApp

    return MiranteApp(source, store=path, images=args.images).run() or 0


# --- main --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mirante",
        description="A terminal training monitor and profiler for PyTorch CNNs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = sub.add_parser("ls", help="list the runs in a directory", description="List the runs in a directory.")
    ls.add_argument("dir", nargs="?", default=str(RUNS_DIR), help=f"directory of runs (default: {RUNS_DIR}/)")
    ls.set_defaults(func=cmd_ls)

    cp = sub.add_parser(
        "compare",
        help="several runs side by side: their curves overlaid, what differs in their configs, how each did",
        description="Compare runs. In a terminal: their curves overlaid (named by what differs in their configs), "
        "the table of runs, and their layers side by side, live while they train. Otherwise, or with --format or "
        "--headless: a row per run with the config keys that differ between them, its status, best validation "
        "accuracy and its epoch, final train loss, images/s, wall time and worst finding.",
    )
    cp.add_argument("runs", nargs="*", metavar="RUN", help=f"a store, a run in {RUNS_DIR}/, or a directory of runs "
                    f"(default: {RUNS_DIR}/)")  # fmt: skip
    cp.add_argument("--last", type=int, metavar="N", help="only the N runs that started last")
    cp.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="only runs whose config "
                    "has this value (repeatable): --where lr=0.1")  # fmt: skip
    cp.add_argument("--format", "-f", choices=("table", "csv", "json"), help="print the table of runs in this "
                    "format and exit (in a terminal, the default is the compare view)")  # fmt: skip
    cp.add_argument("--headless", action="store_true", help="print the table of runs and exit, even in a terminal")
    cp.add_argument("--runs-dir", default=str(RUNS_DIR), help=f"where run names are looked up (default: {RUNS_DIR}/)")
    cp.set_defaults(func=cmd_compare)

    ex = sub.add_parser(
        "export",
        help="export a run to CSV or JSONL",
        description="Export a run. CSV: every number, one row each (seq, step, wall_time, kind, name, value). "
        "JSONL: every event, one JSON object per line (NaN and infinities as strings).",
    )
    ex.add_argument("run", help=f"a run store, or the name of a run in {RUNS_DIR}/")
    ex.add_argument("--format", "-f", choices=("csv", "jsonl"), default="csv")
    ex.add_argument("-o", "--output", help="file to write (default: standard output)")
    ex.set_defaults(func=cmd_export)

    from engine.catalog import models_help
    from engine.config import add_arguments

    tr = sub.add_parser(
        "train",
        help="train a CNN and record the run",
        description="Train a CNN, recording every event to runs/NAME.mirante. Models:\n" + models_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(tr)
    tr.add_argument("--resume", metavar="RUN", default=None, help="continue RUN from its last checkpoint")
    tr.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train with N processes on this machine (one per GPU; gloo on CPUs) through torchrun and "
        "DistributedDataParallel; --batch-size stays the global batch",
    )
    tr.set_defaults(func=cmd_train, parser=tr)

    lf = sub.add_parser(
        "lr-find",
        help="learning-rate range test: suggests a learning rate",
        description="Train from random weights while the learning rate grows exponentially from --min-lr to "
        "--max-lr (400 steps unless --steps), stop when the loss blows up, draw loss against learning rate, and "
        "suggest a rate: the smaller of where the smoothed loss falls fastest and a tenth of where it is lowest. "
        "Takes the options of `mirante train` "
        "(--lr and --schedule are ignored). Models:\n" + models_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(lf)
    lf.add_argument(
        "--min-lr", type=finite_float, default=1e-6, help="first learning rate of the sweep (default: 1e-6)"
    )
    lf.add_argument("--max-lr", type=finite_float, default=10.0, help="last learning rate of the sweep (default: 10)")
    lf.set_defaults(func=cmd_lr_find)

    from tui import sweeps

    sweeps.add_parsers(sub)

    wa = sub.add_parser("watch", help="attach to a run being written (or finished)", description="Attach to a run.")
    wa.add_argument("run", nargs="?", help=f"a run store or name (default: the newest running run in {RUNS_DIR}/)")
    add_images_option(wa)
    wa.set_defaults(func=cmd_watch)
    st = sub.add_parser(
        "stop",
        help="stop a run training on this machine, from any terminal",
        description="Ask a run that is training on this machine to stop (at its next logging interval, with a "
        "checkpoint to --resume from) and wait until it has ended. Works from any terminal of the user who "
        "started it, whether the run is in an app, detached, headless or under torchrun.",
    )
    st.add_argument("run", help=f"a run store, or the name of a run in {RUNS_DIR}/")
    st.add_argument("--timeout", type=finite_float, default=60.0, metavar="S", help="seconds to wait (default: 60)")
    st.set_defaults(func=cmd_stop)
    rp = sub.add_parser("replay", help="re-animate a saved run", description="Replay a saved run at a chosen speed.")
    rp.add_argument("run", help=f"a run store, or the name of a run in {RUNS_DIR}/")
    rp.add_argument("--speed", type=finite_float, default=10.0, help="times the recorded pace (default: 10)")
    rp.add_argument("--start", type=int, default=None, metavar="STEP", help="jump to STEP first, then replay on")
    add_images_option(rp)
    rp.set_defaults(func=cmd_replay)

    from tui import profile

    pr = sub.add_parser(
        "profile",
        help="params, MACs, FLOPs and times per layer",
        description="Params, MACs and FLOPs per layer (MACs are multiply-accumulates; FLOPs = 2 x MACs), "
        "forward and backward; with --time, times per layer, images/s and MFU on --device.",
    )
    profile.add_arguments(pr)
    pr.set_defaults(func=profile.main)

    from tui import visual

    vi = sub.add_parser(
        "visualize",
        help="what each filter of a layer responds to, from a run's checkpoint",
        description="For each filter of a layer, the input that maximises its mean activation (gradient ascent "
        "from noise, jittered, on the run's device), drawn here and stored into the run for replay and compare.",
    )
    visual.add_arguments(vi)
    vi.set_defaults(func=visual.main)
    return parser


def add_images_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        choices=IMAGE_MODES,
        default=None,
        help="pictures on the Activations screen: auto (Sixel or Kitty graphics where the terminal speaks them), "
        f"sixel, kitty, or cells (half-blocks); default: ${IMAGES_ENV}, else auto",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    takes_train_options = args.command in ("sweep", "lab")  # their other words are train options, checked later
    if rest and not takes_train_options:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.train_options = rest if takes_train_options else []
    args.argv = list(sys.argv[1:] if argv is None else argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CliError, StoreError, ConfigError, GraphicsError) as exc:
        print(f"mirante: error: {printable(str(exc))}", file=sys.stderr)  # may quote a store's strings
        return EXIT_USAGE
    except BrokenPipeError:  # `mirante export run | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # python -m tui.cli: run the imported module's main, so that its errors are the ones
    from tui.cli import main as imported_main  # that tui.sweeps raises (this file runs here as __main__, a copy)

    sys.exit(imported_main())
