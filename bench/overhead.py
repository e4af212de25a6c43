"""What monitoring costs training: the engine's loop with monitoring on and off, and a bare loop.

    python bench/overhead.py [--model smallcnn] [--size 32] [--batch 128] [--device cpu]
                             [--precision fp32] [--steps 30] [--rounds 5] [--data both]
                             [--probe-every 1] [--update-every 10] [--log-every 10] [--capture-every 200]
    python bench/overhead.py --tiny      # a few steps, one round: what the test suite runs

The run is built as `mirante train` builds it (`engine.train.setup`: the built-in shapes data,
the model, the optimizer, autocast and channels_last), then three loops share its model and
optimizer, each fed two ways:

- bare: forward, loss, backward, optimizer step; nothing else;
- engine, monitoring off: mirante's `Trainer` loop with read-backs and probes never due;
- engine, monitoring on: the same loop at the given cadences (by default mirante's: gradient
  norms every step), writing a real run store;

fed by one fixed batch already on the device (the model's cost alone) and by the real data
path (`engine.data`: the epoch's order, crops and flips on the device). Each loop is timed over
`--steps` steps after warm-up, the loops alternated for `--rounds` rounds so that drift in
clock speed or temperature hits all alike. Prints the median images/s of each and the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine import models  # noqa: E402
from engine.config import TrainConfig  # noqa: E402
from engine.device import device_info  # noqa: E402
from engine.emit import Emitter  # noqa: E402
from engine.store import RunWriter  # noqa: E402
from engine.train import Setup, Trainer, setup  # noqa: E402

NEVER = 10**9  # a cadence that never comes due


class OneBatch:
    """The run's own data, but every training batch is its first one: the fixed-batch loops.

    Everything else (the spec, the sample for captures, validation) is the real data's, so this
    cannot fall behind what the trainer reads from its data.
    """

    def __init__(self, data: Any) -> None:
        self._data = data
        self.x, self.y = next(iter(data.train_batches(0)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self._data.steps_per_epoch - skip):
            yield self.x, self.y


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # note: timing only, at the end of a timed block


def endless(data: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from data.train_batches(epoch)
        epoch += 1


def bare_loop(s: Setup, data: Any) -> Callable[[int], None]:
    batches = endless(data)

    def run(steps: int) -> None:
        for _ in range(steps):
            x, y = next(batches)
            with s.autocast():
                logits, _ = models.split_outputs(s.model(x))
                loss = s.loss_fn(logits, y)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()

    return run


def engine_loop(s: Setup, name: str, runs: Path) -> tuple[Callable[[int], None], Trainer]:
    trainer = Trainer(s, Emitter(RunWriter(runs / f"{name}.mirante")), name=name)
    trainer.start()

    def run(steps: int) -> None:
        target = trainer.at.step + steps
        while trainer.at.step < target:
            s.total_steps = target
            trainer.train_one_epoch()
            if trainer.at.step < target:  # the epoch's batches ran out: the next epoch, as fit() goes on
                trainer.at.epoch += 1
                trainer.at.step_in_epoch = 0
        trainer.rec.flush(trainer.at.step)

    return run, trainer


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--size", type=int, default=None, help="image side (default: the data's, or the model's own)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--data", default="both", choices=("fixed", "real", "both"))
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--probe-every", type=int, default=defaults.probe_every)
    p.add_argument("--update-every", type=int, default=defaults.update_every)
    p.add_argument("--capture-every", type=int, default=defaults.capture_every)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--tiny", action="store_true", help="3 steps, 1 round, batch 8 at 16x16: that it runs")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.rounds, args.warmup, args.batch, args.size = 3, 1, 1, 8, 16
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        base = TrainConfig(
            model=args.model,
            dataset="shapes",
            image_size=args.size,
            batch_size=args.batch,
            device=args.device,
            precision=args.precision,
            channels_last=args.channels_last,
            schedule="none",
            runs_dir=tmp,
            workers=0,
        ).validate()
        s = setup(base)
        device = s.device

        def variant(monitoring: bool, data: Any) -> Setup:
            cadences = {
                "log_every": args.log_every if monitoring else NEVER,
                "probe_every": args.probe_every if monitoring else NEVER,
                "update_every": args.update_every if monitoring else NEVER,
                "capture_every": args.capture_every if monitoring else 0,
            }
            config = dataclasses.replace(base, **cadences).validate()
            return dataclasses.replace(s, config=config, data=data)

        feeds = {"fixed batch": OneBatch(s.data), "real data": s.data}
        if args.data != "both":
            feeds = {k: v for k, v in feeds.items() if k.startswith(args.data)}
        loops: dict[str, Callable[[int], None]] = {}
        trainers: list[Trainer] = []
        for feed, data in feeds.items():
            loops[f"{feed}: bare"] = bare_loop(s, data)
            for monitoring in (False, True):
                name = f"{feed}: engine, monitoring {'on' if monitoring else 'off'}"
                loops[name], trainer = engine_loop(
                    variant(monitoring, data), name.replace(" ", "_").replace(":", "").replace(",", ""), runs
                )
                trainers.append(trainer)

        def timed(name: str, steps: int) -> float:
            sync(device)
            start = time.perf_counter()
            loops[name](steps)
            sync(device)
            return steps * args.batch / (time.perf_counter() - start)

        for name in loops:
            timed(name, args.warmup)
        rates: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(args.rounds):
            for name in loops:
                rates[name].append(timed(name, args.steps))
        for trainer in trainers:
            trainer.out.close()

    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"device: {device_info(device)['name']}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    size = s.data.spec.source_size if args.size is None else args.size
    print(
        f"model {args.model} at {size}x{size}, batch {args.batch}, {args.precision}, "
        f"channels_last {args.channels_last}; {args.rounds} rounds x {args.steps} steps; log every {args.log_every}, "
        f"gradient norms every {args.probe_every}, update ratios every {args.update_every}, "
        f"capture every {args.capture_every or 'epoch end'}"
    )
    for name, r in rates.items():
        print(f"  {name:40s} {med[name]:10,.0f} img/s   (rounds: {', '.join(f'{v:,.0f}' for v in r)})")
    figures: dict[str, float] = {}
    for feed in feeds:
        off, on, bare = (med[f"{feed}: {k}"] for k in ("engine, monitoring off", "engine, monitoring on", "bare"))
        figures[f"{feed}: overhead %"] = 100 * (1 - on / off)
        figures[f"{feed}: engine vs bare"] = on / bare
        print(f"{feed}: monitoring overhead (on vs off) {figures[f'{feed}: overhead %']:+.2f}%; ", end="")
        print(f"engine (on) vs bare {on / bare:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"img/s": med, **figures}, indent=1))


if __name__ == "__main__":
    main()
