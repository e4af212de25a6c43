"""The reliability matrix: crashes, full disks, damaged and hostile files, bad input and misuse, end to end.

    python bench/reliability.py [--tiny] [--area NAME ...] [--json FILE] [--keep]

Every trial does what a user (or bad luck) does, in a fresh directory and a fresh process: it
runs `mirante` as the README says, kills processes with SIGKILL at chosen moments, fills a
small tmpfs, damages store files, plants pickles that would run code, and misuses `Monitor`.
Then it checks what must hold: nothing hangs, nothing is recorded twice or lost, a bad input is
one line on stderr and exit 2, a failure is recorded as "failed" with its reason, no file from
outside runs code, and no string from a store reaches the terminal raw. It prints the matrix
(area, trials, passed) and each failure with what was seen; the exit code is the number of
areas with a failure.

The training trials train smallcnn on a tiny ImageFolder the script draws itself (2 classes,
16x16, 8 steps an epoch), so they need no download. The disk-full trials mount a small tmpfs
(root only) and read-only directories are read-only mounts; without root they are said to be
not run. `--tiny` runs one trial an area (the test suite runs it, so this script cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import pty
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import events as ev  # noqa: E402
from engine.store import RunReader, RunWriter, StoreError  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
HANG_S = 60.0  # a command still running this long after it should have ended counts as hung
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HOSTILE = ("\x1b]0;pwned\x07", "\x1b[2J", "[/]", "[bold red]x[/bold red]", "\x9b31m")


# --- running mirante -------------------------------------------------------------------------


@dataclass
class Ran:
    """A finished command: exit code (None: it hung and was killed), its output, how long it took."""

    code: int | None
    out: str
    err: str
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out + self.err

    def one_line_error(self, code: int = 2) -> bool:
        """Exit `code`, one line on stderr, no traceback."""
        lines = self.err.strip().splitlines()
        return self.code == code and len(lines) == 1 and "error" in lines[0] and not self.traceback

    def __str__(self) -> str:
        return f"exit {self.code} after {self.seconds:.1f} s; stderr: {self.err.strip()[-600:]!r}"


def command(args: list[str], module: str = "tui.cli") -> list[str]:
    return [sys.executable, "-m", module, *args] if module else [sys.executable, *args]


def run(args: list[str], cwd: Path, timeout: float = HANG_S, env: dict | None = None, module: str = "tui.cli") -> Ran:
    """Run to the end (stdout not a terminal, so `train` is headless); killed as a group if it hangs."""
    start = time.monotonic()
    proc = subprocess.Popen(
        command(args, module),
        cwd=cwd,
        env=ENV | (env or {}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    return finish(proc, timeout, start)


def finish(proc: subprocess.Popen, timeout: float, start: float) -> Ran:
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        code = None
    return Ran(code, out, err, time.monotonic() - start)


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start in the background, output to files in `cwd` (read with `output`)."""
    out, err = open(cwd / "stdout.txt", "w"), open(cwd / "stderr.txt", "w")  # noqa: SIM115 - the child holds them
    with out, err:
        return subprocess.Popen(
            command(args),
            cwd=cwd,
            env=ENV | (env or {}),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )


