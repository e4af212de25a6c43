"""What a filter responds to: `mirante visualize RUN --layer NAME`, activation maximisation from a run's checkpoint.

For each filter, the input that maximises its mean activation: gradient ascent from faint noise, the image jittered
by a few pixels each step (so that the result does not lean on one pixel grid), Adam, the pixels kept within the
range of normalised images. All the filters asked for are one batch, on the run's device. The images go into the
run's store as a `Visualized` event (replay and compare show them), unless its trainer is still writing it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine import events as ev
from engine import models
from engine.capture import map_layers
from engine.device import pick_device
from engine.store import RunReader, RunWriter, StoreError
from engine.train import CheckpointError, checkpoint_dir, load_checkpoint

STEPS = 256
LR = 0.05
JITTER = 2  # pixels, each way
MAX_FILTERS = 256
STORED_SIDE = 64  # images are stored at most this many pixels a side (a 224x224 net's 64 filters: 786 KB)
LIMIT = 3.0  # normalised pixels stay within +-LIMIT (about the range of images normalised per channel)


class VisualizeError(Exception):
    """Something `mirante visualize` cannot do: one line for the user."""


@dataclass
class Model:
    """A run's model rebuilt from its checkpoint, with what visualising it needs."""

    net: nn.Module
    input_shape: tuple[int, int, int]  # (C, H, W) of the images it was trained on
    step: int  # the training step of the checkpoint


def parse_filters(text: str | None, channels: int) -> list[int]:
    """`0-63`, `3,5,7-9` or None (the first min(channels, 64)) as channel indices, checked against `channels`."""
    if text is None:
        return list(range(min(channels, 64)))
    picked: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", part)
        if not match:
            raise VisualizeError(f"--filters {text!r}: write indices and ranges, as 0-63 or 3,5,7-9")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise VisualizeError(f"--filters {text!r}: the range {lo}-{hi} runs backwards")
        picked += range(lo, hi + 1)
    if max(picked) >= channels:
        raise VisualizeError(f"--filters {text!r}: the layer has {channels} filters (0-{channels - 1})")
    if len(picked) > MAX_FILTERS:
        raise VisualizeError(f"--filters {text!r}: {len(picked)} filters; at most {MAX_FILTERS} at a time")
    return list(dict.fromkeys(picked))


def load_model(store: Path, device: torch.device) -> Model:
    """The run's model with its last checkpoint's weights. VisualizeError when there is none or it cannot be built."""
    try:
        with RunReader(store) as run:
            started = run.started()
    except (StoreError, FileNotFoundError) as exc:
        raise VisualizeError(str(exc).splitlines()[0]) from None
    if started is None:
        raise VisualizeError(f"{store}: the run has not started: nothing to visualize yet")
    config = dict(started.config)
    name = str(config.get("name") or started.name)
    ckpt = checkpoint_dir(store.parent, name) / "last.pt"
    if not ckpt.exists():
        raise VisualizeError(
            f"{store}: no checkpoint ({ckpt.name} in {ckpt.parent}): mirante train saves one at each epoch's end and "
            f"when stopped; train the run for an epoch (or resume it) first"
        )
    shape = started.model_summary.get("input_shape")
    if started.model not in models.MODELS or not (isinstance(shape, list) and len(shape) == 3):
        raise VisualizeError(
            f"{store}: its model {started.model!r} is not one mirante builds (a Monitor run of your own model?): "
            f"visualize rebuilds the model from the run's config"
        )
    try:
        net = models.build_model(
            started.model,
            num_classes=int(config.get("num_classes", 10)),
            in_channels=int(shape[0]),
            image_size=int(shape[1]),
            activation=str(config.get("activation", "relu")),
            depth=config.get("depth"),
            residual=bool(config.get("residual", False)),
            pretrained=bool(config.get("pretrained", False)),
            aux_logits=bool(config.get("aux_logits", False)),
            weights=False,
        )
        saved = load_checkpoint(ckpt, torch.device("cpu"))
        net.load_state_dict(saved["model"])
    except CheckpointError as exc:
        raise VisualizeError(str(exc)) from None
    except (models.ModelError, RuntimeError, ValueError, KeyError) as exc:
        line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise VisualizeError(f"{store}: cannot rebuild its {started.model} from {ckpt}: {line}") from None
    return Model(net.to(device).eval(), (int(shape[0]), int(shape[1]), int(shape[2])), int(saved["state"]["step"]))


def find_layer(net: nn.Module, layer: str) -> nn.Module:
    """The module named `layer`; VisualizeError naming the close ones (or the conv layers) when there is none."""
    modules = dict(net.named_modules())
    if layer in modules and layer:
        return modules[layer]
    names = [n for n, _ in map_layers(net)]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    listed = close or names[-5:]
    said = "close ones" if close else "its last conv layers and blocks"
    raise VisualizeError(f"no layer {layer!r} in the model; {said}: {', '.join(listed)}")


