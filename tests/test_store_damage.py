"""Bad input to the reader: each problem is one StoreError naming the file, never a raw traceback."""

from __future__ import annotations

import random
import shutil
import sqlite3

import pytest

from engine.store import RunReader, StoreError
from tests.runs import same, write_run


def read_everything(path):
    """Everything a user can ask of a run: metadata, every event, every series, the epochs."""
    with RunReader(path) as run:
        out = {
            "meta": run.meta(),
            "status": run.status(),
            "summary": run.summary(),
            "events": run.follow(0, limit=None),
            "series": {name: run.scalars(name) for name in run.scalar_names()},
            "epochs": run.epochs(),
        }
    return out


def assert_one_line_error(path, match: str | None = None) -> StoreError:
    with pytest.raises(StoreError) as info:
        read_everything(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    if match:
        assert match in message, message
    return info.value


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.mirante"
    events = write_run(path, steps=6000)
    return path, events


def test_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "nope.mirante", "no such file")
    assert not (tmp_path / "nope.mirante").exists()  # the reader did not create it


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mirante"
    path.touch()
    assert_one_line_error(path, "empty file")


def test_directory(tmp_path):
    assert_one_line_error(tmp_path, "is a directory")


@pytest.mark.parametrize("content", [b"hello, world\n", bytes(range(256)) * 40])
def test_not_sqlite(tmp_path, content):
    path = tmp_path / "junk.mirante"
    path.write_bytes(content)
    assert_one_line_error(path, "not a mirante run store")


def test_some_other_sqlite_database(tmp_path):
    path = tmp_path / "other.mirante"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    assert_one_line_error(path, "not a mirante run store")


def test_newer_schema(tmp_path, good_run):
    path = tmp_path / "newer.mirante"
    shutil.copy(good_run[0], path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    assert_one_line_error(path, "newer mirante")


def test_the_undamaged_run_reads(good_run):
    path, events = good_run
    got = read_everything(path)
    assert len(got["events"]) == len(events) and all(map(same, got["events"], events))


@pytest.mark.parametrize("fraction", [0.0001, 0.01, 0.2, 0.5, 0.8, 0.97, 0.9999])
def test_truncated(tmp_path, good_run, fraction):
    path = tmp_path / "truncated.mirante"
    data = good_run[0].read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    assert_one_line_error(path)


@pytest.mark.parametrize("seed", range(12))
def test_bytes_overwritten_in_the_middle(tmp_path, good_run, seed):
    """Damage anywhere past the header is reported, or (in unused space) changes nothing."""
    path, events = tmp_path / "damaged.mirante", good_run[1]
    data = bytearray(good_run[0].read_bytes())
    rng = random.Random(seed)
    start = rng.randrange(len(data) // 8, len(data) - 64)
    data[start : start + 64] = rng.randbytes(64)
    path.write_bytes(bytes(data))
    try:
        got = read_everything(path)
    except StoreError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message
        return
    assert len(got["events"]) == len(events) and all(map(same, got["events"], events)), (
        f"damage at byte {start} changed what was read without an error"
    )
