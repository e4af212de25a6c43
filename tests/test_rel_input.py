"""Bad input to `mirante` is one line on stderr and exit 2: non-finite numbers, run names, runs dirs, sizes.

In-process (no subprocess, no torch): every case fails before anything is spawned.
"""

from __future__ import annotations

import math

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