def maximise(
    net: nn.Module,
    layer: nn.Module,
    filters: list[int],
    input_shape: tuple[int, int, int],
    *,
    steps: int = STEPS,
    seed: int = 0,
    progress: Callable[[int, int], Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """For each filter of `layer`, the input that maximises its mean activation: ([F, C, H, W] images in normalised
    pixel units, [F] their final mean activations)."""
    device = next(net.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = (0.1 * torch.randn(len(filters), *input_shape, generator=generator)).to(device).requires_grad_(True)
    index = torch.tensor(filters, device=device)
    optimizer = torch.optim.Adam([x], lr=LR)
    caught: list[Tensor] = []

    class Reached(Exception):
        """The layer has produced its output: the rest of the forward pass is not needed."""

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        caught.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise Reached

    handle = layer.register_forward_hook(hook)
    for p in net.parameters():
        p.requires_grad_(False)
    score = torch.zeros(len(filters), device=device)
    try:
        for step in range(steps):
            dy, dx = (int(v) for v in torch.randint(-JITTER, JITTER + 1, (2,), generator=generator))
            caught.clear()
            try:
                net(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
            except Reached:
                pass
            out = caught[0]
            chosen = out[torch.arange(len(filters), device=device), index]  # each image's own filter
            score = chosen.reshape(len(filters), -1).mean(dim=1)
            optimizer.zero_grad()
            (-score.sum() + 1e-3 * x.pow(2).mean()).backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(-LIMIT, LIMIT)
            if progress is not None and (step + 1) % 16 == 0:
                progress(step + 1, steps)
    finally:
        handle.remove()
    return x.detach(), score.detach()


def to_bytes(images: Tensor) -> bytes:
    """[F, C, H, W] as uint8, each image scaled from its own min to its own max."""
    flat = images.reshape(len(images), -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    scaled = (flat - lo[:, None]) / (hi - lo).clamp(min=1e-12)[:, None]
    return (scaled * 255).round().to(torch.uint8).cpu().numpy().tobytes()


def visualize(
    store: Path,
    layer: str,
    filters: str | None = None,
    *,
    steps: int = STEPS,
    device: str = "auto",
    progress: Callable[[int, int], Any] | None = None,
) -> tuple[ev.Visualized, str]:
    """Visualize `layer`'s filters from the run's checkpoint; the event (stored in the run when it can be) and what
    became of it, in words."""
    model = load_model(store, pick_device(device))
    module = find_layer(model.net, layer)
    probe: list[int] = []
    shape_hook = module.register_forward_hook(lambda m, i, o: probe.append(o.shape[1] if o.dim() == 4 else 0))
    try:
        with torch.no_grad():
            model.net(torch.zeros(1, *model.input_shape, device=next(model.net.parameters()).device))
    finally:
        shape_hook.remove()
    if not probe or probe[0] == 0:
        raise VisualizeError(f"{layer!r} does not output maps (it is not a conv layer or a block)")
    picked = parse_filters(filters, probe[0])
    images, score = maximise(model.net, module, picked, model.input_shape, steps=steps, progress=progress)
    if max(images.shape[2:]) > STORED_SIDE:
        scale = STORED_SIDE / max(images.shape[2:])
        size = (max(1, round(images.shape[2] * scale)), max(1, round(images.shape[3] * scale)))
        images = torch.nn.functional.adaptive_avg_pool2d(images, size)
    event = ev.Visualized(
        seq=0,
        wall_time=0.0,
        step=model.step,
        layer=layer,
        filters=picked,
        shape=tuple(images.shape),
        data=to_bytes(images),
        score=score.float().cpu().numpy(),
        steps=steps,
        checkpoint_step=model.step,
    )
    return event, record(store, event)


def record(store: Path, event: ev.Visualized) -> str:
    """Append the event to the run's store; what happened, in words (a run still being trained cannot take it)."""
    try:
        writer = RunWriter(store, append=True)
    except StoreError as exc:
        if "another process is writing" in str(exc):
            return "not stored: the run's trainer is still writing it (visualize it again once it has ended)"
        return f"not stored: {str(exc).splitlines()[0]}"
    try:
        with RunReader(store) as run:  # stamped with the run's last wall time: its duration stays the training's
            last_wall = run.extent()[3] or 0.0
        stamped = ev.Visualized(
            **ev.Sequencer(writer.last_seq, clock=lambda: last_wall).header(event.step),
            **{
                k: getattr(event, k) for k in ("layer", "filters", "shape", "data", "score", "steps", "checkpoint_step")
            },
        )
        writer.write(stamped)
        writer.flush()
    finally:
        writer.close()
    return f"stored in {store.name}"
