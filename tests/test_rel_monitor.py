"""Monitor misuse (issue 12 item 13): each bad call raises one line at the call, keeps nothing, and the run goes on."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import events as ev
from engine.monitor import Monitor
from engine.store import RunReader
from tests.loops import monitored_step
from tests.procs import run_group

ROOT = Path(__file__).resolve().parent.parent


def make(tmp_path, name="mine", **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, optimizer, run=name, runs_dir=tmp_path, log_every=4, probe_every=2, **kwargs)
    return model, optimizer, mon


def good_step(mon, model, optimizer):
    return monitored_step(mon, model, optimizer, torch.randn(8, 4), torch.randint(0, 3, (8,)))


def stored(path):
    """(status, steps that have a train/loss, all events) of a closed store."""
    with RunReader(path) as run:
        events = list(run.iter_events())
        return run.status(), [int(s) for s in run.scalars("train/loss")[0]], events


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_a_vector_loss_raises_at_the_call_and_the_run_goes_on(tmp_path):
    model, optimizer, mon = make(tmp_path)
    good_step(mon, model, optimizer)
    with pytest.raises(ValueError) as exc:
        mon.step(torch.ones(3))
    assert "loss" in one_line(exc)
    assert mon.steps == 1  # the step number is not used up
    for _ in range(8):
        good_step(mon, model, optimizer)
    mon.close()
    status, steps, _ = stored(tmp_path / "mine.mirante")
    assert status == "finished" and steps == list(range(1, 10))


@pytest.mark.parametrize("lr", ["0.1", "abc", [0.1, 0.2], torch.ones(3), True, object()])
def test_a_bad_lr_keeps_nothing_of_the_call(tmp_path, lr):
    model, optimizer, mon = make(tmp_path)
    good_step(mon, model, optimizer)
    with pytest.raises((TypeError, ValueError)) as exc:
        mon.step(torch.tensor(1.0), lr=lr)
    assert "lr" in one_line(exc)
    assert mon.steps == 1
    for _ in range(8):
        good_step(mon, model, optimizer)
    mon.step(torch.tensor(2.0), lr=torch.tensor(0.5))  # a one-value tensor on the host is a rate
    mon.step(torch.tensor(2.0), lr=3)
    mon.close()
    status, steps, events = stored(tmp_path / "mine.mirante")
    assert status == "finished" and steps == list(range(1, 12))
    lrs = [e.scalars["lr"] for e in events if isinstance(e, ev.Step) and "lr" in e.scalars]
    assert lrs == [0.1] * 9 + [0.5, 3.0]


def test_a_number_is_a_loss_and_anything_else_is_refused_before_the_step_counts(tmp_path):
    model, optimizer, mon = make(tmp_path)
    mon.step(1.5)  # a Python float: the user's own .item() already happened
    mon.step(2)
    for bad in ("1.5", None, True, [1.0], torch.tensor(True), torch.tensor(1 + 2j)):
        with pytest.raises(TypeError) as exc:
            mon.step(bad)
        assert "loss" in one_line(exc)
    assert mon.steps == 2
    mon.step(torch.tensor([[3.0]], dtype=torch.float16))  # one value, any shape or float dtype
    mon.step(torch.tensor(4))
    mon.close()
    status, steps, events = stored(tmp_path / "mine.mirante")
    assert status == "finished" and steps == [1, 2, 3, 4]
    losses = [e.scalars["train/loss"] for e in events if isinstance(e, ev.Step) and "train/loss" in e.scalars]
    assert losses == [1.5, 2.0, 3.0, 4.0]


def bad_calls(mon):
    """One of every kind of misuse of a running Monitor's calls."""
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    return [
        lambda: mon.step(torch.ones(3)),
        lambda: mon.step(torch.ones(2, 2)),
        lambda: mon.step("0.5"),
        lambda: mon.step(torch.tensor(1.0), lr="x"),
        lambda: mon.step(torch.tensor(1.0), lr=torch.ones(3)),
        lambda: mon.step(torch.tensor(1.0), logits="x", targets=y),
        lambda: mon.step(torch.tensor(1.0), logits=torch.randn(8), targets=y),
        lambda: mon.step(torch.tensor(1.0), logits=logits, targets=y[:5]),
        lambda: mon.step(torch.tensor(1.0), logits=logits, targets=y.float()),
        lambda: mon.step(torch.tensor(1.0), logits=logits, targets=[0, 1]),
        lambda: mon.step(torch.tensor(1.0), batch_size=0),
        lambda: mon.step(torch.tensor(1.0), batch_size=2.5),
        lambda: mon.step(torch.tensor(1.0), batch_size="8"),
        lambda: mon.epoch(val_acc=torch.ones(3)),
        lambda: mon.epoch(val_loss="x"),
        lambda: mon.epoch(train_acc=[0.5]),
        lambda: mon.epoch(val_acc=0.5, extra=torch.ones(2)),
        lambda: mon.close("bogus"),
        lambda: mon.close("failed", 3),
    ]


