"""The training engine on the CPU: events, no per-step syncs, checkpoints and resume, the Monitor API."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import events as ev
from engine import schedule, train
from engine.config import ConfigError, TrainConfig
from engine.monitor import Monitor
from engine.store import RunReader
from tests.loops import monitored_step
from tests.procs import run_group

pytestmark = pytest.mark.usefixtures("one_thread", "small_shapes")

ROOT = Path(__file__).resolve().parents[1]
EVERY_KIND = {"RunStarted", "Step", "LayerStats", "Epoch", "Capture", "Maps", "Filters", "System", "RunEnded"}


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    """smallcnn on 1,200 shapes: a few seconds on one CPU thread."""
    values = dict(
        model="smallcnn",
        dataset="shapes",
        epochs=2,
        batch_size=32,
        lr=0.05,
        runs_dir=str(tmp_path / "runs"),
        name="tiny",
        log_every=5,
        probe_every=3,
        update_every=3,
        capture_every=10,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values).validate()


def kinds(path: Path) -> list[ev.Event]:
    with RunReader(path) as run:
        return run.follow(0, limit=None)


def test_a_run_records_every_event_kind(tmp_path):
    config = tiny(tmp_path, peak_tflops=0.5)
    assert train.run(config) == 0
    events = kinds(tmp_path / "runs" / "tiny.mirante")
    assert {e.kind for e in events} >= EVERY_KIND
    started = events[0]
    assert isinstance(started, ev.RunStarted) and started.model == "smallcnn" and started.dataset == "shapes"
    assert started.layers[0] == "conv1" and started.model_summary["params"] > 0
    steps = [e for e in events if isinstance(e, ev.Step) and "train/loss" in e.scalars]
    per_epoch = started.config["steps_per_epoch"]
    assert [s.step for s in steps] == list(range(1, 2 * per_epoch + 1))
    assert abs(steps[0].scalars["train/loss"] - math.log(10)) < 0.5  # random weights: about ln(10)
    timed = [s.scalars for s in steps if "throughput/img_s" in s.scalars]
    assert len(timed) >= 2 * per_epoch // 5  # one per --log-every interval, and at each epoch end
    flops_per_image = started.model_summary["train_flops"]
    for t in timed:  # TFLOP/s and MFU follow from images/s and the exact training FLOPs per image
        assert t["perf/tflops"] == pytest.approx(t["throughput/img_s"] * flops_per_image / 1e12)
        assert t["perf/mfu"] == pytest.approx(t["perf/tflops"] / 0.5)
    assert started.model_summary["peak_tflops"] == 0.5
    stats = [e for e in events if isinstance(e, ev.LayerStats)]
    assert [s.step for s in stats] == list(range(1, 2 * per_epoch + 1, 3))
    assert all(len(s.grad_norm) == len(started.layers) for s in stats)
    epochs = [e for e in events if isinstance(e, ev.Epoch)]
    assert [e.epoch for e in epochs] == [1, 2] and all(0 <= e.val_acc <= 1 for e in epochs)
    for e in epochs:  # the validation's confusion counts: every validation image once, the right ones on the diagonal
        counts = np.asarray(e.confusion).reshape(10, 10)
        n_val = round(1200 * TrainConfig().val_fraction)
        assert counts.sum() == n_val and np.trace(counts) / n_val == pytest.approx(e.val_acc)
    maps = {(e.layer, e.step) for e in events if isinstance(e, ev.Maps)}
    assert ("input", 0) in maps and ("conv1", 0) in maps and ("conv1", 10) in maps
    assert isinstance(events[-1], ev.RunEnded) and events[-1].status == "finished"
    assert (tmp_path / "runs" / "tiny.ckpt" / "last.pt").exists()
    assert (tmp_path / "runs" / "tiny.ckpt" / "best.pt").exists()


def test_steps_that_do_not_log_never_wait_for_the_device(tmp_path, monkeypatch):
    """Patch every host-sync method to fail except inside read-back deliveries and epoch ends."""
    allowed = {"depth": 0}

    def forbid(name, original):
        def guarded(*args, **kwargs):
            if not allowed["depth"]:
                raise AssertionError(f"{name} called on a step that does not log")
            return original(*args, **kwargs)

        return guarded

    def permit(original):
        def wrapper(*args, **kwargs):
            allowed["depth"] += 1
            try:
                return original(*args, **kwargs)
            finally:
                allowed["depth"] -= 1

        return wrapper

    from engine import recorder

    config = tiny(tmp_path, steps=23, log_every=10, probe_every=1, update_every=4, capture_every=7)
    s = train.setup(config)
    trainer = train.Trainer(s, train.Emitter(train.RunWriter(tmp_path / "sync.mirante")), name="sync")
    trainer.start()
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbid(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", forbid("synchronize", torch.cuda.synchronize))
    monkeypatch.setattr(recorder.Recorder, "flush", permit(recorder.Recorder.flush))
    monkeypatch.setattr(train.Trainer, "end_epoch", permit(train.Trainer.end_epoch))
    trainer.train_one_epoch()  # 23 steps: 21 do not log; gradient norms every step, updates at 0, 4, ...
    assert trainer.at.step == 23
    monkeypatch.undo()
    trainer.rec.flush(trainer.at.step, wait=True)
    trainer.out.close()
    events = kinds(tmp_path / "sync.mirante")
    stats = [e for e in events if isinstance(e, ev.LayerStats)]
    assert [e.step for e in stats] == list(range(1, 24)) and all(len(e.grad_norm) for e in stats)
    assert [e.step for e in stats if len(e.update_ratio)] == [1, 5, 9, 13, 17, 21]
    assert sorted({e.step for e in events if isinstance(e, (ev.Capture, ev.Maps))}) == [7, 14, 21]


def test_ctrl_c_checkpoints_and_resume_continues_the_same_store(tmp_path):
    config = tiny(tmp_path, epochs=2)
    s = train.setup(config)
    writer = train.RunWriter(tmp_path / "runs" / "tiny.mirante")
    trainer = train.Trainer(s, train.Emitter(writer), name="tiny")
    trainer.start()
    original = trainer.rec.record

    def stop_at_step_7(step, *args, **kwargs):
        original(step, *args, **kwargs)
        if step == 7:
            trainer.control.request("interrupted (Ctrl-C)")

    trainer.rec.record = stop_at_step_7
    assert trainer.fit() == "interrupted"
    trainer.out.emit(ev.RunEnded, trainer.at.step, status="interrupted", reason="test")
    trainer.out.close()
    path = tmp_path / "runs" / "tiny.mirante"
    with RunReader(path) as run:
        assert run.status() == "interrupted"
        assert run.scalars("train/loss")[0].tolist() == list(range(1, 8))

    assert train.run(config, resume="tiny") == 0
    events = kinds(path)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    starts = [e for e in events if isinstance(e, ev.RunStarted)]
    assert len(starts) == 2 and starts[1].config["resumed_at_step"] == 7 and starts[1].step == 7
    loss_steps = [e.step for e in events if isinstance(e, ev.Step) and "train/loss" in e.scalars]
    per_epoch = starts[0].config["steps_per_epoch"]
    assert loss_steps == list(range(1, 2 * per_epoch + 1))  # continues at 8: nothing repeated or skipped
    with RunReader(path) as run:
        assert run.status() == "finished"
        assert [e.epoch for e in run.epochs()] == [1, 2]


def test_monitor_drives_a_hand_written_loop(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    with Monitor(
        model,
        optimizer,
        run="mine",
        runs_dir=tmp_path,
        input_shape=(3, 8, 8),
        sample=x[:1],
        capture_every=5,
        log_every=4,
        probe_every=2,
    ) as mon:
        for _ in range(2):
            for _ in range(6):
                loss = monitored_step(mon, model, optimizer, x, y)
            mon.epoch(val_loss=loss.detach(), val_acc=0.5)
    path = tmp_path / "mine.mirante"
    events = kinds(path)
    assert {e.kind for e in events} >= EVERY_KIND - {"System"} | {"RunStarted"}
    stats = [e for e in events if isinstance(e, ev.LayerStats)]
    assert [s.step for s in stats] == [1, 3, 5, 7, 9, 11]
    assert all(0 < r < 1 for s in stats for r in s.update_ratio)  # Adam moved every layer a little
    with RunReader(path) as run:
        assert run.status() == "finished" and run.summary().steps == 12
        assert len(run.scalars("train/loss")[1]) == 12 and len(run.epochs()) == 2
    listing = subprocess.run(
        [sys.executable, "-m", "tui.cli", "ls", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert listing.returncode == 0 and "mine" in listing.stdout and "finished" in listing.stdout


def test_a_failing_run_ends_its_store_as_failed(tmp_path, monkeypatch):
    config = tiny(tmp_path, epochs=1)

    def explode(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(train.Trainer, "end_epoch", explode)
    assert train.run(config) == 1
    with RunReader(tmp_path / "runs" / "tiny.mirante") as run:
        assert run.status() == "failed" and "boom" in run.ended().reason
        assert len(run.scalars("train/loss")[1]) > 0  # what was recorded before is kept
        assert "Traceback" in run.events_of("Diagnostic")[-1].evidence["traceback"]


def test_out_of_gpu_memory_says_so_and_suggests_a_smaller_batch(tmp_path, monkeypatch):
    def oom(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train.Trainer, "train_one_epoch", oom)
    assert train.run(tiny(tmp_path, batch_size=32)) == 1
    with RunReader(tmp_path / "runs" / "tiny.mirante") as run:
        assert run.status() == "failed"
        assert run.ended().reason == "out of GPU memory at --batch-size 32: try --batch-size 16"


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"lr": -1}, "--lr must be positive"),
        ({"batch_size": 0}, "--batch-size must be positive"),
        ({"model": "nope"}, "unknown model 'nope'; choose one of: smallcnn"),
        ({"dataset": "/no/such/folder"}, "unknown dataset"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, overrides, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        tiny(tmp_path, **overrides)


def test_overfitting_more_batches_than_the_data_has_is_one_clear_error(tmp_path, capsys):
    assert train.run(tiny(tmp_path, overfit_batches=1000)) == 2
    assert "--overfit-batches 1000: the training split has only 33 batches" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny.mirante").exists()  # nothing was started


def test_lr_schedules():
    c = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=10)
    assert schedule.lr_factor(c, 0, 100, 1000) == pytest.approx(0.1)
    assert schedule.lr_factor(c, 500, 100, 1000) == pytest.approx(0.5)
    assert schedule.lr_factor(c, 1000, 100, 1000) == pytest.approx(0.0)
    step = TrainConfig(schedule="step", step_size=2, gamma=0.1)
    assert [schedule.lr_factor(step, e * 100, 100, 1000) for e in (0, 1, 2, 4)] == pytest.approx([1, 1, 0.1, 0.01])
    multi = TrainConfig(schedule="multistep", milestones=[1, 3], gamma=0.5)
    assert [schedule.lr_factor(multi, e * 100, 100, 1000) for e in (0, 1, 2, 3)] == pytest.approx([1, 0.5, 0.5, 0.25])
    one = TrainConfig(schedule="onecycle")
    peak = max(schedule.lr_factor(one, s, 100, 1000) for s in range(1000))
    assert peak == pytest.approx(1.0, abs=1e-3) and schedule.lr_factor(one, 999, 100, 1000) < 1e-3


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--lr", "0"], "--lr must be positive"),
        (["--dataset", "missing-folder"], "unknown dataset"),
        (["--device", "cuda", "--epochs", "1"], "no CUDA device"),
        (["--model", "alexnet", "--image-size", "32"], "alexnet cannot take 32x32 inputs: the smallest it takes is 63"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(tmp_path, monkeypatch, capfd, args, words):
    """In process (and its trainer child), each case; a real process's exit code and stderr, once, below."""
    from tui import cli

    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("CUDA is here: nothing to reject")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--headless", "--runs-dir", str(tmp_path), *args]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not list(tmp_path.rglob("*.mirante"))  # bad input leaves no run behind


