"""Run control: commands through the FIFO beside a store, `mirante stop`, and trainers that end with their parent.

The unit tests drive `engine.control` on a FIFO in a temporary directory. The process tests
start real (tiny, CPU) trainers: each starts in a new session and its whole process group is
killed in a `finally`, and a trainer that left the session (the app's) is killed by pid.
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import pty
import signal
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import control
from engine.control import Channel, ControlError, control_path, send
from engine.store import RunReader, StoreError
from tests.runs import write_run

ROOT = Path(__file__).resolve().parents[1]
# a run that is still training when the test acts on it: small batches, so that an interval takes well under a
# second even on a loaded machine (a pause is seen as steps that stop advancing); captures only at epoch ends
LONG_RUN = ["--model", "smallcnn", "--dataset", "shapes", "--device", "cpu", "--steps", "100000"]
LONG_RUN += ["--batch-size", "8", "--log-every", "5", "--capture-every", "0"]


def env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def mirante(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    """`mirante ARGS` in a new session (so that the test can kill everything it started), output to a file."""
    with open(cwd / f"mirante-{args[0]}.log", "a") as log:
        kwargs = {"stdout": log, "stderr": subprocess.STDOUT, "env": env()} | kwargs
        return subprocess.Popen([sys.executable, "-m", "tui.cli", *args], cwd=cwd, start_new_session=True, **kwargs)


def mirante_stop(cwd: Path, run: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tui.cli", "stop", run, "--timeout", "60"]
    return subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=90)


def wait_for(what: Callable[[], object], timeout: float, why: str, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {why}")


def steps(store: Path) -> int:
    """The last step in the store; 0 while it is still being created."""
    try:
        with RunReader(store) as run:
            return run.summary().steps
    except StoreError:
        return 0


def status(store: Path) -> str:
    with RunReader(store) as run:
        return run.status()


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a parent that does not reap counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def children(parent: int) -> dict[int, bytes]:
    """{pid: command line} of the processes whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    out = list(children(pid))
    for child in list(out):
        out += descendants(child)
    return out


def trainer_of(parent: int) -> int:
    """The pid of the trainer that `parent` spawned (not multiprocessing's resource tracker)."""

    def find() -> int | None:
        return next((pid for pid, line in children(parent).items() if b"spawn_main" in line), None)

    return wait_for(find, 30, f"the trainer spawned by {parent}")  # type: ignore[return-value]


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def kill_pid(pid: int | None) -> None:
    if pid is not None and not gone(pid):
        os.kill(pid, signal.SIGKILL)


# --- the channel and send, on a FIFO --------------------------------------------------------


def test_commands_arrive_in_order_through_an_owner_only_fifo(tmp_path):
    store = tmp_path / "run.mirante"
    assert control_path(store) == tmp_path / "run.mirante.ctl"
    channel = Channel(store)
    try:
        info = os.stat(control_path(store))
        assert stat.S_ISFIFO(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert channel.poll() == []
        for command in ("pause", "capture", "resume"):
            send(store, command)
        with open(control_path(store), "wb", buffering=0) as raw:  # anything else written there
            raw.write(b"explode\nst")  # an unknown word, and half a line
            assert channel.poll() == ["pause", "capture", "resume"]
            raw.write(b"op\n")
        assert channel.poll() == ["stop"]
        send(store, "detach")  # from another terminal: the run outlives its parent, which may still watch it
        assert channel.poll() == [] and channel.detached
        with pytest.raises(ValueError, match="unknown command 'explode'"):
            send(store, "explode")
    finally:
        channel.close()
    assert not control_path(store).exists()


def test_send_says_why_it_cannot_reach_a_run(tmp_path):
    store = tmp_path / "run.mirante"
    with pytest.raises(ControlError, match="no command pipe .* not training"):
        send(store, "stop")
    os.mkfifo(control_path(store), 0o600)  # what a crashed run leaves: nobody reads it
    with pytest.raises(ControlError, match="nobody reads its commands"):
        send(store, "stop")
    os.unlink(control_path(store))
    control_path(store).write_text("")
    with pytest.raises(ControlError, match="not a command pipe"):
        send(store, "stop")
    os.unlink(control_path(store))
    channel = Channel(store)  # a run that never reads its commands: the pipe fills up
    try:
        fcntl.fcntl(channel._fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)  # fill one page, not 64 KiB
        with pytest.raises(ControlError, match="does not read its commands"):
            for _ in range(4096):
                send(store, "capture")
    finally:
        channel.close()


def test_another_users_run_cannot_be_reached(tmp_path):
    store = tmp_path / "run.mirante"
    channel = Channel(store)
    try:
        if os.geteuid() != 0:
            os.chmod(control_path(store), 0)  # as the other user sees it
            with pytest.raises(ControlError, match="belongs to another user"):
                send(store, "stop")
            return
        os.chmod(tmp_path, 0o755)  # root reads anything: try as nobody, who can reach the FIFO but not open it
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setuid(65534)
                send(store, "stop")
                message = b"sent"
            except BaseException as exc:
                message = str(exc).encode()
            os.write(write, message)
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read, "rb") as f:
            assert b"belongs to another user" in f.read()
    finally:
        channel.close()


