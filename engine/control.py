"""Run control: commands to a training run from any terminal, and a trainer that ends with its parent.

A run being written on this machine reads its commands from a FIFO beside its store
(`runs/NAME.mirante.ctl`, mode 0600: only its owner can open it; no network port). `send`
writes one command line to it from any process; the trainer's `Channel` reads it, together
with the app's command queue, once per logging interval. The Channel also tells the trainer
when the process that started it has died: a spawned trainer holds the read end of a
lifeline pipe whose write end only its parent holds (EOF: the parent is gone, however it
died; a b"detach" sent on it first means the parent left the run going on purpose), and
torchrun's rank 0 checks the `mirante train` process named in OWNER_ENV.

Standard library only: the torch-free UI imports it.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

COMMANDS = ("pause", "resume", "stop", "capture", "detach", "prune")
CTL_SUFFIX = ".ctl"
DETACH = b"detach"  # said on the lifeline before the parent exits: the trainer then outlives it
OWNER_ENV = "MIRANTE_OWNER"  # "PID:START" of the `mirante train` that launched torchrun's ranks
LINE_MAX = 512  # a command line longer than this is junk: dropped, not buffered forever


class ControlError(Exception):
    """A run that cannot be reached, or a command pipe that cannot be made: one line saying why."""


class NotListening(ControlError):
    """The run has no command pipe, or nobody reads it: it has ended, or has not started yet."""


def is_command(line: str) -> bool:
    """One of COMMANDS, or "capture LAYER" (a capture that keeps that layer whole)."""
    word, _, rest = line.partition(" ")
    return line in COMMANDS or (word == "capture" and bool(rest) and " " not in rest.strip())


def control_path(store: str | os.PathLike) -> Path:
    """The FIFO beside the store: runs/NAME.mirante -> runs/NAME.mirante.ctl."""
    store = Path(store)
    return store.with_name(store.name + CTL_SUFFIX)


# --- the sender's side ----------------------------------------------------------------------


def send(store: str | os.PathLike, command: str, wait: float = 0.0) -> None:
    """Write one command line to the run's FIFO; never blocks. ControlError when the run cannot be reached.

    `wait`: keep trying for up to this many seconds while the run has no pipe yet or nobody
    reads it (a trainer still starting up); the default tries once.
    """
    if not is_command(command):
        raise ValueError(f"unknown command {command!r}: one of {', '.join(COMMANDS)}")
    deadline = time.monotonic() + wait
    while True:
        try:
            return _send_once(Path(store), command)
        except NotListening:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def _send_once(store: Path, command: str) -> None:
    path = control_path(store)
    why = f"{store}: cannot reach the run"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotListening(
            f"{why}: it has no command pipe ({path.name}): it is not training (finished or crashed), "
            "or it is written by your own loop through Monitor (which takes no commands), by an older mirante, "
            "or on another machine"
        ) from None
    except PermissionError:
        raise ControlError(f"{why}: its command pipe belongs to another user") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO with no reader
            raise NotListening(
                f"{why}: nobody reads its commands (its trainer is gone, or runs on another machine)"
            ) from None
        raise ControlError(f"{why}: {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise ControlError(f"{why}: {path} is not a command pipe")
        os.write(fd, f"{command}\n".encode())  # shorter than PIPE_BUF: written whole or not at all
    except BlockingIOError:
        raise ControlError(f"{why}: the run does not read its commands (its pipe is full)") from None
    finally:
        os.close(fd)


def stop(store: str | os.PathLike, timeout: float = 60.0, poll_s: float = 0.2) -> Any:
    """Ask a running run to stop and wait for its RunEnded event (returned); ControlError if it cannot."""
    from engine.store import RunReader  # sqlite3 and numpy: only what waits on a run reads its store

    with RunReader(store) as run:
        status = run.status()
        if status != "running":
            raise ControlError(f"{store}: already ended ({status})")
        send(store, "stop")
        deadline = time.monotonic() + timeout
        while True:
            ended = run.ended()
            if ended is not None:
                return ended
            if not run.writer_alive():
                raise ControlError(f"{store}: its writer died before the run ended (crashed)")
            if time.monotonic() >= deadline:
                raise ControlError(f"{store}: asked to stop, but it has not ended after {timeout:g} s")
            time.sleep(poll_s)


# --- whose run it is ------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks after boot) from /proc/PID/stat; None if there is no such file."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def owner_token(pid: int | None = None) -> str:
    """'PID:START' naming a process so that another process reusing its pid later does not pass for it."""
    pid = os.getpid() if pid is None else pid
    now = _proc_stat(pid)
    return f"{pid}:{now[1] if now else ''}"


def owner_alive(token: str) -> bool:
    """Whether the process `owner_token` named is still running (a zombie counts as dead)."""
    pid_text, _, start = token.partition(":")
    pid = int(pid_text)
    if os.path.exists("/proc/self/stat"):
        now = _proc_stat(pid)
        return now is not None and now[0] != "Z" and (not start or now[1] == start)
    try:  # no /proc (macOS): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


# --- the trainer's side ---------------------------------------------------------------------


class Channel:
    """The commands sent to a training run, and whether the process that started it has died.

    `store`: the run this process writes; its FIFO is made and opened at once, so commands sent
    while the run is still being set up wait in the pipe. `queue`: the app's command queue,
    when the app started the trainer. `lifeline`: the read end of the pipe whose write end the
    parent holds until it exits. `owner`: an `owner_token` (under torchrun, from OWNER_ENV).
    """

    def __init__(
        self,
        store: str | os.PathLike | None = None,
        *,
        queue: Any | None = None,
        lifeline: Any | None = None,
        owner: str | None = None,
    ) -> None:
        self.path = control_path(store) if store is not None else None
        self.queue = queue
        self.detached = False  # the parent left the run going: its death is no reason to stop
        self._fd: int | None = None
        self._fifo_id: tuple[int, int] | None = None  # (device, inode): close() removes only its own FIFO
        self._partial = b""  # a line not yet complete
        self._said: collections.deque[str] = collections.deque()  # commands said on the lifeline (a detach)
        self._lifeline_closed = False
        self._parent_pid = os.getppid()
        self._owner = owner if owner and owner.partition(":")[0].isdigit() else None
        if self.path is not None:
            self._open_fifo(self.path)
        if lifeline is not None:
            threading.Thread(target=self._watch, args=(lifeline,), name="mirante-lifeline", daemon=True).start()

    def _open_fifo(self, path: Path) -> None:
        if not hasattr(os, "mkfifo"):
            return  # Windows: no FIFOs; the app's queue still works
        try:
            if path.exists() or path.is_symlink():
                self._remove_stale(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkfifo(path, 0o600)
            os.chmod(path, 0o600)  # mkfifo's mode passes through the umask; say it outright
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            info = os.fstat(self._fd)
            self._fifo_id = (info.st_dev, info.st_ino)
        except FileExistsError:  # another process made it between our look and mkfifo
            raise ControlError(f"{path}: another process is taking this run's commands") from None
        except OSError as exc:  # a filesystem without FIFOs: train on, without control from other terminals
            print(
                f"mirante: warning: {path}: no command pipe ({exc.strerror}): pause and stop only from the app",
                file=sys.stderr,
            )

    @staticmethod
    def _remove_stale(path: Path) -> None:
        """Remove the FIFO a crashed run left behind; refuse one that a live process still reads."""
        if not stat.S_ISFIFO(path.lstat().st_mode):
            raise ControlError(f"{path}: in the way of this run's command pipe, and not a pipe (remove it)")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            path.unlink()  # nobody reads it: stale
            return
        raise ControlError(f"{path}: another process is taking this run's commands (is the run training already?)")

    def _watch(self, lifeline: Any) -> None:
        """Block on the lifeline: a detach, or EOF once every copy of its write end is closed."""
        try:
            while True:
                if lifeline.recv_bytes() == DETACH:
                    self.detached = True  # set before EOF can be seen: the detach wins
                    self._said.append("detach")
        except (EOFError, OSError):
            self._lifeline_closed = True

    def poll(self) -> list[str]:
        """The commands that arrived since the last poll, in order, unknown words dropped; never blocks.

        "detach" is returned only when the parent said it (on the lifeline or the app's queue): it
        is leaving, and nobody will read the live queue. A detach from another terminal (or from
        the `mirante train` that launched torchrun) only disowns the run: it outlives its parent.
        """
        said = [self._said.popleft() for _ in range(len(self._said))] + self._drain_queue()
        heard = self._read_fifo()
        if "detach" in said or "detach" in heard:
            self.detached = True
        return [w for w in said if is_command(w)] + [w for w in heard if is_command(w) and w != "detach"]

    def _read_fifo(self) -> list[str]:
        if self._fd is None:
            return []
        data = self._partial
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:  # writers connected, nothing to read
                break
            if not chunk:  # no writer connected now (each `send` opens and closes)
                break
            data += chunk
        *lines, self._partial = data.split(b"\n")
        if len(self._partial) > LINE_MAX:
            self._partial = b""
        return [line.decode("ascii", "replace").strip() for line in lines]

    def _drain_queue(self) -> list[str]:
        words: list[str] = []
        while self.queue is not None:
            try:
                words.append(self.queue.get_nowait())
            except Empty:
                break
        return words

    @property
    def parent_gone(self) -> bool:
        """The process that started this run has died without detaching: the run should stop."""
        closed = self._lifeline_closed  # read before `detached`: the watcher sets detached first, then closed
        if self.detached:
            return False
        return closed or (self._owner is not None and not owner_alive(self._owner))

    @property
    def gone_reason(self) -> str:
        """Why the run stops when `parent_gone`: the RunEnded reason."""
        if self._lifeline_closed:
            return f"its parent process (pid {self._parent_pid}) died"
        return f"the mirante train that launched it (pid {self._owner.partition(':')[0]}) died"

    def close(self) -> None:
        """Stop taking commands: close and remove the FIFO (a run that has ended has none)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        try:
            info = self.path.lstat()
            if (info.st_dev, info.st_ino) == self._fifo_id:
                self.path.unlink()
        except FileNotFoundError:
            pass


# --- the trainer's side: whether the run goes on -------------------------------------------

STOP_VOTE_STEPS = 10
"""Under torchrun, steps between the ranks' votes on stopping (one small host collective each): a
Ctrl-C or a check's stop takes effect within this many steps, whatever --log-every is."""


class RunControl:
    """Whether a run goes on: its stop (why, and the status it ends with), its pause, the commands asking.

    The trainer owns it; the monitoring side (recorder, emitter, checks) decides nothing. A stop is
    asked by a command, by a check (a divergence, lr-find's end) or by the parent's death. With one
    process it holds at once. Under torchrun every rank must stop at the same step, so a rank's wish
    waits for the next vote (`vote`: every `vote_every` steps, the same steps on every rank), after
    which all stop together.
    """

    def __init__(
        self,
        channel: Channel | None = None,
        *,
        poll_every: int = 1,
        agree: Callable[[bool], bool] | None = None,
        vote_every: int = STOP_VOTE_STEPS,
    ) -> None:
        self.channel = channel
        self.poll_every = poll_every  # steps between looks at the commands (host work: a pipe read, a queue drain)
        self.agree = agree  # under torchrun: this rank's wish in, whether any rank wishes to stop out
        self.vote_every = vote_every
        self.reason: str | None = None  # once set, the run stops at the next step
        self.status = "interrupted"  # the RunEnded status of a stopped run: a check may say otherwise
        self.wish: tuple[str, str] | None = None  # under torchrun: (reason, status), until the vote
        self.paused = False

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def request(self, reason: str, status: str = "interrupted") -> None:
        """Stop at the next step; under torchrun at the next vote, all ranks together. The first asking wins."""
        if self.reason is not None or self.wish is not None:
            return
        if self.agree is None:
            self.reason, self.status = reason, status
        else:
            self.wish = (reason, status)

    def heed(self, finding: Any) -> None:
        """Stop if a live check's stopping finding (or None) says so: lr-find's end, when the loss blew up,
        finishes the run; a divergence fails it."""
        if finding is None:
            return
        if finding.code == "lr-find":
            self.request("the loss blew up: the sweep is over", "finished")
        else:
            self.request(f"diverged: {finding.message}", "failed")

    def failing(self) -> bool:
        """Whether the run is to end as failed (a divergence): its weights are not worth a checkpoint."""
        if self.reason is not None:
            return self.status == "failed"
        return self.wish is not None and self.wish[1] == "failed"

    def vote(self, step: int) -> None:
        """Under torchrun, at every `vote_every`-th step: the ranks agree whether any wants to stop."""
        if self.agree is None or self.reason is not None or step % self.vote_every:
            return
        if self.agree(self.wish is not None):
            self.reason, self.status = self.wish or ("stopped on another rank", "interrupted")

    def poll(self, step: int, act: Callable[[str], None], idle: Callable[[], None] = lambda: None) -> None:
        """The commands, every `poll_every` steps. Stop, pause and resume are taken here; capture and detach,
        and "gone" when the parent died, go to `act`. While paused, waits here (calling `idle` every 0.1 s)."""
        if self.channel is None or step % self.poll_every:
            return
        while True:
            for command in self.channel.poll():
                if command == "stop":
                    self.request("stopped by a command from the app or mirante stop")
                elif command == "prune":  # a search's pruner: a result, not an interruption (no checkpoint)
                    self.request("pruned by the search: its validation fell below the other trials'", "pruned")
                elif command == "pause" and self.agree is not None:  # the other ranks would time out waiting
                    print("mirante: pause is not available under torchrun; ignored", file=sys.stderr)
                elif command in ("pause", "resume"):
                    self.paused = command == "pause"
                else:
                    act(command)
            if self.channel.parent_gone and self.reason is None and self.wish is None:
                act("gone")
                self.request(self.channel.gone_reason)
            if not self.paused or self.reason is not None or self.wish is not None:
                return
            idle()
            time.sleep(0.1)
