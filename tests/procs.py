"""Child processes for the tests: each in its own session, its whole process group killed on a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def start(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, merge: bool = False) -> subprocess.Popen:
    """Start `argv` in a session of its own, stdout and stderr piped (together with `merge`)."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Wait for `proc`'s output; past `timeout`, kill its whole process group (nothing runs on) and raise."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise


def run_group(
    argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None, merge: bool = False
) -> subprocess.CompletedProcess:
    """Run `argv` to its end in its own session."""
    proc = start(argv, cwd=cwd, env=env, merge=merge)
    out, err = finish(proc, timeout)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