def waited(proc: subprocess.Popen, cwd: Path, timeout: float = HANG_S) -> Ran:
    """The background command's end, or None as its code if it is still running after `timeout`."""
    start_ = time.monotonic()
    try:
        proc.wait(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait()
        code = None
    read = (cwd / "stdout.txt").read_text(errors="replace"), (cwd / "stderr.txt").read_text(errors="replace")
    return Ran(code, *read, time.monotonic() - start_)


def until(condition: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def trainer_child(parent: int) -> int | None:
    """The pid of the spawned trainer under `parent` (not multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            return pid
    return None


# --- what the trials train on ----------------------------------------------------------------

STEPS_PER_EPOCH = 8  # 2 classes x 40 images, 20% held out, batches of 8


def draw_folder(path: Path, per_class: int = 40, size: int = 16, seed: int = 0) -> Path:
    """An ImageFolder of two classes (a bright square, a dark one) on noise: learnable, tiny, no download."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(("bright", "dark")):
        (path / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(60, 196, (size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, 2)
            pixels[y : y + size // 2, x : x + size // 2] = 250 if label == 0 else 5
            Image.fromarray(pixels).save(path / name / f"{i:03d}.png")
    return path


def train_args(data: Path, name: str, *extra: str, epochs: int = 2) -> list[str]:
    return [
        "train",
        "--headless",
        "--dataset",
        str(data),
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--val-fraction",
        "0.2",
        "--workers",
        "0",
        "--epochs",
        str(epochs),
        "--log-every",
        "2",
        "--probe-every",
        "2",
        "--capture-every",
        "0",
        "--name",
        name,
        *extra,
    ]


def summary(store: Path):
    with RunReader(store) as run:
        return run.summary(), run.ended()


def integrity(store: Path) -> str:
    """SQLite's own check of the file (read-only, WAL applied)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def loss_steps(store: Path) -> np.ndarray:
    with RunReader(store) as run:
        steps, _ = run.scalars("train/loss")
    return np.asarray(steps)


def epochs_recorded(store: Path) -> list[int]:
    with RunReader(store) as run:
        return [e.epoch for e in run.epochs()]


def checkpoint_state(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def all_finite(checkpoint: dict) -> bool:
    import torch

    tensors = [v for v in checkpoint["model"].values() if torch.is_floating_point(v)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# --- the matrix ------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    detail: str = ""

    def seeing(self, seen: str) -> Outcome:
        """This outcome, with what was seen added to its detail when it failed."""
        return self if self.ok else Outcome(False, f"{self.detail}; seen: {seen}")


@dataclass
class Area:
    name: str
    items: str  # the items it covers
    trials: list[tuple[str, Callable[[Path], Outcome]]] = field(default_factory=list)

    def add(self, label: str) -> Callable:
        def register(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
            self.trials.append((label, fn))
            return fn

        return register


def check(**conditions: bool) -> Outcome:
    failed = [name.replace("_", " ") for name, held in conditions.items() if not held]
    return Outcome(not failed, "failed: " + ", ".join(failed) if failed else "")


class Shared:
    """Things several trials start from, made once: the image folder, a trained run with checkpoints."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._folder: Path | None = None
        self._trained: Path | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = draw_folder(self.base / "data")
        return self._folder

    def trained(self) -> Path:
        """A runs directory holding a finished 1-epoch run named `done`, with last.pt."""
        if self._trained is None:
            work = self.base / "trained"
            work.mkdir()
            ran = run(train_args(self.folder, "done", epochs=1), work, timeout=300)
            if ran.code != 0:
                raise RuntimeError(f"the shared training run failed: {ran}")
            self._trained = work / "runs"
        return self._trained

    def copy_of_trained(self, work: Path) -> Path:
        shutil.copytree(self.trained(), work / "runs")
        return work / "runs"


# --- 1. the trainer dies: the parent notices -------------------------------------------------


def child_death(shared: Shared, delays: list[float]) -> Area:
    area = Area("trainer killed, parent notices", "1")
    for delay in delays:

        @area.add(f"headless, trainer SIGKILLed {delay:g} s after start")
        def trial(work: Path, delay: float = delay) -> Outcome:
            proc = start(train_args(shared.folder, "victim", epochs=500), work)
            until(lambda: trainer_child(proc.pid) is not None, 20)
            child = trainer_child(proc.pid)
            if child is None:
                kill_group(proc.pid)
                return Outcome(False, "no trainer child appeared")
            time.sleep(delay)
            os.kill(child, signal.SIGKILL)
            ran = waited(proc, work, timeout=30)
            store = work / "runs" / "victim.mirante"
            status = summary(store)[0].status if store.exists() else "no store"
            return (
                check(
                    parent_ended=ran.code is not None,
                    exit_1=ran.code == 1,
                    no_traceback=not ran.traceback,
                    says_why=bool(ran.err.strip()),
                    store_failed=status in ("failed", "no store"),
                )
                if ran.code is not None
                else Outcome(False, f"the parent hung ({status}); {ran}")
            )

    return area


# --- 2-3. crash, then --resume ---------------------------------------------------------------


def crash_resume(shared: Shared, count: int, seed: int = 0) -> Area:
    area = Area("crash, then --resume", "2, 3")
    rng = random.Random(seed)
    epochs = 60  # 480 steps: long enough to be killed under way on a fast machine
    for i in range(count):
        after = rng.uniform(0.0, 1.0)

        @area.add(f"killed {after:.2f} s after the first checkpoint, resumed (#{i + 1})")
        def trial(work: Path, after: float = after) -> Outcome:
            proc = start(train_args(shared.folder, "crash", epochs=epochs), work)
            last = work / "runs" / "crash.ckpt" / "last.pt"
            if not until(last.exists, 120):
                kill_group(proc.pid)
                return Outcome(False, f"no checkpoint appeared; {waited(proc, work, 1)}")
            time.sleep(after)
            if proc.poll() is not None:
                return Outcome(False, "the run ended before the kill: make it longer")
            kill_group(proc.pid)
            proc.wait()
            store = work / "runs" / "crash.mirante"
            state = checkpoint_state(last)["state"]
            until(lambda: summary(store)[0].status != "running", 10)  # the killed child lets go of its lock
            crashed = summary(store)[0].status
            recorded = epochs_recorded(store)
            exported = run(["export", str(store)], work)
            resumed = run(["train", "--headless", "--resume", "crash"], work, timeout=300)
            steps = loss_steps(store)
            total = epochs * STEPS_PER_EPOCH
            return check(
                store_intact=integrity(store) == "ok",
                listed_crashed=crashed == "crashed",
                exports=exported.code == 0,
                checkpointed_epochs_recorded=set(range(1, state["epoch"] + 1)) <= set(recorded),
                resume_finishes=resumed.code == 0 and summary(store)[0].status == "finished",
                each_step_once=len(steps) == total and np.array_equal(steps, np.arange(1, total + 1)),
                each_epoch_once=epochs_recorded(store) == list(range(1, epochs + 1)),
                store_intact_after=integrity(store) == "ok",
            ).seeing(f"listed {crashed}; resumed: {resumed}")

    return area


# --- 5. divergence -----------------------------------------------------------------------------


def divergence(shared: Shared) -> Area:
    area = Area("divergence: no broken checkpoint", "5")
    cases = {
        "caught at the last read-back": ["--steps", "6", "--log-every", "6"],
        "caught at an epoch end": ["--epochs", "2", "--log-every", "8"],
        "caught mid-run": ["--epochs", "4", "--log-every", "2"],
        "caught in the first interval": ["--epochs", "3", "--log-every", "1"],
    }
    for label, extra in cases.items():

        @area.add(f"--lr 1e6, {label}")
        def trial(work: Path, extra: list[str] = extra) -> Outcome:
            ran = run([*train_args(shared.folder, "boom"), "--lr", "1e6", "--momentum", "0", *extra], work, timeout=180)
            ended = summary(work / "runs" / "boom.mirante")[1]
            ckpts = list((work / "runs" / "boom.ckpt").glob("*.pt"))
            return check(
                exit_1=ran.code == 1,
                failed=ended is not None and ended.status == "failed",
                says_diverged=ended is not None and "diverge" in ended.reason,
                no_broken_checkpoint=all(all_finite(checkpoint_state(p)) for p in ckpts),
            )

    @area.add("--lr 1e6 --on-divergence warn: runs on, writes no broken checkpoint")
    def warned(work: Path) -> Outcome:
        run([*train_args(shared.folder, "warn"), "--lr", "1e6", "--on-divergence", "warn"], work, timeout=180)
        ckpts = list((work / "runs" / "warn.ckpt").glob("*.pt"))
        return check(no_broken_checkpoint=all(all_finite(checkpoint_state(p)) for p in ckpts))

    return area


# --- 6, 7, 11. bad input: one line, exit 2 -----------------------------------------------------


def bad_input(shared: Shared) -> Area:
    area = Area("bad input: one line, exit 2", "6, 7, 11")
    floats = {
        "--lr": ["nan", "inf", "-inf"],
        "--weight-decay": ["nan"],
        "--clip-grad": ["nan", "inf"],
        "--gamma": ["inf", "nan"],
        "--momentum": ["nan"],
        "--label-smoothing": ["nan"],
        "--val-fraction": ["nan"],
        "--init-std": ["inf"],
        "--peak-tflops": ["nan"],
        "--l1": ["nan"],
    }
    quick = [["train", flag, value] for flag, values in floats.items() for value in values]
    quick += [["lr-find", "--min-lr", "nan"], ["lr-find", "--max-lr", "inf"]]
    quick += [["train", "--name", name] for name in ("../../escape", "/tmp/absolute", "a/b/c", ".hidden", "sp ace")]
    quick += [["train", "--image-size", "100000"], ["train", "--model", "nosuch"], ["train", "--dataset", "nosuch"]]
    quick += [["watch", "nosuch"], ["replay", "nosuch"], ["export", "nosuch"], ["train", "--resume", "nosuch"]]
    for args in quick:

        @area.add(" ".join(args))
        def trial(work: Path, args: list[str] = args) -> Outcome:
            ran = run(args, work)
            stray = [p for p in Path("/tmp").glob("absolute*")] + list(work.rglob("*.mirante"))
            return check(one_line_exit_2=ran.one_line_error(), nothing_written=not stray).seeing(str(ran))

    for flag, value in (("--speed", "nan"), ("--speed", "inf"), ("--speed", "0")):

        @area.add(f"replay RUN {flag} {value}")
        def replay(work: Path, flag: str = flag, value: str = value) -> Outcome:
            runs = shared.copy_of_trained(work)
            ran = run(["replay", str(runs / "done.mirante"), flag, value], work, timeout=20)
            return check(one_line_exit_2=ran.one_line_error()).seeing(str(ran))

    @area.add("stop RUN --timeout nan")
    def stop_nan(work: Path) -> Outcome:
        runs = shared.copy_of_trained(work)
        ran = run(["stop", str(runs / "done.mirante"), "--timeout", "nan"], work, timeout=20)
        return check(one_line_exit_2=ran.one_line_error()).seeing(str(ran))

    @area.add("--runs-dir names a file")
    def runs_dir_file(work: Path) -> Outcome:
        (work / "afile").write_text("x")
        ran = run(train_args(shared.folder, "x", "--runs-dir", str(work / "afile")), work)
        return check(one_line_exit_2=ran.one_line_error()).seeing(str(ran))

    @area.add("--runs-dir read-only")
    def runs_dir_read_only(work: Path) -> Outcome:
        with read_only(work / "ro") as ro:
            if ro is None:
                return Outcome(True, "not run: needs root for a read-only mount")
            ran = run(train_args(shared.folder, "x", "--runs-dir", str(ro)), work)
        return check(one_line_exit_2=ran.one_line_error()).seeing(str(ran))

    @area.add("--capture-layer naming no layer: no store left")
    def capture_layer(work: Path) -> Outcome:
        ran = run(train_args(shared.folder, "cap", "--capture-layer", "nosuch"), work, timeout=120)
        return check(
            one_line_exit_2=ran.one_line_error(), no_store=not (work / "runs" / "cap.mirante").exists()
        ).seeing(str(ran))

    @area.add("--pretrained without network")
    def offline(work: Path) -> Outcome:
        env = {
            "TORCH_HOME": str(work / "torch"),
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
        }
        args = train_args(shared.folder, "pre", "--model", "resnet18", "--pretrained")
        args[args.index("16")] = "32"
        ran = run(args, work, timeout=120, env=env)
        return check(
            one_line_exit_2=ran.one_line_error(), no_store=not (work / "runs" / "pre.mirante").exists()
        ).seeing(str(ran))

    for label, damage in (
        ("garbage", lambda p: p.write_bytes(os.urandom(4096))),
        ("truncated", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
        ("empty", lambda p: p.write_bytes(b"")),
        ("refused by weights_only", lambda p: p.write_bytes(pickle.dumps({"model": Foreign()}))),
    ):

        @area.add(f"--resume from a {label} last.pt")
        def resume_bad(work: Path, damage: Callable = damage) -> Outcome:
            runs = shared.copy_of_trained(work)
            damage(runs / "done.ckpt" / "last.pt")
            ran = run(["train", "--headless", "--resume", "done", "--epochs", "2"], work, timeout=120)
            return check(one_line_exit_2=ran.one_line_error()).seeing(str(ran))

    @area.add("an ImageFolder with a file that is not an image")
    def corrupt_image(work: Path) -> Outcome:
        data = shutil.copytree(shared.folder, work / "data")
        (data / "dark" / "017.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
        ran = run(train_args(data, "jpeg", epochs=2), work, timeout=180)
        store = work / "runs" / "jpeg.mirante"
        ended = summary(store)[1] if store.exists() else None
        named = "017.png" in ran.err
        recorded = store.exists() is False or (
            ended is not None and ended.status == "failed" and "017.png" in ended.reason
        )
        return check(
            one_line=len(ran.err.strip().splitlines()) == 1,
            no_traceback=not ran.traceback,
            exit_nonzero=ran.code in (1, 2),
            names_the_file=named,
            recorded_as_failed=recorded,
        ).seeing(str(ran))

    return area


class Foreign:
    """A class torch.load(weights_only=True) refuses to rebuild."""


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path | None]:
    """A directory that cannot be written, even by root (a read-only bind mount); None without root."""
    path.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    target = path.with_name(path.name + "-ro")
    target.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "--bind", str(path), str(target)], capture_output=True).returncode == 0
    if mounted:
        mounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], capture_output=True).returncode == 0
        if not mounted:
            subprocess.run(["umount", str(target)], capture_output=True)
    try:
        yield target if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[Path | None]:
    """A tmpfs of `size_kb` KB at `path`; None if it cannot be mounted (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        IS_ROOT
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --- 9. files that would run code ------------------------------------------------------------


class Planted:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickles(shared: Shared) -> Area:
    area = Area("files that would run code", "9")

    @area.add("--resume with a last.pt that runs code")
    def planted_checkpoint(work: Path) -> Outcome:
        runs = shared.copy_of_trained(work)
        marker = work / "PWNED"
        (runs / "done.ckpt" / "last.pt").write_bytes(pickle.dumps(Planted(marker)))
        ran = run(["train", "--headless", "--resume", "done", "--epochs", "2"], work, timeout=120)
        return check(code_did_not_run=not marker.exists(), one_line_exit_2=ran.one_line_error()).seeing(str(ran))

    @area.add("--pretrained with a hub cache file that runs code")
    def planted_hub(work: Path) -> Outcome:
        from torchvision.models import ResNet18_Weights

        cache = work / "torch" / "hub" / "checkpoints"
        cache.mkdir(parents=True)
        marker = work / "PWNED"
        (cache / ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]).write_bytes(pickle.dumps(Planted(marker)))
        args = train_args(shared.folder, "hub", "--model", "resnet18", "--pretrained")
        args[args.index("16")] = "32"
        ran = run(args, work, timeout=120, env={"TORCH_HOME": str(work / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9"})
        return check(code_did_not_run=not marker.exists(), one_line_exit_2=ran.one_line_error()).seeing(str(ran))

    return area


# --- 8. a full disk --------------------------------------------------------------------------


def disk_full(shared: Shared) -> Area:
    area = Area("disk full: said, recorded, no stub", "8")
    cases = {
        "no room for the store": (48, 2),
        "no room for the first checkpoint": (700, 1),
        "the store fills the disk while training": (1600, 1),
    }
    for label, (size, epochs) in cases.items():

        @area.add(f"{label} (tmpfs {size} KB)")
        def trial(work: Path, size: int = size, epochs: int = epochs, label: str = label) -> Outcome:
            with small_disk(work / "disk", size) as disk:
                if disk is None:
                    return Outcome(True, "not run: needs root to mount a small tmpfs")
                extra = ["--runs-dir", str(disk), "--capture-every", "1", "--probe-every", "1"]
                if label.startswith("the store"):
                    extra += ["--overfit-batches", "2", "--steps", "100000"]  # no checkpoints: only the store grows
                ran = run(train_args(shared.folder, "full", *extra, epochs=epochs), work, timeout=300)
                store = disk / "full.mirante"
                ended = None
                if store.exists():
                    with contextlib.suppress(StoreError):
                        ended = summary(store)[1]
                said = "disk full" in ran.err.lower()
                recorded = (not store.exists() and ran.code == 2) or (
                    ended is not None and ended.status == "failed" and "disk full" in ended.reason.lower()
                )
                return check(
                    says_disk_full=said,
                    no_traceback=not ran.traceback,
                    exit_nonzero=ran.code in (1, 2),
                    recorded_or_no_stub=recorded,
                ).seeing(str(ran))

    return area


# --- 10. damaged and hostile store files -----------------------------------------------------


def write_store(path: Path, steps: int = 3000, end: str | None = "finished", strings: str = "") -> int:
    """A run store as the trainer writes it; `strings` goes into every text field. Returns the last seq."""
    seq = ev.Sequencer()
    writer = RunWriter(path)
    layers = (f"conv1{strings}", f"fc{strings}")
    writer.write(
        ev.RunStarted(
            **seq.header(0),
            name=f"run{strings}",
            model=f"smallcnn{strings}",
            dataset=f"shapes{strings}",
            config={"lr": 0.1, "optimizer": f"sgd{strings}", "diagnostics": 1, "total_steps": steps},
            model_summary={"params": 1000},
            layers=layers,
            device={"type": "cpu", "name": f"cpu{strings}"},
            versions={"python": "3.11"},
        )
    )
    for step in range(1, steps + 1):
        writer.write(ev.Step(**seq.header(step), scalars={"train/loss": 2.3 / step, "lr": 0.1}))
        if step % 10 == 0:
            writer.write(
                ev.LayerStats(**seq.header(step), grad_norm=[0.1, 0.2], weight_norm=[1, 2], update_ratio=[1e-3] * 2)
            )
        if step % 1000 == 0:
            writer.write(
                ev.Epoch(
                    **seq.header(step), epoch=step // 1000, train_loss=1.0, train_acc=0.5, val_loss=1.1, val_acc=0.4
                )
            )
    if strings:
        writer.write(ev.Diagnostic(**seq.header(steps), level="warn", code="initial-loss", message=f"look{strings}"))
    if end is not None:
        writer.write(ev.RunEnded(**seq.header(steps), status=end, reason=f"done{strings}"))
    writer.close()
    return seq.last_seq


CRASH_WRITER = """
import os, sys
sys.path.insert(0, {root!r})
from bench.reliability import write_store
from engine import events as ev
from engine.store import RunWriter
import bench.reliability as r
r.RunWriter.close = lambda self: (self.flush(), os._exit(0))  # die with the log not checkpointed
write_store(__import__('pathlib').Path({path!r}), steps={steps}, end=None)
"""


def crashed_store(path: Path, steps: int = 3000) -> Path:
    """A store whose writer died: its events partly in the -wal beside it."""
    script = CRASH_WRITER.format(root=str(ROOT), path=str(path), steps=steps)
    subprocess.run([sys.executable, "-c", script], check=True, env=ENV, timeout=120)
    return path


def hostile_files(shared: Shared) -> Area:
    area = Area("damaged and foreign store files", "10")

    def damaged(work: Path, damage: Callable[[Path], None], steps: int = 3000) -> tuple[Ran, Ran]:
        store = work / "runs" / "hurt.mirante"
        store.parent.mkdir()
        write_store(store, steps)
        damage(store)
        return run(["ls", str(store.parent)], work), run(["export", str(store)], work)

    def calm(ls: Ran, export: Ran) -> bool:
        return ls.code == 0 and not ls.traceback and (export.code == 0 or export.one_line_error())

    for fraction in (0.1, 0.5, 0.9):

        @area.add(f"truncated to {fraction:.0%}")
        def truncated(work: Path, fraction: float = fraction) -> Outcome:
            def cut(p: Path) -> None:
                p.write_bytes(p.read_bytes()[: int(p.stat().st_size * fraction)])

            ls, export = damaged(work, cut)
            return check(one_line_each=calm(ls, export), not_exported_whole=export.code == 2).seeing(f"{ls} / {export}")

    @area.add("16 KB overwritten in the middle")
    def overwritten(work: Path) -> Outcome:
        def scribble(p: Path) -> None:
            data = bytearray(p.read_bytes())
            middle = len(data) // 2
            data[middle : middle + 16384] = os.urandom(16384)
            p.write_bytes(bytes(data))

        ls, export = damaged(work, scribble)
        return check(one_line_each=calm(ls, export)).seeing(f"{ls} / {export}")

    for label, content in (("a text file", b"hello\n" * 100), ("random bytes", os.urandom(8192))):

        @area.add(f"{label} named .mirante")
        def foreign(work: Path, content: bytes = content) -> Outcome:
            (work / "runs").mkdir()
            (work / "runs" / "x.mirante").write_bytes(content)
            ls, export = run(["ls", "runs"], work), run(["export", "runs/x.mirante"], work)
            return check(one_line_each=calm(ls, export), refused=export.code == 2).seeing(f"{ls} / {export}")

    @area.add("another SQLite database named .mirante")
    def other_sqlite(work: Path) -> Outcome:
        (work / "runs").mkdir()
        db = sqlite3.connect(work / "runs" / "x.mirante")
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
        export = run(["export", "runs/x.mirante"], work)
        return check(refused_in_one_line=export.one_line_error()).seeing(str(export))

    @area.add("a store from a newer mirante")
    def newer(work: Path) -> Outcome:
        ls, export = damaged(work, lambda p: _sql(p, f"PRAGMA user_version={ev.SCHEMA_VERSION + 1}"))
        return check(says_upgrade="newer" in export.err, refused_in_one_line=export.one_line_error()).seeing(
            str(export)
        )

    for label, sql in (
        (
            "an event row deleted",
            "DELETE FROM events WHERE seq = (SELECT seq FROM events WHERE kind='LayerStats' LIMIT 1 OFFSET 5)",
        ),
        ("a step chunk deleted", "DELETE FROM step_chunks WHERE first_seq = (SELECT min(first_seq) FROM step_chunks)"),
    ):

        @area.add(f"{label}: a gap in the sequence")
        def gap(work: Path, sql: str = sql) -> Outcome:
            ls, export = damaged(work, lambda p: _sql(p, sql))
            said = any(word in (ls.out + ls.err + export.err).lower() for word in ("damaged", "missing", "gap"))
            return check(damage_reported=said, no_traceback=not (ls.traceback or export.traceback)).seeing(
                f"{ls.out!r} / {export}"
            )

    @area.add("a -wal from another store beside it")
    def foreign_wal(work: Path) -> Outcome:
        (work / "runs").mkdir()
        ours = work / "runs" / "ours.mirante"
        write_store(ours, 500)
        other = crashed_store(work / "other.mirante", 700)
        shutil.copy(other.with_name(other.name + "-wal"), ours.with_name(ours.name + "-wal"))
        export = run(["export", str(ours)], work)
        return check(refused_in_one_line=export.one_line_error(), names_the_wal="wal" in export.err.lower()).seeing(
            str(export)
        )

    @area.add("a crashed store in a read-only directory")
    def crashed_read_only(work: Path) -> Outcome:
        (work / "runs").mkdir()
        store = crashed_store(work / "runs" / "crash.mirante", 2000)
        if not store.with_name(store.name + "-wal").exists():
            return Outcome(False, "the crashed writer left no -wal: the trial tests nothing")
        whole = run(["export", str(store), "-f", "jsonl"], work)
        store.with_name(store.name + "-shm").unlink(missing_ok=True)  # as copied from another machine: no -shm
        shutil.rmtree(work / "runs-copy", ignore_errors=True)
        with read_only(work / "runs") as ro:
            if ro is None:
                return Outcome(True, "not run: needs root for a read-only mount")
            ls = run(["ls", str(ro)], work)
            export = run(["export", str(ro / store.name), "-f", "jsonl"], work)
        return check(
            listed_crashed="crashed" in ls.out,
            exported=export.code == 0,
            nothing_lost=export.out.count("\n") == whole.out.count("\n") > 2000,
        ).seeing(f"{ls.out!r} / {export}")

    @area.add("readers alongside a training run, then SIGKILL")
    def readers(work: Path) -> Outcome:
        proc = start(train_args(shared.folder, "busy", epochs=200), work)
        store = work / "runs" / "busy.mirante"
        until(store.exists, 60)
        errors, calls, deadline = [], 0, time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                with RunReader(store) as reader:
                    reader.summary(), reader.scalars("train/loss"), reader.follow(0, limit=500), reader.epochs()
                calls += 1
            except StoreError as exc:
                if "no such" not in str(exc) and "empty" not in str(exc):
                    errors.append(str(exc))
        kill_group(proc.pid)
        proc.wait()
        export = run(["export", str(store)], work)
        return check(
            no_reader_error=not errors,
            some_reads=calls > 20,
            store_intact=integrity(store) == "ok",
            listed_crashed=summary(store)[0].status == "crashed",
            exports=export.code == 0,
        ).seeing(f"{calls} calls, errors: {errors[:3]}")

    return area


def _sql(path: Path, statement: str) -> None:
    db = sqlite3.connect(path)
    db.execute(statement)
    db.commit()
    db.close()


# --- 12. strings from a store reach the terminal escaped ---------------------------------------


def in_terminal(
    args: list[str], cwd: Path, keys: list[str], settle: float = 2.0, timeout: float = 40.0
) -> tuple[int | None, bytes]:
    """Run in an 80x24 pseudo-terminal, type `keys` (one every 0.4 s after `settle`), return (exit code, bytes)."""
    import fcntl
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.environ.update(ENV | {"TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"})
        os.environ.pop("NO_COLOR", None)
        os.execv(sys.executable, command(args))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    seen, start_, code = b"", time.monotonic(), None
    pending = list(keys)
    next_key = start_ + settle
    try:
        while time.monotonic() - start_ < timeout:
            if pending and time.monotonic() > next_key:
                os.write(fd, pending.pop(0).encode())
                next_key = time.monotonic() + 0.4
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError:
                    chunk = b""
                seen += chunk
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
    finally:
        if code is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    return code, seen


def hostile_strings(shared: Shared) -> Area:
    area = Area("hostile strings in a store", "12")

    def store(work: Path) -> Path:
        (work / "runs").mkdir()
        path = work / "runs" / "hostile.mirante"
        write_store(path, 300, strings="".join(HOSTILE))
        return path

    @area.add("mirante ls prints no escape sequence")
    def ls(work: Path) -> Outcome:
        store(work)
        ran = run(["ls", "runs"], work)
        return check(listed=ran.code == 0, no_raw_escape="\x1b" not in ran.out + ran.err and "\x9b" not in ran.out)

    for verb in ("replay", "watch"):

        @area.add(f"mirante {verb}: every pane drawn, the text shown literally, q leaves")
        def app(work: Path, verb: str = verb) -> Outcome:
            path = store(work)
            args = [verb, str(path)] + (["--speed", "1000"] if verb == "replay" else [])
            code, screen = in_terminal(args, work, keys=[*"1234567", "1", "q", "q"])
            return check(
                exit_0=code == 0,
                no_traceback=b"Traceback" not in screen,
                no_title_change=b"\x1b]0;pwned" not in screen,
                markup_shown_literally=b"[/]" in screen,
            ).seeing(f"exit {code}; {screen[-300:]!r}")

    return area


# --- 13. Monitor misuse ------------------------------------------------------------------------

MONITOR_SCRIPT = """
import sys, torch
from torch import nn
sys.path.insert(0, {root!r})
from engine.monitor import Monitor
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))

