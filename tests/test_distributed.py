"""torchrun on the CPU: two gloo processes train one run, rank 0 writes it; a rank that dies ends it as failed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from engine.store import RunReader
from tests.procs import run_group

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--device", "cpu", "--batch-size", "64", "--log-every", "2", "--probe-every", "2", "--capture-every", "0"]
COMMON += ["--lr", "0.05", "--schedule", "none", "--no-augment", "--headless"]


def env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def torchrun(tmp_path: Path, name: str, *args: str, nproc: int = 2) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "engine.train", *COMMON, "--runs-dir", str(tmp_path), "--name", name, *args]
    return subprocess.Popen(
        command, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # torchrun and its ranks: killed together should the test fail
    )  # fmt: skip


def single(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "engine.train", *COMMON, "--runs-dir", str(tmp_path), "--name", name, *args]
    return run_group(command, cwd=tmp_path, env=env(), timeout=300)


def losses(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with RunReader(path) as run:
        return run.scalars("train/loss")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, worker_id) -> tuple[Path, str]:
    """`mirante train --nproc 2`: torchrun with two gloo processes on this CPU, 12 steps; its store and output.

    Trained once a session, whichever pytest-xdist worker asks first (under a file lock, in the directory the
    workers share), not once on each: the tests only read it (the resume test works on a copy).
    """
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared
    tmp, said = shared / "ddp", shared / "ddp-output.txt"
    with FileLock(shared / "ddp.lock"):
        if not said.exists():  # no worker trained it yet (or one failed half-way: start again)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            command = [sys.executable, "-m", "tui.cli", "train", "--nproc", "2", *COMMON, "--runs-dir", str(tmp)]
            command += ["--name", "ddp", "--steps", "12"]
            done = run_group(command, cwd=tmp, env=env(), timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            said.write_text(done.stdout)
    return tmp, said.read_text()


def test_two_gloo_ranks_train_one_run(ddp_run):
    tmp, out = ddp_run
    assert sorted(p.name for p in tmp.glob("*.mirante")) == ["ddp.mirante"]  # one store: rank 0's
    assert out.count("finished: 12 steps") == 1  # rank 0 alone prints progress
    with RunReader(tmp / "ddp.mirante") as run:
        started, ended = run.started(), run.ended()
        steps, _ = run.scalars("train/loss")
        throughput = run.scalars("throughput/img_s")[1]
        ranks = {e.rank for e in run.events_of("System")}
        epoch = run.epochs()[0]
        assert run.writer_alive() is False
    assert ended.status == "finished"
    assert started.config["world_size"] == 2 and started.config["backend"] == "gloo"
    assert started.config["batch_size"] == 64 and started.config["batch_per_rank"] == 32
    assert steps.tolist() == list(range(1, 13))  # global steps, each one batch of 64 split over the ranks
    assert ranks == {0, 1} and np.all(throughput > 0)  # each rank's memory; images/s of both together
    assert epoch.val_loss is not None and 0 <= epoch.val_acc <= 1  # both ranks' halves of the validation split
    for checkpoint in ("last.pt", "best.pt"):  # written by rank 0 alone, whole
        saved = torch.load(tmp / "ddp.ckpt" / checkpoint, weights_only=True)
        assert saved["state"]["world_size"] == 2 and saved["state"]["step"] == 12


def test_the_loss_matches_one_process_with_the_same_global_batch(ddp_run, tmp_path):
    tmp, _ = ddp_run
    done = single(tmp_path, "one", "--steps", "12")
    assert done.returncode == 0, done.stderr
    _, ddp_loss = losses(tmp / "ddp.mirante")
    _, one_loss = losses(tmp_path / "one.mirante")
    # the same global batches, the gradients averaged over them: the same training, up to float sums in
    # another order and batch norm's statistics taken over each rank's half of the batch
    assert abs(ddp_loss[0] - one_loss[0]) < 0.02  # step 1: the same weights on the same 64 images
    assert np.allclose(ddp_loss, one_loss, rtol=0.05, atol=0.02), (ddp_loss, one_loss)


def test_resuming_needs_the_same_world_size(ddp_run):
    tmp, _ = ddp_run
    done = single(tmp, "ignored", "--resume", "ddp", "--steps", "14")  # refused before it writes anything
    assert done.returncode == 2
    assert "trained by 2 processes: resume it with as many, not 1" in done.stderr


def test_the_app_shows_the_world_size_and_each_rank(ddp_run):
    import asyncio

    from tui.app import MiranteApp
    from tui.sources import FollowSource

    store = ddp_run[0] / "ddp.mirante"

    async def main() -> None:
        app = MiranteApp(FollowSource(store), store=store)
        async with app.run_test(size=(120, 36)) as pilot:
            while not app.source.done:
                await pilot.pause(0.05)
            await pilot.press("1")
            await pilot.pause()
            assert "x 2 ranks (gloo)" in str(app.query_one("#info").render())
            await pilot.press("6")
            await pilot.pause()
            charts = " ".join(str(app.query_one(f"#sys{i}").draw(100, 12, False)[0]) for i in range(4))
            assert "2 ranks" in charts

    asyncio.run(main())


def rank_pid(parent: int, rank: int, timeout: float = 60.0) -> int:
    """The pid of torchrun's worker with RANK=rank (a grandchild or child of `parent`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if f"RANK={rank}".encode() in environ and ppid == parent:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under {parent}")


