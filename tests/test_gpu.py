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
    assert trainer.step == 45
    trainer.rec.flush(trainer.step, wait=True)
    trainer.out.close()
    with RunReader(tmp_path / "gpu.mirante") as run:
        events = run.follow(0, limit=None)
    assert len([e for e in events if isinstance(e, ev.Step) and "train/loss" in e.scalars]) == 45
    assert [e.step for e in events if isinstance(e, ev.LayerStats)] == list(range(1, 46, 4))