def test_bad_calls_of_every_kind_leave_the_store_whole(tmp_path):
    model, optimizer, mon = make(tmp_path)
    good_step(mon, model, optimizer)
    calls = bad_calls(mon)
    for i, call in enumerate(calls):
        with pytest.raises((TypeError, ValueError)) as exc:
            call()
        one_line(exc)
        assert mon.steps == 1 + i and mon.epochs == 0, f"bad call {i} changed the monitor"
        good_step(mon, model, optimizer)
    for call in calls:  # a second round, all at once: the writer still sees none of it
        with pytest.raises((TypeError, ValueError)):
            call()
    mon.epoch(val_acc=0.5, val_loss=torch.tensor(1.0))
    mon.close()
    status, steps, events = stored(tmp_path / "mine.mirante")
    assert status == "finished" and steps == list(range(1, len(calls) + 2))
    assert isinstance(events[0], ev.RunStarted) and [e.epoch for e in events if isinstance(e, ev.Epoch)] == [1]
    acc = [e.scalars["train/acc"] for e in events if isinstance(e, ev.Step) and "train/acc" in e.scalars]
    assert len(acc) == len(steps) and all(0 <= a <= 1 for a in acc)


def test_calls_after_close_raise(tmp_path):
    model, optimizer, mon = make(tmp_path)
    good_step(mon, model, optimizer)
    mon.close()
    mon.close()  # closing twice is harmless
    for call in (lambda: mon.step(torch.tensor(1.0)), lambda: mon.epoch(val_acc=0.5)):
        with pytest.raises(RuntimeError) as exc:
            call()
        assert "after close()" in one_line(exc)
    assert mon.steps == 1 and stored(tmp_path / "mine.mirante")[:2] == ("finished", [1])


def test_an_epoch_needs_a_step_before_it(tmp_path):
    model, optimizer, mon = make(tmp_path)
    with pytest.raises(RuntimeError) as exc:
        mon.epoch(val_acc=0.5)
    assert "no step()" in one_line(exc)
    good_step(mon, model, optimizer)
    mon.epoch(val_acc=0.5)
    with pytest.raises(RuntimeError):
        mon.epoch(val_acc=0.6)  # the same epoch twice
    good_step(mon, model, optimizer)
    mon.epoch(val_acc=0.7)
    mon.close()
    status, steps, events = stored(tmp_path / "mine.mirante")
    epochs = [(e.epoch, e.step, e.val_acc) for e in events if isinstance(e, ev.Epoch)]
    assert status == "finished" and steps == [1, 2] and epochs == [(1, 1, 0.5), (2, 2, 0.7)]


def test_a_nan_loss_is_data_recorded_and_warned_about(tmp_path):
    model, optimizer, mon = make(tmp_path)
    for _ in range(3):
        good_step(mon, model, optimizer)
    mon.step(torch.tensor(math.nan))
    mon.step(math.inf)
    mon.close()
    status, steps, events = stored(tmp_path / "mine.mirante")
    assert status == "finished" and steps == [1, 2, 3, 4, 5]
    losses = [e.scalars["train/loss"] for e in events if isinstance(e, ev.Step) and "train/loss" in e.scalars]
    assert math.isnan(losses[3]) and losses[4] == math.inf
    found = [e for e in events if isinstance(e, ev.Diagnostic) and e.code == "divergence"]
    assert found and found[-1].step == 4 and found[-1].evidence["stopped"] is False  # it says so; the loop goes on


def test_a_model_with_no_parameters_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError) as exc:
        Monitor(torch.nn.ReLU(), run="none", runs_dir=tmp_path)
    assert "no parameters" in one_line(exc)
    assert not list(tmp_path.iterdir())  # no store left behind


def test_a_model_that_is_one_layer_is_recorded(tmp_path):
    model = torch.nn.Linear(4, 3)  # its parameters are the root module's own
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer, run="one", runs_dir=tmp_path, log_every=2, probe_every=1) as mon:
        for _ in range(4):
            good_step(mon, model, optimizer)
    assert stored(tmp_path / "one.mirante")[:2] == ("finished", [1, 2, 3, 4])


