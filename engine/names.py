"""Run names: the one check the CLI, `Monitor` and `--resume` share. No torch here.

A run name becomes file names in the runs directory (NAME.mirante, NAME.ckpt/, NAME.log,
NAME.mirante.ctl), so it may hold only letters, digits, '.', '_' and '-', may not start
with a dot (hidden files, '..'), and stays short enough for every file system.
"""

from __future__ import annotations

import re
from pathlib import Path

SUFFIX = ".mirante"
"""A run's store is NAME.mirante (engine.store keeps its format)."""

MAX_LENGTH = 200  # NAME.mirante.ctl must fit in a 255-byte file name
_ALLOWED = re.compile(r"[A-Za-z0-9._-]+")


class RunNameError(ValueError):
    """A run name that cannot be a file name in the runs directory; the message is one line."""


def check_name(name: str) -> str:
    """`name` itself if it can name a run; otherwise RunNameError saying why, in one line."""
    if not isinstance(name, str) or not name:
        raise RunNameError("a run name cannot be empty")
    if len(name) > MAX_LENGTH:
        raise RunNameError(f"run name too long ({len(name)} characters; at most {MAX_LENGTH})")
    if not _ALLOWED.fullmatch(name):
        bad = sorted({c for c in name if not _ALLOWED.fullmatch(c)})
        shown = " ".join(repr(c) for c in bad[:5])
        raise RunNameError(f"run name {name!r}: only letters, digits, '.', '_' and '-' are allowed (not {shown})")
    if name.startswith("."):
        raise RunNameError(f"run name {name!r} cannot start with a dot")
    return name


def store_path(runs_dir: str | Path, name: str) -> Path:
    """Where the run `name` keeps its events: runs_dir/NAME.mirante."""
    return Path(runs_dir) / f"{check_name(name)}{SUFFIX}"


def find_run(run: str | Path, runs_dir: str | Path) -> Path | None:
    """A run given as a path to its store, or by name in `runs_dir` (with or without the suffix); None if neither."""
    candidates = [Path(run)]
    if not Path(run).is_absolute():
        candidates += [Path(runs_dir) / run, Path(runs_dir) / f"{run}{SUFFIX}"]
    return next((c for c in candidates if c.exists()), None)