def test_a_stale_fifo_is_replaced_and_a_live_one_refused(tmp_path):
    store = tmp_path / "run.mirante"
    os.mkfifo(control_path(store), 0o644)  # left by a crashed run
    first = Channel(store)
    try:
        assert stat.S_IMODE(os.stat(control_path(store)).st_mode) == 0o600
        with pytest.raises(ControlError, match="another process is taking this run's commands"):
            Channel(store)
        send(store, "stop")
        assert first.poll() == ["stop"]  # the refused one did not take the pipe away
    finally:
        first.close()
    assert not control_path(store).exists()


def test_the_lifeline_a_detach_outlives_the_eof():
    ctx = mp.get_context("spawn")
    theirs, ours = ctx.Pipe(duplex=False)
    channel = Channel(lifeline=theirs)
    assert not channel.parent_gone
    ours.send_bytes(control.DETACH)
    ours.close()
    assert wait_for(channel.poll, 5, "the detach") == ["detach"]
    time.sleep(0.2)  # the EOF behind it
    assert channel.detached and not channel.parent_gone

    theirs, ours = ctx.Pipe(duplex=False)
    channel = Channel(lifeline=theirs)
    ours.close()  # the parent died
    wait_for(lambda: channel.parent_gone, 5, "the EOF")
    assert channel.gone_reason == f"its parent process (pid {os.getppid()}) died"


def test_an_owner_is_named_by_pid_and_start_time():
    assert control.owner_alive(control.owner_token())
    assert not control.owner_alive(f"{os.getpid()}:1")  # this pid, started at another time: a reused pid
    assert not control.owner_alive(control.owner_token(_exited_pid()))
    channel = Channel(owner=f"{_exited_pid()}:1")
    assert channel.parent_gone and "the mirante train that launched it" in channel.gone_reason
    assert not Channel(owner=control.owner_token()).parent_gone


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- trainers ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread", "small_shapes")
def test_rank_0_stops_when_the_mirante_train_that_launched_it_has_died(tmp_path, monkeypatch):
    """Under torchrun, rank 0 checks OWNER_ENV at each interval; here the check runs in this process."""
    from engine import train
    from engine.config import TrainConfig

    monkeypatch.setenv(control.OWNER_ENV, f"{_exited_pid()}:1")
    config = TrainConfig(
        model="smallcnn", dataset="shapes", steps=1000, batch_size=32, log_every=5, capture_every=0,
        runs_dir=str(tmp_path / "runs"), name="orphan", device="cpu",
    ).validate()  # fmt: skip
    assert train.run(config) == 130
    with RunReader(tmp_path / "runs" / "orphan.mirante") as run:
        ended = run.ended()
    assert ended.status == "interrupted" and ended.step == 5, ended
    assert "the mirante train that launched it" in ended.reason and "died" in ended.reason
    assert not (tmp_path / "runs" / "orphan.mirante.ctl").exists()


def test_a_headless_trainer_ends_with_its_parent_even_when_paused(tmp_path):
    proc = mirante("train", "--headless", *LONG_RUN, "--name", "orphan", cwd=tmp_path)
    store = tmp_path / "runs" / "orphan.mirante"
    try:
        trainer = trainer_of(proc.pid)
        wait_for(lambda: steps(store) > 0, 60, "the first steps")
        send(store, "pause")
        wait_for(lambda: _still(store), 20, "the run to pause", every=0)
        os.kill(proc.pid, signal.SIGKILL)  # the parent only
        wait_for(lambda: gone(trainer), 15, "the trainer to end")
        with RunReader(store) as run:
            ended = run.ended()
        assert ended.status == "interrupted" and "parent process" in ended.reason and "died" in ended.reason, ended
        assert not control_path(store).exists()
    finally:
        kill_group(proc)