@pytest.mark.parametrize(
    "run", ["../escape", "/abs/x", "a/b", ".hidden", "", "tab\there", "x/.y.mirante", "bad name.mirante"]
)
def test_run_names_are_checked(tmp_path, run):
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError) as exc:
        Monitor(model, run=run, runs_dir=tmp_path / "runs")
    assert "run name" in one_line(exc)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape.mirante").exists()


def test_a_store_path_ending_in_mirante_is_still_allowed(tmp_path):
    model = torch.nn.Linear(4, 3)
    Monitor(model, run=tmp_path / "deep" / "ok-1.2_x.mirante").close()
    assert stored(tmp_path / "deep" / "ok-1.2_x.mirante")[0] == "finished"
    with pytest.raises(ValueError):
        Monitor(model, run=tmp_path / "deep" / ".mirante")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"log_every": 0},
        {"probe_every": -1},
        {"log_every": 2.5},
        {"capture_every": -1},
        {"batch_size": 0},
        {"input_shape": (3, 8)},
        {"input_shape": (3, 9, 9)},  # does not fit the Linear(4, 3)
        {"sample": torch.zeros(3, 8, 8), "capture_every": 1},
        {"optimizer": "sgd"},
        {"model": "resnet"},
    ],
)
def test_bad_settings_are_refused_before_a_store_is_made(tmp_path, kwargs):
    kwargs = {"model": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))} | kwargs
    with pytest.raises((TypeError, ValueError)) as exc:
        Monitor(run="bad", runs_dir=tmp_path, **kwargs)
    one_line(exc)
    assert not list(tmp_path.iterdir())


UNCLOSED = """
import sys, torch, torch.nn.functional as F
from engine.monitor import Monitor
from tests.loops import monitored_step
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
mon = Monitor(model, optimizer, run=sys.argv[1], runs_dir=sys.argv[2], log_every=10, probe_every=3, update_every=3)
for step in range(23):  # 23: the last three steps are still on their way at exit
    monitored_step(mon, model, optimizer, torch.randn(8, 4), torch.randint(0, 3, (8,)))
    if step == 11:
        mon.epoch(val_acc=0.5)
"""


