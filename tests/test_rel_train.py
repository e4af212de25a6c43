"""The trainer when things go wrong (issue 12): resume after a crash, divergence at the end, hostile files."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import pickle
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import events as ev
from engine import export, train
from engine.config import TrainConfig
from engine.store import RunReader

pytestmark = pytest.mark.usefixtures("one_thread", "few_shapes")

PER_EPOCH = 13  # 240 shapes, 10% held out, batches of 16


@pytest.fixture
def few_shapes(monkeypatch):
    """The built-in dataset at 240 images: 13 steps an epoch, well under a second a run."""
    import engine.data

    original = engine.data.build_data
    monkeypatch.setattr(train, "build_data", lambda *a, **k: original(*a, **{**k, "shapes_count": 240}))


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(
        model="smallcnn",
        dataset="shapes",
        epochs=2,
        batch_size=16,
        lr=0.05,
        runs_dir=str(tmp_path / "runs"),
        name="tiny",
        log_every=5,
        probe_every=5,
        capture_every=0,
        device="cpu",
        workers=0,
    )
    values.update(overrides)
    return TrainConfig(**values).validate()


def store(tmp_path: Path, name: str = "tiny") -> Path:
    return tmp_path / "runs" / f"{name}.mirante"


def ckpt(tmp_path: Path, which: str = "last", name: str = "tiny") -> Path:
    return tmp_path / "runs" / f"{name}.ckpt" / f"{which}.pt"


# --- item 2: --resume records every step once ------------------------------------------------------------


def crash_at(monkeypatch, step: int) -> None:
    """Make the run die at `step` (after it was recorded), as a crash mid-epoch would."""
    original = train.Recorder.record

    def record(self, at, *args, **kwargs):
        original(self, at, *args, **kwargs)
        if at == step:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(train.Recorder, "record", record)


@pytest.mark.parametrize("legacy", [False, True], ids=["seq-in-checkpoint", "checkpoint-without-seq"])
def test_resume_after_a_crash_keeps_one_value_per_step(tmp_path, monkeypatch, legacy):
    config = tiny(tmp_path)
    with monkeypatch.context() as m:
        crash_at(m, PER_EPOCH + 7)  # epoch 1 checkpointed at step 13; steps 14-15 reach the store, then a crash
        assert train.run(config) == 1
    with RunReader(store(tmp_path)) as run:
        assert max(run.scalars("train/loss")[0]) > PER_EPOCH  # steps after the checkpoint were recorded
    if legacy:  # a checkpoint written before checkpoints carried the store's seq
        saved = torch.load(ckpt(tmp_path), weights_only=True)
        assert saved["state"].pop("seq") > 0
        torch.save(saved, ckpt(tmp_path))

    assert train.run(config, resume="tiny") == 0
    with RunReader(store(tmp_path)) as run:
        events = run.follow(0, limit=None)
        steps, _ = run.scalars("train/loss")
        assert steps.tolist() == list(range(1, 2 * PER_EPOCH + 1))  # each step once, none lost
        assert [e.epoch for e in run.epochs()] == [1, 2] and run.status() == "finished"
        note = [e for e in run.events_of("Diagnostic") if e.code == "resume"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    stats = [e.step for e in events if isinstance(e, ev.LayerStats)]
    assert len(stats) == len(set(stats))  # per-layer probes are not repeated either
    (note,) = note
    assert note.level == "info" and f"resumed from step {PER_EPOCH}" in note.message
    assert "discarded" in note.message and note.evidence["discarded"] > 0
    starts = [e for e in events if isinstance(e, ev.RunStarted)]
    assert starts[1].config["resumed_at_step"] == PER_EPOCH and starts[1].config["discarded_events"] > 0
    with RunReader(store(tmp_path)) as run:  # the export's view: one train/loss per step
        out = io.StringIO()
        export.write_csv(run, out)
    losses = [line.split(",")[1] for line in out.getvalue().splitlines() if ",train/loss," in line]
    assert len(losses) == len(set(losses)) == 2 * PER_EPOCH


def test_the_epoch_record_is_committed_before_its_checkpoint(tmp_path, monkeypatch):
    original = train.save_checkpoint
    seen = []

    def save(path, s, state):
        with RunReader(store(tmp_path)) as run:  # what a kill right now would leave in the store
            seen.append((state["epoch"], len(run.epochs())))
        original(path, s, state)

    monkeypatch.setattr(train, "save_checkpoint", save)
    assert train.run(tiny(tmp_path, epochs=1)) == 0
    assert seen and all(epoch == recorded for epoch, recorded in seen), seen


# --- item 5: no checkpoint of broken weights; a NaN at the very end fails the run ---------------------


def assert_diverged(tmp_path: Path, code: int) -> RunReader:
    assert code == 1
    with RunReader(store(tmp_path)) as run:
        assert run.status() == "failed" and "diverged" in run.ended().reason, run.ended()
        steps = run.scalars("train/loss")[0].tolist()
    for which in ("last", "best"):
        path = ckpt(tmp_path, which)
        if path.exists():  # whatever was saved holds finite weights
            saved = torch.load(path, weights_only=True)
            assert all(t.isfinite().all() for t in saved["model"].values() if t.is_floating_point())
    return steps


def test_a_divergence_in_the_last_interval_fails_the_run(tmp_path):
    steps = assert_diverged(tmp_path, train.run(tiny(tmp_path, lr=1e30, steps=3)))
    assert steps == [1, 2, 3]
    assert not ckpt(tmp_path).exists() and not ckpt(tmp_path, "best").exists()


def test_a_divergence_at_an_epoch_end_saves_nothing_and_takes_no_more_steps(tmp_path):
    steps = assert_diverged(tmp_path, train.run(tiny(tmp_path, lr=1e30, log_every=100)))
    assert steps == list(range(1, PER_EPOCH + 1))  # stopped at the epoch's end, not one step later
    assert not ckpt(tmp_path).exists()


def test_weights_gone_non_finite_are_never_saved(tmp_path, monkeypatch):
    """The last update broke the weights but the loss read back was still finite: the checkpoint is refused."""
    original = train.Trainer.end_epoch

    def poison(self):
        with torch.no_grad():
            next(self.s.eager.parameters()).fill_(float("nan"))
        original(self)

    monkeypatch.setattr(train.Trainer, "end_epoch", poison)
    assert train.run(tiny(tmp_path, epochs=1)) == 1
    with RunReader(store(tmp_path)) as run:
        assert run.status() == "failed" and "NaN or inf" in run.ended().reason
    assert not ckpt(tmp_path).exists() and not ckpt(tmp_path, "best").exists()


# --- item 7: bad input found at the start is one line and exit 2; a bad file found later fails the run ---------


def one_error_line(capsys) -> str:
    """What the run said on stderr: exactly one line, no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_capture_layer_the_model_lacks_is_one_line_and_leaves_no_store(tmp_path, capsys):
    assert train.run(tiny(tmp_path, capture_layer="nosuch")) == 2
    err = one_error_line(capsys)
    assert err.startswith("mirante: error: --capture-layer") and "'nosuch'" in err
    assert "conv1" in err and "conv5" in err  # some of the names it could be
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_pretrained_weights_that_cannot_be_downloaded_are_one_line(tmp_path, monkeypatch, capsys):
    import urllib.error

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert train.run(tiny(tmp_path, model="resnet18", pretrained=True, steps=1)) == 2
    err = one_error_line(capsys)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    assert err.startswith("mirante: error: ") and "could not be downloaded" in err and "refused" in err
    assert "https://download.pytorch.org/models/resnet18" in err and str(cache) in err
    assert not store(tmp_path).exists()