def test_killing_a_rank_ends_the_run_as_failed_and_the_others_exit(tmp_path):
    proc = torchrun(tmp_path, "killed", "--steps", "100000")
    try:
        killed_a_rank(proc, tmp_path / "killed.mirante")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def killed_a_rank(proc: subprocess.Popen, store: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it trains: some steps are in the store
        if store.exists():
            try:
                if len(losses(store)[0]) >= 4:
                    break
            except Exception:
                pass
        time.sleep(0.5)
    else:
        pytest.fail("the run never started training")
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
    killed_at = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    assert time.monotonic() - killed_at < 60, "rank 0 hung after rank 1 died"
    assert proc.returncode != 0
    with RunReader(store) as run:
        ended = run.ended()
        assert run.status() == "failed"
    assert ended.status == "failed" and "rank 1" in ended.reason, (ended.reason, out[-2000:])


def test_a_distributed_run_resumes_with_the_same_world_size(ddp_run, tmp_path):
    shared, _ = ddp_run  # resumed in a copy: the other tests read the run as it was
    shutil.copy(shared / "ddp.mirante", tmp_path / "ddp.mirante")
    shutil.copytree(shared / "ddp.ckpt", tmp_path / "ddp.ckpt")
    command = [sys.executable, "-m", "tui.cli", "train", "--nproc", "2", *COMMON, "--runs-dir", str(tmp_path)]
    done = run_group([*command, "--resume", "ddp", "--steps", "16"], cwd=tmp_path, env=env(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    steps, _ = losses(tmp_path / "ddp.mirante")
    assert steps.tolist() == list(range(1, 17))  # 13 to 16 added to the same store, none repeated


def test_rank_0_names_the_rank_that_failed():
    from torch.distributed import HashStore

    from engine.distributed import PID_KEY, Dist

    class Local(Dist):  # a Dist over an in-memory store, as torchrun's would be
        def store(self):
            return shared

    shared = HashStore()
    rank0, rank1 = Local(0, 2, 0, "gloo", None), Local(1, 2, 1, "gloo", None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that has exited: like a rank killed by the OOM killer
    shared.set(PID_KEY.format(rank=0), f"{os.uname().nodename}:{os.getpid()}")
    shared.set(PID_KEY.format(rank=1), f"{os.uname().nodename}:{gone.pid}")
    assert rank0.failure() == f"rank 1 (pid {gone.pid}) died"
    rank1.note_failure("RuntimeError: boom")  # a rank that raised says why before it exits
    assert rank0.failure() == "rank 1: RuntimeError: boom"