def run_script(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return run_group([sys.executable, "-c", UNCLOSED, *args], cwd=ROOT, timeout=60)


def test_a_script_that_never_closes_its_monitor_ends_the_run_finished(tmp_path):
    done = run_script(tmp_path, "open", str(tmp_path))
    assert done.returncode == 0 and done.stderr == ""
    status, steps, events = stored(tmp_path / "open.mirante")
    assert status == "finished" and steps == list(range(1, 24))
    assert [e.epoch for e in events if isinstance(e, ev.Epoch)] == [1]
    stats = [e for e in events if isinstance(e, ev.LayerStats)]
    grads = [e.step for e in stats if len(e.grad_norm)]
    updates = [e.step for e in stats if len(e.update_ratio)]  # step 10's comes in an event of its own: measured
    assert grads == updates == [1, 4, 7, 10, 13, 16, 19, 22]  # at the next call, after that interval was read back


def test_at_exit_a_monitor_left_open_by_an_uncaught_exception_ends_the_run_failed(tmp_path, monkeypatch):
    """What the exit handler does after a script died of an exception (sys.last_value is set then)."""
    model, optimizer, mon = make(tmp_path)
    good_step(mon, model, optimizer)
    monkeypatch.delattr(sys, "ps1", raising=False)
    monkeypatch.setattr(sys, "last_value", RuntimeError("the user's loop broke\nsecond line"), raising=False)
    monkeypatch.setattr(sys, "last_exc", sys.last_value, raising=False)
    mon._at_exit()
    status, steps, events = stored(tmp_path / "mine.mirante")
    assert status == "failed" and steps == [1] and events[-1].reason == "RuntimeError: the user's loop broke"


def test_checking_a_step_reads_no_value_from_the_device(tmp_path, monkeypatch):
    """The checks use shapes, dtypes and devices only: every host-sync method fails outside interval ends."""
    from engine import recorder

    model, optimizer, mon = make(tmp_path)
    allowed = {"depth": 0}

    def forbid(name, original):
        def guarded(*args, **kwargs):
            assert allowed["depth"], f"{name} called on a step that does not log"
            return original(*args, **kwargs)

        return guarded

    def permit(*args, **kwargs):
        allowed["depth"] += 1
        try:
            return flush(*args, **kwargs)
        finally:
            allowed["depth"] -= 1

    flush = recorder.Recorder.flush
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbid(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(recorder.Recorder, "flush", permit)
    for _ in range(5):
        good_step(mon, model, optimizer)
        mon.step(0.5, logits=torch.randn(8, 3), targets=torch.softmax(torch.randn(8, 3), 1), batch_size=8)
    for call in bad_calls(mon)[:13]:  # the step() misuses: refused by metadata too
        with pytest.raises((TypeError, ValueError)):
            call()
    monkeypatch.undo()
    mon.close()
    assert stored(tmp_path / "mine.mirante")[:2] == ("finished", list(range(1, 11)))


def test_an_event_the_store_refuses_takes_no_seq(tmp_path):
    """The writer refuses a bad event in the caller's thread; the next event still follows the last kept one."""
    from engine.emit import Emitter
    from engine.store import RunWriter

    out = Emitter(RunWriter(tmp_path / "e.mirante"))
    out.emit(ev.Step, 1, scalars={"train/loss": 1.0})
    with pytest.raises((TypeError, ValueError)):
        out.emit(ev.Step, 2, scalars={"train/loss": "not a number"})
    out.emit(ev.Epoch, 1, epoch=1, scalars={"x": 2.0})
    out.emit(ev.RunEnded, 1, status="finished")
    out.close()
    status, steps, events = stored(tmp_path / "e.mirante")
    assert status == "finished" and [e.seq for e in events] == [1, 2, 3] and events[1].scalars == {"x": 2.0}


def test_a_config_the_store_cannot_keep_leaves_no_store(tmp_path):
    with pytest.raises((TypeError, ValueError)) as exc:
        Monitor(torch.nn.Linear(4, 3), run="cfg", runs_dir=tmp_path, config={"weights": object()})
    one_line(exc)
    assert not list(tmp_path.iterdir())
    Monitor(torch.nn.Linear(4, 3), run="cfg", runs_dir=tmp_path, config={"weights": "ok"}).close()  # the name is free


def test_example_inputs_count_a_model_with_two_inputs_per_sample(tmp_path):
    """A model that takes an image and a tag: MACs (and so MFU) come from a batch of what it takes."""

    class Tagged(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.emb = torch.nn.Embedding(5, 4)

        def forward(self, image: torch.Tensor, tag: torch.Tensor) -> torch.Tensor:
            return self.conv(image).mean((2, 3)) + self.emb(tag)

    model = Tagged()
    image, tag = torch.zeros(8, 3, 6, 6), torch.zeros(8, dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer, run="tagged", runs_dir=tmp_path, example_inputs={"image": image, "tag": tag}):
        pass
    started = next(e for e in stored(tmp_path / "tagged.mirante")[2] if isinstance(e, ev.RunStarted))
    assert started.model_summary["macs"] == 4 * 4 * 4 * 27  # per sample: the batch of 8 divided out
    assert started.model_summary["params"] == 4 * 27 + 4 + 20
    with pytest.raises(ValueError) as exc:
        Monitor(model, optimizer, run="bad", runs_dir=tmp_path, example_inputs=(image,))
    assert one_line(exc).startswith("example_inputs does not fit the model:")


def test_the_monitor_and_the_trainer_start_a_run_alike(tmp_path, small_shapes):
    """One RunStarted for both: the device's name and threads, the versions, the layers' types."""
    from engine import train
    from engine.config import TrainConfig

    _, _, mon = make(tmp_path, name="mon")
    mon.close()
    config = TrainConfig(
        model="smallcnn", dataset="shapes", steps=1, batch_size=4, image_size=8, runs_dir=str(tmp_path), name="train"
    )
    assert train.run(config) == 0

    def started(name: str) -> ev.RunStarted:
        return next(e for e in stored(tmp_path / f"{name}.mirante")[2] if isinstance(e, ev.RunStarted))

    mine = started("mon")
    theirs = started("train")
    assert set(mine.device) == set(theirs.device) >= {"type", "name", "host", "threads"}
    assert set(mine.versions) == set(theirs.versions) == {"python", "torch", "mirante"}
    assert mine.model_summary["layer_types"] == ["Linear"]
    assert theirs.model_summary["layer_types"][0] == "Conv2d"


def test_capture_every_zero_captures_at_each_epoch_as_in_mirante_train(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    with Monitor(model, optimizer, run="caps", runs_dir=tmp_path, sample=x[:1], capture_every=0, log_every=2) as mon:
        for _ in range(2):
            for _ in range(3):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                mon.step(loss)
                optimizer.step()
            mon.epoch()
    captures = [e for e in stored(tmp_path / "caps.mirante")[2] if isinstance(e, ev.Maps) and e.layer == "input"]
    assert [e.step for e in captures] == [3, 6]