def test_a_bad_option_ends_the_process_with_one_line_and_code_2(tmp_path):
    argv = [sys.executable, "-m", "tui.cli", "train", "--headless", "--runs-dir", str(tmp_path), "--lr", "0"]
    result = run_group(argv, cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "mirante: error: --lr must be positive, got 0.0", result.stderr


# --- the options no other test runs: each once, on the tiny net, with its effect checked


def moved(tmp_path: Path, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The parameters before and after 6 steps of plain SGD (no momentum, no weight decay) with `options`."""
    config = tiny(tmp_path, steps=6, momentum=0.0, weight_decay=0.0, **options)
    s = train.setup(config)  # the same seed as the run: the same initial weights
    names = [n for n, _ in s.eager.named_parameters()]
    before = torch.cat([p.detach().flatten() for p in s.eager.parameters()])
    assert train.run(config) == 0
    saved = torch.load(Path(config.runs_dir) / f"{config.name}.ckpt" / "last.pt", weights_only=True)["model"]
    return before, torch.cat([saved[n].flatten() for n in names])


def test_clip_grad_bounds_each_step(tmp_path):
    before, after = moved(tmp_path, clip_grad=1e-6)
    assert 0 < (after - before).norm() <= 6 * 0.05 * 1e-6 * 1.001  # steps x lr x the clipped norm


def test_l1_shrinks_the_weights(tmp_path):
    _, plain = moved(tmp_path / "plain")
    _, l1 = moved(tmp_path / "l1", l1=0.05)
    assert l1.abs().sum() < 0.9 * plain.abs().sum()  # each step takes lr x l1 = 0.0025 off every weight


def test_label_smoothing_is_the_loss_trained_on(tmp_path):
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    smoothed = train.loss_function(tiny(tmp_path, label_smoothing=0.1), 10)(logits, y)
    assert smoothed == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())
    assert smoothed != pytest.approx(F.cross_entropy(logits, y).item())
    assert train.run(tiny(tmp_path, steps=3, label_smoothing=0.1)) == 0


def test_plateau_cuts_the_learning_rate_after_patience_epochs():
    plateau = schedule.Plateau(patience=1, gamma=0.5)
    for val_loss, factor in [(1.0, 1.0), (0.5, 1.0), (0.6, 1.0), (0.55, 0.5), (0.5, 0.5), (0.49, 0.5)]:
        plateau.update(val_loss)
        assert plateau.factor == factor, val_loss


def test_plateau_drives_the_learning_rate_of_a_run(tmp_path):
    """--schedule plateau end to end: after an epoch with no better validation loss the rate is cut."""
    config = tiny(tmp_path, epochs=3, schedule="plateau", patience=0, gamma=0.1)
    s = train.setup(config)
    trainer = train.Trainer(s, train.NullEmitter(), name="tiny")
    trainer.plateau.best = 0.0  # as if an earlier epoch had been perfect: no epoch here improves on it
    trainer.start()
    assert trainer.fit() == "finished"
    assert trainer.plateau.factor == pytest.approx(0.1**3)
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.1**2)  # the third epoch ran at lr x 0.01


def test_compile_trains_the_same_run(tmp_path):
    """--compile (inductor, on the CPU): the run trains, records and checkpoints as without it."""
    config = tiny(tmp_path, steps=3, image_size=8, compile=True, capture_every=0)
    assert train.run(config) == 0
    with RunReader(Path(config.runs_dir) / "tiny.mirante") as run:
        assert run.status() == "finished" and run.started().config["compile"] is True
        assert run.scalars("train/loss")[0].tolist() == [1, 2, 3]