class Foreign:
    """A class torch.load(weights_only=True) refuses to rebuild."""


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(pickle.dumps({"model": Foreign()})),
        lambda p: torch.save({"model": {}}, p),  # plain weights, but not a checkpoint of mirante's
    ],
    ids=["garbage", "truncated", "empty", "refused-by-weights-only", "no-config"],
)
def test_a_checkpoint_that_cannot_be_read_is_one_line_and_leaves_the_store_as_it_was(tmp_path, capsys, damage):
    assert train.run(tiny(tmp_path, epochs=1)) == 0
    damage(ckpt(tmp_path))
    before = store(tmp_path).read_bytes()
    capsys.readouterr()
    assert train.run(tiny(tmp_path, epochs=2), resume="tiny") == 2
    err = one_error_line(capsys)
    assert err.startswith(f"mirante: error: {ckpt(tmp_path)}: ") and "not a checkpoint mirante can read" in err
    assert store(tmp_path).read_bytes() == before  # nothing appended, nothing cut
    assert sorted(p.name for p in store(tmp_path).parent.iterdir()) == ["tiny.ckpt", "tiny.mirante"]


def test_a_checkpoint_of_another_model_is_refused_before_the_store_is_cut(tmp_path, capsys):
    """Weights that do not fit the run's model: one line, and the events after the checkpoint stay."""
    assert train.run(tiny(tmp_path, epochs=1)) == 0
    saved = torch.load(ckpt(tmp_path), weights_only=True)
    first = next(iter(saved["model"]))
    saved["model"][first] = torch.zeros(3, 3)  # another model's tensor under the same name
    saved["state"]["seq"] = 5  # a resume that went on would cut the store back to seq 5
    torch.save(saved, ckpt(tmp_path))
    before = store(tmp_path).read_bytes()
    capsys.readouterr()
    assert train.run(tiny(tmp_path, epochs=2), resume="tiny") == 2
    err = one_error_line(capsys)
    assert err.startswith(f"mirante: error: {ckpt(tmp_path)}: ") and "does not fit" in err, err
    assert store(tmp_path).read_bytes() == before