def test_torchrun_ranks_end_with_the_mirante_train_that_launched_them(tmp_path):
    """`mirante train --nproc 2`: rank 0 sees its owner gone at an interval; the stop vote ends every rank."""
    proc = mirante("train", "--nproc", "2", "--headless", *LONG_RUN, "--name", "ddp", cwd=tmp_path)
    store = tmp_path / "runs" / "ddp.mirante"
    family: list[int] = []
    try:
        wait_for(lambda: steps(store) > 0, 90, "the first steps")
        family = descendants(proc.pid)  # torchrun and its ranks, each rank in a process group of its own
        os.kill(proc.pid, signal.SIGKILL)
        wait_for(lambda: all(map(gone, family)), 30, "torchrun and the ranks to end")
        with RunReader(store) as run:
            ended = run.ended()
        assert ended.status == "interrupted" and "the mirante train that launched it" in ended.reason, ended
    finally:
        for pid in family:
            kill_pid(pid)
        kill_group(proc)


def test_an_app_trainer_ends_with_its_parent(tmp_path):
    """`mirante train` in a terminal: the trainer leaves the terminal's session, and still ends with the app."""
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = mirante(
        "train", *LONG_RUN, "--name", "app", cwd=tmp_path, stdin=terminal, stdout=terminal, stderr=terminal,
        env=env() | {"TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(terminal)
    reader = threading.Thread(target=_drain, args=(main,), daemon=True)  # the app must never block on its screen
    reader.start()
    store = tmp_path / "runs" / "app.mirante"
    trainer = None
    try:
        trainer = trainer_of(proc.pid)
        wait_for(lambda: steps(store) > 0, 60, "the first steps")
        os.kill(proc.pid, signal.SIGKILL)
        wait_for(lambda: gone(trainer), 15, "the trainer to end")
        assert status(store) == "interrupted"
    finally:
        kill_pid(trainer)  # in its own session: not in the group
        kill_group(proc)
        os.close(main)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def test_pause_resume_capture_and_stop_from_another_terminal(tmp_path):
    proc = mirante("train", "--headless", *LONG_RUN, "--name", "remote", cwd=tmp_path)
    store = tmp_path / "runs" / "remote.mirante"
    try:
        wait_for(lambda: steps(store) > 0, 60, "the first steps")

        send(store, "pause")  # obeyed at the next interval; the store commits every 250 ms
        paused_at = wait_for(lambda: _still(store), 20, "the run to pause", every=0)
        time.sleep(1.0)
        assert steps(store) == paused_at and status(store) == "running"

        send(store, "resume")
        wait_for(lambda: steps(store) > paused_at, 20, "the run to resume")

        with RunReader(store) as run:
            per_epoch = run.started().config["steps_per_epoch"]
            before = len(run.activation_index())
        send(store, "capture")

        def asked() -> list:
            with RunReader(store) as run:
                return run.activation_index()[before:]

        captured = wait_for(asked, 20, "a capture")
        assert all(step % per_epoch for _, step, _ in captured), captured  # not an epoch end's: the one asked for

        send(store, "pause")  # a paused run still takes a stop
        wait_for(lambda: _still(store), 20, "the run to pause again", every=0)
        done = mirante_stop(tmp_path, "remote")
        assert done.returncode == 0, done
        stopped_at = steps(store)
        assert done.stdout == f"remote: interrupted at step {stopped_at}\n" and done.stderr == ""
        assert not control_path(store).exists()
        assert proc.wait(timeout=30) == 130
        assert (tmp_path / "runs" / "remote.ckpt" / "last.pt").exists()  # to --resume from
    finally:
        kill_group(proc)


def _still(store: Path) -> int | None:
    """The last step if it stayed the same for a second, else None."""
    before = steps(store)
    time.sleep(1.0)
    return before if before and steps(store) == before else None


def test_mirante_stop_of_runs_it_cannot_stop(tmp_path):
    (tmp_path / "runs").mkdir()
    write_run(tmp_path / "runs" / "done.mirante", steps=10)
    done = mirante_stop(tmp_path, "done")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "mirante: error: runs/done.mirante: already ended (finished)\n"
    write_run(tmp_path / "runs" / "lost.mirante", steps=10, end=None)
    done = mirante_stop(tmp_path, "lost")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "crashed" in done.stderr
    done = mirante_stop(tmp_path, "nothing")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no such run" in done.stderr


DETACHING_PARENT = """
import os, sys, time
from engine.config import TrainConfig
from engine.launch import start_trainer
from engine.store import RunReader, StoreError

config = TrainConfig(name="left", runs_dir="runs", model="smallcnn", dataset="shapes", device="cpu",
                     steps=100000, log_every=5, capture_every=0).validate()
child = start_trainer(config.to_dict())
print(child.process.pid, flush=True)
while True:
    try:
        with RunReader("runs/left.mirante") as run:
            if run.summary().steps:
                break
    except StoreError:
        pass
    time.sleep(0.1)
child.detach()  # what `mirante train` does when the user leaves the app with q, then d
os._exit(0)
"""


def test_a_detached_trainer_goes_on_until_mirante_stop(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", DETACHING_PARENT], cwd=tmp_path, env=env(), stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    store = tmp_path / "runs" / "left.mirante"
    try:
        trainer = int(proc.stdout.readline())
        assert proc.wait(timeout=60) == 0  # the parent has gone, after its detach
        left_at = steps(store)
        wait_for(lambda: steps(store) > left_at + 10, 20, "training to go on")  # two intervals and more
        assert not gone(trainer) and status(store) == "running"

        done = mirante_stop(tmp_path, "left")
        assert done.returncode == 0 and done.stdout.startswith("left: interrupted at step "), done
        wait_for(lambda: gone(trainer), 15, "the trainer to end")
    finally:
        kill_group(proc)


# --- RunControl: the trainer's decisions, apart from monitoring


class FakeChannel:
    def __init__(self, *batches: list[str]) -> None:
        self.batches, self.parent_gone, self.gone_reason = list(batches), False, "its parent process died"

    def poll(self) -> list[str]:
        return self.batches.pop(0) if self.batches else []


def test_a_stop_holds_at_once_with_one_process_and_the_first_reason_wins():
    from engine.control import RunControl

    control = RunControl()
    control.request("diverged: NaN", "failed")
    control.request("interrupted (Ctrl-C)")
    assert (control.stopped, control.reason, control.status, control.failing()) == (
        True,
        "diverged: NaN",
        "failed",
        True,
    )


def test_under_torchrun_a_wish_waits_for_the_vote_on_its_own_cadence_whatever_the_logging_interval():
    from engine.control import RunControl

    votes: list[bool] = []
    others_want = {"stop": False}

    def agree(mine: bool) -> bool:
        votes.append(mine)
        return mine or others_want["stop"]

    control = RunControl(FakeChannel(), poll_every=1000, agree=agree, vote_every=10)
    control.request("interrupted (Ctrl-C)")
    assert not control.stopped and control.wish == ("interrupted (Ctrl-C)", "interrupted")
    for step in range(1, 10):
        control.vote(step)
    assert votes == [] and not control.stopped  # no vote between the vote steps
    control.vote(10)
    assert votes == [True] and control.reason == "interrupted (Ctrl-C)"

    other = RunControl(agree=agree, vote_every=10)
    others_want["stop"] = True
    other.vote(20)
    assert (other.reason, other.status) == ("stopped on another rank", "interrupted")


def test_commands_pause_until_resumed_and_the_rest_go_to_the_trainer():
    from engine.control import RunControl

    acted, idled = [], []
    control = RunControl(FakeChannel(["capture", "pause"], [], ["resume"]), poll_every=5)
    control.poll(3, acted.append)  # not a polling step
    assert acted == []
    control.poll(5, acted.append, idle=lambda: idled.append(1))
    assert acted == ["capture"] and not control.paused and len(idled) == 2  # paused over two polls, then resumed
    control.channel = FakeChannel(["stop"])
    control.poll(10, acted.append)
    assert control.reason == "stopped by a command from the app or mirante stop"


def test_the_parent_gone_stops_the_run_and_tells_the_trainer():
    from engine.control import RunControl

    channel = FakeChannel()
    channel.parent_gone = True
    acted: list[str] = []
    control = RunControl(channel)
    control.poll(0, acted.append)
    assert acted == ["gone"] and control.reason == "its parent process died"
