"""Child processes for the tests: each in its own session, its whole process group killed on a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def run_group(
    argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None, merge: bool = False
) -> subprocess.CompletedProcess:
    """Run `argv` to its end; stdout and stderr captured (together with `merge`)."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