def image_folder(root: Path, per_class: int = 12) -> Path:
    """A tiny ImageFolder of two classes, 8x8 PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(("bright", "dark")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 100, (8, 8, 3), dtype=np.uint8) + (150 if label == 0 else 0)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def break_images(folder: Path) -> None:
    """Every PNG in `folder`: PNG magic and noise, what a damaged download or a file misnamed leaves."""
    rng = np.random.default_rng(1)
    for path in folder.glob("*.png"):
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_cannot_be_read_at_the_start_is_one_line_naming_it(tmp_path, capsys, workers):
    """The normalisation statistics read the training images during setup: exit 2, no store."""
    data = image_folder(tmp_path / "data")
    break_images(data / "dark")
    before = set(multiprocessing.active_children())  # another test's process, not yet collected, is not ours
    assert train.run(tiny(tmp_path, dataset=str(data), batch_size=4, workers=workers)) == 2
    err = one_error_line(capsys)
    assert re.match(rf"mirante: error: cannot read image {re.escape(str(data))}/dark/0\d\d\.png: \S", err), err
    assert not store(tmp_path).exists()
    left = set(multiprocessing.active_children()) - before
    assert not left  # the loader's workers are gone, not kept until the next gc


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_cannot_be_read_during_training_fails_the_run_naming_it(tmp_path, capsys, monkeypatch, workers):
    data = image_folder(tmp_path / "data")
    original = train.setup

    def setup(*args, **kwargs):  # the images go bad once the run has started
        s = original(*args, **kwargs)
        break_images(data / "dark")
        return s

    monkeypatch.setattr(train, "setup", setup)
    before = set(multiprocessing.active_children())
    assert train.run(tiny(tmp_path, dataset=str(data), batch_size=4, workers=workers)) == 1
    assert not set(multiprocessing.active_children()) - before  # the persistent workers end with the run
    err = one_error_line(capsys)
    named = re.match(rf"mirante: run failed: (cannot read image ({re.escape(str(data))}/dark/0\d\d\.png): \S.*)", err)
    assert named, err
    with RunReader(store(tmp_path)) as run:
        assert run.status() == "failed" and run.ended().reason == named.group(1)


def test_a_finished_run_leaves_no_loader_worker_behind(tmp_path):
    data = image_folder(tmp_path / "data")
    before = set(multiprocessing.active_children())
    assert train.run(tiny(tmp_path, dataset=str(data), batch_size=4, workers=1)) == 0
    assert not set(multiprocessing.active_children()) - before


# --- item 9: --pretrained never runs code from the hub cache ------------------------------------------------


class Planted:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hub_cache_file_that_would_run_code_is_refused(tmp_path, monkeypatch, capsys):
    from torchvision.models import ResNet18_Weights

    def no_download(*args, **kwargs):
        raise AssertionError("the cached file is there: nothing to download")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    cached.write_bytes(pickle.dumps(Planted(marker)))
    assert train.run(tiny(tmp_path, model="resnet18", pretrained=True, steps=1)) == 2
    assert not marker.exists()
    err = one_error_line(capsys)
    assert err.startswith(f"mirante: error: {cached}: refused: it is not plain weights") and "delete it" in err
    assert not store(tmp_path).exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # torch's switch is put back as it was


def test_pretrained_weights_load_as_plain_weights(tmp_path, monkeypatch):
    """A real (small) weights file in the cache loads: the switch refuses code, not tensors."""
    from torchvision import models as tv_models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = tv_models.get_model_weights("mobilenet_v3_small").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    reference = tv_models.get_model("mobilenet_v3_small", weights=None)
    torch.save(reference.state_dict(), cached)
    from engine.models import build_model

    model = build_model("mobilenet_v3_small", pretrained=True, image_size=32, num_classes=5)
    assert torch.equal(model.features[0][0].weight, reference.features[0][0].weight)
    assert model.classifier[-1].out_features == 5


# --- item 8: a full disk during training fails the run, says "disk full", and records it if it can ----------


def torch_on_a_full_disk(obj, f, *args, **kwargs):
    """What torch.save does on a full disk: some bytes, ENOSPC, then its zip writer's own error on closing."""
    f.write(b"PK\x03\x04" + bytes(1000))
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1004 vs 940")  # noqa: B904


