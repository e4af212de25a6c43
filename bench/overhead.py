"""What monitoring costs training: the engine's loop with monitoring on and off, and a bare loop.

    python bench/overhead.py [--model smallcnn] [--size 32] [--batch 128] [--device cpu]
                             [--precision fp32] [--steps 30] [--rounds 5] [--probe-every 10]

Three loops on the same model and the same batch (synthetic, already on the device), each
timed over `--steps` steps after warm-up, alternated for `--rounds` rounds so that drift in
clock speed or temperature hits all three alike:

- bare: forward, loss, backward, optimizer step; nothing else (autocast and channels_last as
  the engine uses them);
- engine, monitoring off: mirante's `Trainer` loop with read-backs and probes disabled;
- engine, monitoring on: the same loop at the given cadences, writing a real run store.

Prints the median images/s of each and the ratios: the monitoring overhead (on vs off) and
the engine against the bare loop.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine import flops, models  # noqa: E402
from engine.config import TrainConfig  # noqa: E402
from engine.emit import Emitter  # noqa: E402
from engine.store import RunWriter  # noqa: E402
from engine.train import Setup, Trainer, build_optimizer, loss_function, pick_precision  # noqa: E402


class OneBatch:
    """Stands in for `engine.data.Data`: the same device batch, `steps_per_epoch` times."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        self.x, self.y, self.steps_per_epoch = x, y, steps
        self.spec = SimpleNamespace(name="synthetic")

    def train_batches(self, epoch: int, skip: int = 0):
        for _ in range(self.steps_per_epoch - skip):
            yield self.x, self.y

    def fixed_sample(self, index: int = 0):
        return self.x[:1], 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # note: timing only, at the end of a timed block


def bare_loop(model, optimizer, x, y, steps: int, autocast) -> None:
    for _ in range(steps):
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--probe-every", type=int, default=10)
    p.add_argument("--capture-every", type=int, default=200)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the engine sets it
    amp = pick_precision(args.precision, device)
    model = models.build_model(args.model, num_classes=10, image_size=args.size).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    config = TrainConfig(model=args.model, batch_size=args.batch, lr=0.01, schedule="none", weight_decay=0.0)
    optimizer = build_optimizer(config, [q for q in model.parameters() if q.requires_grad])
    big = 10**9

    with tempfile.TemporaryDirectory() as tmp:

        def engine(monitoring: bool, name: str) -> Trainer:
            c = TrainConfig(**{**config.to_dict(), "runs_dir": tmp})
            c.log_every = args.log_every if monitoring else big
            c.probe_every = args.probe_every if monitoring else big
            c.capture_every = args.capture_every if monitoring else 0
            s = Setup(
                config=c,
                device=device,
                amp_dtype=amp,
                data=OneBatch(x, y, args.steps),  # type: ignore[arg-type]
                model=model,
                eager=model,
                optimizer=optimizer,
                scaler=torch.amp.GradScaler(device.type, enabled=amp is torch.float16),
                loss_fn=loss_function(c, 10),
                total_steps=big,
                counts=flops.count(model, (3, args.size, args.size)),
            )
            trainer = Trainer(s, Emitter(RunWriter(Path(tmp) / f"{name}.mirante")))
            trainer.start()
            return trainer

        loops = {
            "bare": lambda n: bare_loop(model, optimizer, x, y, n, autocast),
            "engine, monitoring off": engine(False, "off"),
            "engine, monitoring on": engine(True, "on"),
        }

        def run(name: str, steps: int) -> float:
            loop = loops[name]
            sync(device)
            start = time.perf_counter()
            if callable(loop):
                loop(steps)
            else:
                loop.s.data.steps_per_epoch = steps
                loop.step_in_epoch = 0
                loop.train_one_epoch()
                loop.rec.flush(loop.step)
            sync(device)
            return steps * args.batch / (time.perf_counter() - start)

        for name in loops:
            run(name, args.warmup)
        rates: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(args.rounds):
            for name in loops:
                rates[name].append(run(name, args.steps))
        for loop in loops.values():
            if not callable(loop):
                loop.out.close()

    med = {name: statistics.median(r) for name, r in rates.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {where}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(
        f"model {args.model} at {args.size}x{args.size}, batch {args.batch}, {args.precision}, "
        f"channels_last {args.channels_last}; {args.rounds} rounds x {args.steps} steps; "
        f"log every {args.log_every}, probe every {args.probe_every}, capture every {args.capture_every or 'never'}"
    )
    for name, r in rates.items():
        print(f"  {name:24s} {med[name]:10,.0f} img/s   (rounds: {', '.join(f'{v:,.0f}' for v in r)})")
    off, on = med["engine, monitoring off"], med["engine, monitoring on"]
    print(f"monitoring overhead (on vs off): {100 * (1 - on / off):+.2f}%")
    print(f"engine (monitoring on) vs bare loop: {on / med['bare']:.3f}x")


if __name__ == "__main__":
    main()
