"""mirante sweep (issue 18): the grid of options given comma lists, its members run as ordinary runs."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine import sweep as sw
from engine.config import add_arguments
from engine.store import RunReader, StoreError
from tests.procs import run_group, start
from tui.cli import Parser

ROOT = Path(__file__).resolve().parents[1]
ELEVEN = ",".join(str(i / 1000) for i in range(1, 12))
TEN = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95"


def parser() -> Parser:
    train = Parser(prog="mirante sweep", add_help=False)
    add_arguments(train)
    return train


def test_the_grid_is_the_product_of_the_lists_times_the_seeds_in_the_order_given():
    plan = sw.plan(parser(), ["--lr", "0.01,0.1", "--momentum", "0.5,0.9,0.99", "--steps", "5"], seeds=2)
    assert plan.group == "sweep-lr-momentum" and plan.swept == ["lr", "momentum"]
    assert len(plan.members) == 12
    first, last = plan.members[0], plan.members[-1]
    assert first.name == "sweep-lr-momentum_lr0.01_momentum0.5_s0" and first.values == {"lr": "0.01", "momentum": "0.5"}
    assert last.name == "sweep-lr-momentum_lr0.1_momentum0.99_s1" and last.seed == 1
    assert first.argv == ["--steps", "5", "--lr", "0.01", "--momentum", "0.5", "--seed", "0", "--name", first.name,
                          "--group", "sweep-lr-momentum", "--swept", "lr=0.01,momentum=0.5"]  # fmt: skip
    assert len({m.name for m in plan.members}) == 12
    one = parser().parse_args(last.argv)
    assert (one.lr, one.momentum, one.seed, one.steps, one.group) == (0.1, 0.99, 1, 5, plan.group)


def test_shards_cover_the_grid_between_them_and_no_member_twice():
    argv = ["--lr", "0.01,0.1,0.5", "--momentum", "0.5,0.9"]
    whole = [m.name for m in sw.plan(parser(), argv, seeds=2).members]
    shards = [[m.name for m in sw.plan(parser(), argv, seeds=2, shard=(i, 3)).members] for i in range(3)]
    assert sorted(n for shard in shards for n in shard) == sorted(whole)
    assert all(shards) and len({n for shard in shards for n in shard}) == len(whole)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--lr", "0.1,abc"], "--lr abc: not a number"),
        (["--augment", "true,false"], "--augment takes no value"),
        (["--bogus", "1,2"], "unknown option '--bogus'"),
        (["--lr", "1e-4:1:log"], "a range is for --search optuna"),
        (["--lr", "0.1,0.2", "--shard", "3/2"], "--shard 3/2: expected I/N"),
        (["--lr", "0.1,0.2", "--parallel", "0"], "--parallel must be at least 1"),
        (["--lr", "0.1"], "nothing to sweep"),
        (["--seed", "1", "--lr", "0.1,0.2"], "--seed: a sweep sets it"),
        (["--optimizer", "sgd,lbfgs"], "--optimizer lbfgs: choose from"),
        (["--momentum", "0.5,1.5"], "--momentum must be in [0, 1)"),
        ([f"--lr={ELEVEN}", "--momentum", TEN], "110 members (more than 100): say --yes"),
    ],
)
def test_bad_input_to_sweep_is_one_line_exit_2_and_nothing_starts(argv, said, tmp_path, capsys, monkeypatch):
    from tui import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mirante: error: ") and said in err[0], err
    assert not (tmp_path / "runs").exists()  # nothing started


def mirante(*args: str, cwd: Path, timeout: float = 240) -> str:
    result = run_group([sys.executable, "-m", "tui.cli", *args], cwd=cwd, timeout=timeout, merge=True)
    assert result.returncode == 0, result.stdout
    return result.stdout


def test_a_2x2_sweep_in_two_shards_records_four_runs_and_a_repeat_runs_none(tmp_path):
    argv = ["sweep", "--lr", "0.01,0.2", "--momentum", "0.5,0.9", "--epochs", "2", *folder(tmp_path / "images")]
    first = mirante(*argv, "--shard", "0/2", cwd=tmp_path)
    assert "sweep-lr-momentum: 2 members (shard 0/2 of 4), 0 done, 2 to run" in first
    second = mirante(*argv, "--shard", "1/2", cwd=tmp_path)
    stores = sorted((tmp_path / "runs").glob("*.mirante"))
    assert len(stores) == 4
    for store in stores:
        with RunReader(store) as run:
            config, status = run.started().config, run.status()
        assert status == "finished" and config["group"] == "sweep-lr-momentum"
        assert config["swept"] == f"lr={config['lr']},momentum={config['momentum']}"
    again = mirante(*argv, cwd=tmp_path)
    assert "4 members, 4 done, 0 to run" in again
    table = again.split("\n\n")[-1].strip().splitlines()
    assert table[0].split()[:3] == ["run", "lr", "momentum"] and len(table) == 5
    accs = [float(line.split()[4].rstrip("%")) for line in table[1:]]
    assert accs == sorted(accs, reverse=True)  # the best first
    assert second.count(": finished") == 2


def test_a_killed_sweep_is_finished_by_repeating_it_and_no_finished_member_runs_twice(tmp_path):
    argv = ["sweep", "--lr", "0.01,0.02,0.03", "--steps", "400", *folder(tmp_path / "images")]
    names = [f"sweep-lr_lr{lr}_s0" for lr in ("0.01", "0.02", "0.03")]
    stores = [tmp_path / "runs" / f"{name}.mirante" for name in names]
    # the first member finished before (as if the sweep had got that far): a short run under its name
    mirante("train", "--headless", "--steps", "3", "--lr", "0.01", "--name", names[0], *argv[5:], cwd=tmp_path)
    with RunReader(stores[0]) as run:
        first_seq = run.last_seq()
    proc = start([sys.executable, "-m", "tui.cli", *argv], cwd=tmp_path, merge=True)
    try:
        deadline = time.monotonic() + 120
        while step(stores[1]) < 20:  # the second member trains: kill the sweep and its members with it
            assert time.monotonic() < deadline and proc.poll() is None, "the second member never got going"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 60
    while status(stores[1]) == "running":  # its trainer, if it outlived the kill, stops with its parent gone
        assert time.monotonic() < deadline, "the killed member still runs"
        time.sleep(0.2)
    assert status(stores[1]) in ("crashed", "interrupted", "failed") and not stores[2].exists()
    out = mirante(*argv, cwd=tmp_path, timeout=300)
    assert "3 members, 1 done, 2 to run" in out, out
    assert f"{names[0]}:" not in out  # the finished member is not run again...
    with RunReader(stores[0]) as run:
        assert run.last_seq() == first_seq  # ... nor its store touched
    assert status(stores[1]) == status(stores[2]) == "finished"
    with RunReader(stores[1]) as run:
        resumed = "resumed_at_step" in run.started().config
    assert resumed or (tmp_path / "runs" / f"{names[1]}.mirante.try-1").exists()  # from its checkpoint, or afresh


def step(store: Path) -> int:
    try:
        with RunReader(store) as run:
            return run.extent()[1]
    except (StoreError, FileNotFoundError):
        return 0


def status(store: Path) -> str:
    with RunReader(store) as run:
        return run.status()


# -- mirante lab ------------------------------------------------------------------------------------------------

PROMISED = {  # each lab's runs: the option that tells them apart, as the issue lists them
    "lr": ("lr", [0.0001, 0.01, 20.0, 0.05]),
    "momentum": ("momentum", [0.0, 0.5, 0.9, 0.95, 0.99]),
    "batch": ("batch_size", [32, 128, 512, 32, 512]),
    "activation": ("activation", ["sigmoid", "tanh", "relu"]),
    "skip": ("residual", [False, True]),
    "optimizer": ("optimizer", ["sgd", "sgd", "adam", "adam"]),
    "init": ("init", ["normal", "xavier", "kaiming"]),
    "regularization": ("l1", [0.0, 0.0, 0.0001]),
    "loss": ("loss", ["ce", "mse"]),
    "separable": ("model", ["smallcnn", "sepcnn"]),
    "seeds": ("seed", [0, 1, 2, 3, 4]),
}


@pytest.mark.parametrize("name", list(PROMISED))
def test_every_lab_expands_to_the_runs_it_promises(name, tmp_path):
    from engine import lab
    from engine.config import from_args

    plan = lab.plan(name, ["--runs-dir", str(tmp_path)])
    configs = [from_args(parser().parse_args(m.argv)) for m in plan.members]  # each a valid train command line
    option, values = PROMISED[name]
    assert [getattr(c, option) for c in configs] == values
    assert all(c.dataset == "shapes" and c.group == f"lab-{name}" for c in configs)
    assert len({c.name for c in configs}) == len(configs)
    if name == "batch":  # the rate scaled in proportion to the batch, beside the fixed rate
        assert {(c.batch_size, c.lr) for c in configs} >= {(32, 0.0125), (128, 0.05), (512, 0.2), (512, 0.05)}
    if name == "optimizer":
        assert [(c.momentum, c.lr) for c in configs][:2] == [(0.0, 0.05), (0.9, 0.05)]
        assert [c.lr for c in configs][2:] == [0.001, 0.05]
    if name == "regularization":
        assert [c.weight_decay for c in configs] == [0.0, 0.005, 0.0]
    overridden = lab.plan(name, ["--steps", "7"])
    assert all(parser().parse_args(m.argv).steps == 7 for m in overridden.members)  # the user's options win


def test_a_lab_runs_end_to_end(tmp_path):
    out = mirante("lab", "separable", "--steps", "3", *folder(tmp_path / "images"), cwd=tmp_path)
    assert "lab separable: depthwise-separable convolutions" in out
    assert "lab-separable: 2 members, 0 done, 2 to run" in out
    for model in ("smallcnn", "sepcnn"):
        with RunReader(tmp_path / "runs" / f"lab-separable_model{model}.mirante") as run:
            assert run.status() == "finished" and run.started().config["model"] == model
    assert "model" in out.split("\n\n")[-1].splitlines()[0]  # the table of runs names what differs


# -- mirante sweep --search optuna --------------------------------------------------------------------------


def folder(root: Path) -> list[str]:
    """A tiny ImageFolder (3 optimizer steps an epoch at batch 8) and the options that train on it quickly."""
    from tests.test_rel_train import image_folder

    image_folder(root, per_class=12)
    return ["--dataset", str(root), "--batch-size", "8", "--workers", "0", "--log-every", "1", "--capture-every", "0",
            "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--search", "optuna", "--lr", "1e-4:1:log"], "--search optuna needs --trials N"),
        (["--search", "optuna", "--trials", "2", "--lr", "1:1e-4"], "a range needs LO < HI"),
        (["--search", "optuna", "--trials", "2", "--lr", "0:1:log"], "LO > 0 on a log scale"),
        (["--search", "optuna", "--trials", "2", "--lr", "1e-4:1:ln"], "a range is LO:HI or LO:HI:log"),
        (["--search", "optuna", "--trials", "2", "--steps", "5"], "nothing to search"),
        (["--search", "optuna", "--trials", "2", "--lr", "1e-4:1", "--shard", "0/2"], "--shard and --seeds"),
        (
            ["--search", "optuna", "--trials", "2", "--lr", "1e-4:1", "--storage", "sqlite:////nonexistent/x/o.db"],
            "--storage sqlite:////nonexistent/x/o.db: ",
        ),  # fmt: skip
    ],
)
def test_bad_input_to_a_search_is_one_line_exit_2(argv, said, tmp_path, capsys, monkeypatch):
    from tui import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err
    assert not (tmp_path / "runs").exists()


def test_a_search_records_its_trials_and_a_repeat_goes_on_with_the_study(tmp_path):
    import optuna

    options = folder(tmp_path / "images")
    argv = ["sweep", "--search", "optuna", "--trials", "3", "--lr", "0.001:0.5:log", "--epochs", "2", *options]
    out = mirante(*argv, "--headless", cwd=tmp_path)
    assert "search search-lr: 3 trials of lr" in out and "best: trial" in out, out
    stores = sorted((tmp_path / "runs").glob("search-lr_t*.mirante"))
    assert [s.name for s in stores] == [f"search-lr_t{i}.mirante" for i in range(3)]
    study = optuna.load_study(study_name="search-lr", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    assert len(study.trials) == 3
    for trial, store in zip(study.trials, stores, strict=True):
        with RunReader(store) as run:
            config = run.started().config
        assert config["group"] == "search-lr" and config["lr"] == pytest.approx(trial.params["lr"], rel=1e-3)
        assert 0.001 <= config["lr"] <= 0.5
    again = mirante(*argv[:4], "4", *argv[5:], "--headless", cwd=tmp_path)  # --trials 4: one more
    assert again.count(": finished") + again.count(": pruned") == 1, again
    assert len(optuna.load_study(study_name="search-lr", storage=study._storage).trials) == 4


def test_a_trial_the_pruner_stops_ends_pruned_and_is_told_so(tmp_path):
    """The pruner forced (a trial that always says prune): the run is asked to end after its first epoch, ends
    pruned (not failed), and the study records the trial as pruned."""
    import subprocess

    import optuna

    from engine import search

    options = folder(tmp_path / "images")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.should_prune = lambda: True
    runs = tmp_path / "runs"
    runs.mkdir()
    command = [sys.executable, "-m", "tui.cli", "train", "--headless", "--epochs", "200", "--name", "t", *options]
    log = open(runs / "t.log", "wb")  # noqa: SIM115
    entry = search.Trial(trial, "t", subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=log), log)
    store = tmp_path / "runs" / "t.mirante"
    deadline = time.monotonic() + 120
    try:
        while entry.process.poll() is None:
            assert time.monotonic() < deadline, "the pruned run did not end"
            entry.report(store)
            time.sleep(0.2)
    finally:
        if entry.process.poll() is None:
            entry.process.kill()
        log.close()
    assert entry.pruned and entry.process.returncode == 0
    with RunReader(store) as run:
        summary = run.summary()
    assert summary.status == "pruned" and len(run_epochs(store)) < 200
    search._tell(study, entry, store)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


def run_epochs(store: Path) -> list:
    with RunReader(store) as run:
        return run.epochs()