def test_a_checkpoint_that_does_not_fit_on_the_disk_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    assert train.run(tiny(tmp_path, epochs=1)) == 1
    err = one_error_line(capsys)
    assert err == f"mirante: run failed: disk full: cannot write checkpoint {ckpt(tmp_path)}\n"
    with RunReader(store(tmp_path)) as run:
        assert run.status() == "failed" and run.ended().reason == f"disk full: cannot write checkpoint {ckpt(tmp_path)}"
    assert not ckpt(tmp_path).parent.exists()  # the partial file is gone, and its space with it


class FullDisk:
    """A store connection whose COMMIT fails as SQLite's does on a full disk, while `disk["full"]` and not `fits()`."""

    def __init__(self, db, disk: dict, fits) -> None:
        self.db = db
        self.disk = disk
        self.fits = fits

    def execute(self, sql: str, *args):
        if sql == "COMMIT" and self.disk["full"] and not self.fits():
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def fill_store_at(monkeypatch, step: int, fits) -> None:
    """The run's store refuses its commits as on a full disk from training step `step` on, unless `fits(n)`.

    `n` counts the writers opened on the store, from 0: the run's own, then any other.
    """
    disk = {"full": False}
    writers = []
    original_init, original_record = train.RunWriter.__init__, train.Recorder.record

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        n = len(writers)
        self._db = FullDisk(self._db, disk, lambda: fits(n))
        writers.append(self)

    def record(self, at, *args, **kwargs):
        if at == step:
            disk["full"] = True
        original_record(self, at, *args, **kwargs)

    monkeypatch.setattr(train.RunWriter, "__init__", init)
    monkeypatch.setattr(train.Recorder, "record", record)


