"""On a CUDA device (skipped elsewhere): steps that do not log pass under torch's sync debug mode "error"."""

from __future__ import annotations

import pytest
import torch

from engine import events as ev
from engine import recorder, train
from engine.config import TrainConfig
from engine.store import RunReader

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_non_logging_steps_never_sync_on_cuda(tmp_path, monkeypatch):
    import engine.data

    original = engine.data.build_data
    monkeypatch.setattr(train, "build_data", lambda *a, **k: original(*a, **{**k, "shapes_count": 4000}))
    config = TrainConfig(
        model="resnet18",
        dataset="shapes",
        steps=45,
        batch_size=64,
        log_every=20,
        probe_every=4,
        capture_every=7,
        device="cuda",
        runs_dir=str(tmp_path),
        name="gpu",
    ).validate()
    s = train.setup(config)
    assert s.amp_dtype is torch.bfloat16
    trainer = train.Trainer(s, train.Emitter(train.RunWriter(tmp_path / "gpu.mirante")), name="gpu")
    trainer.start()

    def permit(original):
        def wrapper(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("default")
            try:
                return original(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")

        return wrapper

    monkeypatch.setattr(recorder.Recorder, "flush", permit(recorder.Recorder.flush))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_one_epoch()  # 45 steps, two of which log
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.at.step == 45
    trainer.rec.flush(trainer.at.step, wait=True)
    trainer.out.close()
    with RunReader(tmp_path / "gpu.mirante") as run:
        events = run.follow(0, limit=None)
    assert len([e for e in events if isinstance(e, ev.Step) and "train/loss" in e.scalars]) == 45
    assert [e.step for e in events if isinstance(e, ev.LayerStats)] == list(range(1, 46, 4))


def test_fp16_with_gradient_norms_every_step_and_clipping(tmp_path):
    """fp16 autocast with its GradScaler: norms and clipping see unscaled gradients; the run records every probe."""
    config = TrainConfig(
        model="smallcnn", dataset="shapes", steps=20, batch_size=32, precision="fp16", clip_grad=1.0,
        probe_every=1, log_every=5, device="cuda", runs_dir=str(tmp_path), name="fp16",
    ).validate()  # fmt: skip
    assert train.run(config) == 0
    with RunReader(tmp_path / "fp16.mirante") as run:
        stats = list(run.events_of("LayerStats"))
        assert run.status() == "finished" and run.started().config["precision"] == "fp16"
    grads = [g for s in stats for g in s.grad_norm]
    assert len({s.step for s in stats}) == 20 and all(0 < g < 1e3 for g in grads)  # unscaled: not x65536