def good(mon):
    opt.zero_grad(); loss = nn.functional.cross_entropy(model(x), y); loss.backward()
    mon.step(loss, logits=model(x).detach(), targets=y); opt.step()

def bad(call):
    try:
        call()
    except Exception as exc:
        print("RAISED", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", flush=True)
        return
    print("ACCEPTED", flush=True)

mon = Monitor(model, opt, run={run!r}, runs_dir="runs", log_every=3, probe_every=2)
good(mon)
{body}
"""

MISUSES = {
    "a vector loss": ("bad(lambda: mon.step(torch.ones(4)))", True),
    "a string lr": ("bad(lambda: mon.step(torch.tensor(1.0), lr='fast'))", True),
    "an lr of two values": ("bad(lambda: mon.step(torch.tensor(1.0), lr=[0.1, 0.2]))", True),
    "three bad calls in a row": (
        "bad(lambda: mon.step(torch.ones(3)))\nbad(lambda: mon.step('x'))\nbad(lambda: mon.step(None))",
        True,
    ),
    "a loss that is not a tensor": ("bad(lambda: mon.step(object()))", True),
    "logits and targets of different lengths": (
        "bad(lambda: mon.step(torch.tensor(1.0), logits=torch.randn(8, 3), targets=torch.zeros(5, dtype=torch.long)))",
        True,
    ),
    "an epoch with a vector val_acc": ("bad(lambda: mon.epoch(val_acc=torch.ones(3)))", True),
}


def monitor_misuse(shared: Shared) -> Area:
    area = Area("Monitor misuse", "13")

    def script(work: Path, body: str, name: str = "mon") -> Ran:
        (work / "script.py").write_text(MONITOR_SCRIPT.format(root=str(ROOT), run=name, body=body))
        return run(["script.py"], work, timeout=120, module="")

    for label, (body, _raises) in MISUSES.items():

        @area.add(f"{label}: raises at the call, the run goes on intact")
        def trial(work: Path, body: str = body) -> Outcome:
            ran = script(work, body + "\nfor _ in range(5): good(mon)\nmon.close()\n")
            store = work / "runs" / "mon.mirante"
            steps = loss_steps(store) if store.exists() else np.array([])
            ended = summary(store)[1] if store.exists() else None
            return check(
                script_ran=ran.code == 0,
                raised_at_the_call="RAISED" in ran.out and "ACCEPTED" not in ran.out,
                finished=ended is not None and ended.status == "finished",
                every_good_step_once=np.array_equal(steps, np.arange(1, 7)),
            ).seeing(f"{ran.out!r} {ran}")

    @area.add("a step after close() raises")
    def after_close(work: Path) -> Outcome:
        ran = script(work, "mon.close()\nbad(lambda: good(mon))\n")
        return check(raised="RAISED" in ran.out, script_ran=ran.code == 0).seeing(f"{ran.out!r} {ran}")

    @area.add("a script that never calls close(): finished, nothing lost")
    def unclosed(work: Path) -> Outcome:
        ran = script(work, "for _ in range(6): good(mon)\n")
        store = work / "runs" / "mon.mirante"
        ended = summary(store)[1] if store.exists() else None
        steps = loss_steps(store) if store.exists() else np.array([])
        return check(
            finished=ended is not None and ended.status == "finished",
            every_step=np.array_equal(steps, np.arange(1, 8)),
        ).seeing(str(ran))

    for name in ("../escape", "/tmp/absolute-monitor", "a/b"):

        @area.add(f"run name {name!r} refused")
        def bad_name(work: Path, name: str = name) -> Outcome:
            (work / "script.py").write_text(
                MONITOR_SCRIPT.format(root=str(ROOT), run=name, body="").replace(
                    "mon = Monitor(",
                    "bad(lambda: Monitor(model, opt, run=" + repr(name) + "))\nraise SystemExit\nmon = Monitor(",
                )
            )
            ran = run(["script.py"], work, timeout=120, module="")
            stray = list(work.parent.glob("escape*")) + list(Path("/tmp").glob("absolute-monitor*"))
            return check(raised="RAISED" in ran.out, nothing_written=not stray).seeing(f"{ran.out!r} {ran}")

    @area.add("a model with no parameters: a clear error or a working run")
    def no_params(work: Path) -> Outcome:
        (work / "script.py").write_text(
            MONITOR_SCRIPT.format(root=str(ROOT), run="mon", body="").replace(
                "mon = Monitor(",
                "bad(lambda: Monitor(nn.Identity(), None, run='empty'))\nraise SystemExit\nmon = Monitor(",
            )
        )
        ran = run(["script.py"], work, timeout=120, module="")
        return check(no_bare_stop_iteration="StopIteration" not in ran.out, script_ran=ran.code == 0).seeing(
            f"{ran.out!r} {ran}"
        )

    return area


# --- the whole matrix --------------------------------------------------------------------------


def areas(shared: Shared, tiny: bool) -> list[Area]:
    built = [
        child_death(shared, [2.0] if tiny else [0.0, 0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 13.0]),
        crash_resume(shared, 1 if tiny else 10),
        divergence(shared),
        bad_input(shared),
        pickles(shared),
        disk_full(shared),
        hostile_files(shared),
        hostile_strings(shared),
        monitor_misuse(shared),
    ]
    if tiny:
        for area in built:
            area.trials = area.trials[:1]
    return built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="one trial an area (what the test suite runs)")
    parser.add_argument("--area", action="append", default=None, help="run only the areas whose name has this")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the trials' directories")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mirante-reliability-"))
    shared = Shared(base)
    results: list[dict] = []
    started = time.monotonic()
    try:
        for area in areas(shared, args.tiny):
            if args.area and not any(word in area.name for word in args.area):
                continue
            for label, trial in area.trials:
                work = base / f"{area.name.split()[0].strip(':,')}-{len(results)}"
                work.mkdir()
                t0 = time.monotonic()
                try:
                    outcome = trial(work)
                except Exception as exc:  # the trial itself broke: a failure, with what broke
                    outcome = Outcome(False, f"the trial raised {type(exc).__name__}: {exc}")
                results.append(
                    {
                        "area": area.name,
                        "items": area.items,
                        "trial": label,
                        "passed": outcome.ok,
                        "detail": outcome.detail,
                        "not_run": outcome.detail.startswith("not run"),
                        "seconds": round(time.monotonic() - t0, 2),
                    }
                )
                mark = "ok  " if outcome.ok else "FAIL"
                print(f"{mark} {area.name} | {label} ({time.monotonic() - t0:.1f} s)", flush=True)
                if not outcome.ok:
                    print(f"     {outcome.detail}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"trials kept in {base}")
    table, failing = report(results)
    print()
    print(table)
    print(f"\n{len(results)} trials in {time.monotonic() - started:.0f} s on {machine()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return failing


def report(results: list[dict]) -> tuple[str, int]:
    rows, failing = [], 0
    names = list(dict.fromkeys(r["area"] for r in results))
    for name in names:
        mine = [r for r in results if r["area"] == name]
        passed = sum(r["passed"] and not r["not_run"] for r in mine)
        not_run = sum(r["not_run"] for r in mine)
        failing += passed + not_run < len(mine)
        note = f" ({not_run} not run: needs root)" if not_run else ""
        rows.append(f"| {name} | {mine[0]['items']} | {len(mine)} | {passed}{note} |")
    head = "| Area | Issue items | Trials | Passed |\n|---|---|---|---|"
    return head + "\n" + "\n".join(rows), failing


def machine() -> str:
    import platform

    from engine.device import cpu_name

    cpu = cpu_name()
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