def test_a_store_that_fills_the_disk_fails_the_run_and_records_why(tmp_path, monkeypatch, capsys):
    fill_store_at(monkeypatch, 5, fits=lambda n: n > 0)  # a fresh writer's small commit fits, the events held do not
    assert train.run(tiny(tmp_path, epochs=2)) == 1
    err = one_error_line(capsys)
    assert err.startswith(f"mirante: run failed: {store(tmp_path)}: disk full") and "could not be written" in err
    with RunReader(store(tmp_path)) as run:
        ended = run.ended()
        assert run.status() == "failed" and ended.reason.startswith(f"{store(tmp_path)}: disk full"), ended
        assert "events could not be written" in ended.reason and "\n" not in ended.reason
        assert [e.seq for e in run.follow(0, limit=None)] == list(range(1, ended.seq + 1))  # no gap before it
    assert not ckpt(tmp_path).exists()  # the epoch's record never became durable: no checkpoint relies on it


def test_the_room_kept_during_the_run_takes_the_events_held_on_a_full_disk(tmp_path, monkeypatch, capsys):
    room = ckpt(tmp_path).parent / "reserve"
    fill_store_at(monkeypatch, 5, fits=lambda n: not room.exists())  # full until the room kept is given back
    assert train.run(tiny(tmp_path, epochs=2)) == 1
    err = one_error_line(capsys)
    assert err.startswith(f"mirante: run failed: {store(tmp_path)}: disk full, cannot write the run store"), err
    with RunReader(store(tmp_path)) as run:
        events = run.follow(0, limit=None)
        assert run.status() == "failed" and "disk full" in run.ended().reason
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.kind for e in events[-2:]] == ["Diagnostic", "RunEnded"]  # every event held was written
    assert not room.exists()


def test_a_disk_that_stays_full_is_one_line_even_when_the_end_cannot_be_recorded(tmp_path, monkeypatch, capsys):
    fill_store_at(monkeypatch, 5, fits=lambda n: False)
    assert train.run(tiny(tmp_path, epochs=2)) == 1
    err = one_error_line(capsys)
    assert err.startswith(f"mirante: run failed: {store(tmp_path)}: disk full") and "could not be written" in err
    with RunReader(store(tmp_path)) as run:
        assert run.ended() is None  # it reads as crashed: true, and nothing else could be done
    assert not ckpt(tmp_path).parent.exists()  # the room kept is given back all the same


def test_a_real_disk_that_fills_up_records_the_failure(tmp_path):
    """On a small tmpfs (root only): the store fills the disk; the room kept for the end lets it record why."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        config = tiny(tmp_path, runs_dir=str(disk), overfit_batches=2, steps=100_000, capture_every=1, probe_every=1)
        assert train.run(config) == 1
        with RunReader(disk / "tiny.mirante") as run:
            assert run.status() == "failed" and "disk full" in run.ended().reason, run.ended()
        assert not (disk / "tiny.ckpt").exists()  # the room kept is given back
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --- SIGTERM while the run is ending: torchrun's agent stops the ranks as a failing rank records its end ----


def test_a_sigterm_while_the_run_records_its_end_does_not_cut_the_record_short(tmp_path, monkeypatch):
    original = train.release_room

    def release_room(path):  # inside end_run, between the RunEnded event and the store's close
        os.kill(os.getpid(), signal.SIGTERM)
        original(path)

    monkeypatch.setattr(train, "release_room", release_room)
    assert train.run(tiny(tmp_path, epochs=1)) == 0
    with RunReader(store(tmp_path)) as run:
        assert run.status() == "finished", run.ended()


def test_a_sigterm_while_a_failure_is_recorded_keeps_the_failure(tmp_path, monkeypatch, capsys):
    crash_at(monkeypatch, 3)
    original = train.Emitter.emit

    def emit(self, kind, *args, **kwargs):  # the agent's SIGTERM lands as the failing run says why
        if kind is ev.Diagnostic and kwargs.get("code") == "exception":
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, kind, *args, **kwargs)

    monkeypatch.setattr(train.Emitter, "emit", emit)
    assert train.run(tiny(tmp_path, epochs=1)) == 1
    assert one_error_line(capsys) == "mirante: run failed: RuntimeError: simulated crash\n"
    with RunReader(store(tmp_path)) as run:
        assert run.status() == "failed" and run.ended().reason == "RuntimeError: simulated crash"
