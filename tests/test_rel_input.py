"""Bad input to `mirante` is one line on stderr and exit 2: non-finite numbers, run names, runs dirs, sizes.

In-process (no subprocess, no torch): every case fails before anything is spawned.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from engine.config import ConfigError, TrainConfig
from tui.cli import main


@pytest.fixture(autouse=True)
def nothing_spawns(monkeypatch):
    """A case that got past the checks would train: fail it at once instead."""
    import tui.cli
    import tui.headless

    def spawned(*args, **kwargs):
        raise AssertionError("a trainer was started")

    monkeypatch.setattr(tui.headless, "train_headless", spawned)
    monkeypatch.setattr(tui.cli, "train_in_app", spawned)
    monkeypatch.setattr(tui.cli, "train_distributed", spawned)


def one_line_error(capsys, argv: list[str], *words: str) -> str:
    """Run `mirante ARGV`; it must fail with exit 2 and one line on stderr holding `words`."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mirante: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- item 6: every float option is finite ------------------------------------------------------

TRAIN_FLOATS = [
    "--lr",
    "--weight-decay",
    "--clip-grad",
    "--gamma",
    "--momentum",
    "--label-smoothing",
    "--val-fraction",
    "--init-std",
    "--peak-tflops",
    "--l1",
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
@pytest.mark.parametrize("flag", TRAIN_FLOATS)
def test_train_float_options_must_be_finite(capsys, tmp_path, flag, value):
    one_line_error(capsys, ["train", "--runs-dir", str(tmp_path), f"{flag}={value}"], flag, "finite")


@pytest.mark.parametrize(
    "argv",
    [
        ["lr-find", "--min-lr", "nan"],
        ["lr-find", "--max-lr", "inf"],
        ["stop", "somerun", "--timeout", "nan"],
        ["stop", "somerun", "--timeout", "inf"],
        ["replay", "somerun", "--speed", "nan"],
        ["replay", "somerun", "--speed", "inf"],
        ["profile", "--peak-tflops", "nan"],
    ],
    ids=lambda a: " ".join(a),
)
def test_other_float_options_must_be_finite(capsys, argv):
    one_line_error(capsys, argv, argv[-2], "finite")


def test_a_word_for_a_number_is_one_line_too(capsys):
    one_line_error(capsys, ["train", "--lr", "fast"], "--lr", "'fast'")


@pytest.mark.parametrize(
    "field", ["lr", "weight_decay", "clip_grad", "gamma", "momentum", "init_std", "peak_tflops", "l1", "val_fraction"]
)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_config_from_a_checkpoint_must_be_finite_too(field, value):
    """--resume takes the config a checkpoint saved: validate() checks it as the command line does."""
    with pytest.raises(ConfigError, match="finite"):
        TrainConfig.from_dict({field: value}).validate()
    with pytest.raises(ConfigError, match="finite"):
        TrainConfig(range_test=[1e-6, math.inf]).validate()


# --- item 11: run names are checked in one place ------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b/c", ".hidden", "a b", "x\x1b[2J", ""])
@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_a_bad_run_name_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch, command, name):
    runs = tmp_path / "deep" / "runs"
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, [command, "--runs-dir", str(runs), "--name", name], "run name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == [], "nothing may be created"


@pytest.mark.parametrize("name", ["../../x", "a/b", ".x"])
def test_resume_by_a_bad_name_is_refused(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, ["train", "--runs-dir", str(tmp_path / "runs"), "--resume", name], "run name")


def test_a_config_with_a_bad_name_is_refused():
    with pytest.raises(ConfigError, match="run name"):
        TrainConfig(name="../x").validate()


@pytest.mark.parametrize("folder", ["my data [v2]", "x\x1b]0;pwned\x07", "..", "ünïcode", "a" * 250, ".hidden"])
def test_the_default_name_of_any_image_folder_is_a_valid_name(tmp_path, folder):
    from engine.names import check_name

    data = tmp_path / folder
    data.mkdir(exist_ok=True)
    config = TrainConfig(dataset=str(data), runs_dir=str(tmp_path / "runs")).validate()
    name = config.run_name
    assert check_name(name) == name and name.startswith("smallcnn-")
    config.name = name
    config.validate()  # the CLI fixes the default name, then the child validates it again


# --- item 7 (command line): --runs-dir and --image-size ---------------------------------------


@pytest.mark.parametrize("command", ["train", "lr-find"])
@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_a_runs_dir_that_cannot_be_a_directory_is_one_line(capsys, tmp_path, command, where):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    runs = afile if where == "file" else afile / "runs"
    one_line_error(capsys, [command, "--runs-dir", str(runs)], "--runs-dir", "not a directory")
    assert afile.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only directory")
def test_a_read_only_runs_dir_is_one_line(capsys, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o555)
    one_line_error(capsys, ["train", "--runs-dir", str(runs)], "--runs-dir", "not writable")
    one_line_error(capsys, ["train", "--runs-dir", str(runs / "sub")], "--runs-dir", "not writable")


@pytest.mark.parametrize("sub", ["", "new/deeper"])
def test_a_runs_dir_this_user_cannot_write_is_one_line(capsys, tmp_path, monkeypatch, sub):
    """As the test above, for root too: the directory (or the one it would be made in) says it is not writable."""
    runs = tmp_path / "runs"
    runs.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != runs and real(p, mode, **kw))
    one_line_error(capsys, ["train", "--runs-dir", str(runs / sub)], "--runs-dir", "not writable")


def test_a_runs_dir_that_does_not_exist_yet_is_fine(tmp_path):
    TrainConfig(runs_dir=str(tmp_path / "a" / "b")).validate()
    assert not (tmp_path / "a").exists()  # validating creates nothing


@pytest.mark.parametrize("size", ["100000", "5000"])
def test_a_huge_image_size_is_one_line(capsys, tmp_path, size):
    one_line_error(capsys, ["train", "--runs-dir", str(tmp_path), "--image-size", size], "--image-size", size)


def test_every_models_own_size_is_allowed():
    from engine import catalog

    for spec in catalog.MODELS.values():
        for side in (spec.min_size, spec.default_size or 224, 299, 512, catalog.MAX_SIZE):
            catalog.check_size(spec, side)
