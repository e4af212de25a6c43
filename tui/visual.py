"""`mirante visualize RUN --layer NAME`: what each filter of a layer responds to, drawn in the terminal.

The work (torch) is `engine.visualize`, run here in this process: the command is the child that the app starts
from its Activations screen too (`--progress` makes it print one line per 16 steps for the app to read).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from rich.console import Console
from rich.text import Text

from tui.widgets.heatmap import render_image

STEPS = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run store, or the name of a run in runs/")
    parser.add_argument("--layer", required=True, help="a conv layer or block (the Activations screen's tree)")
    parser.add_argument(
        "--filters", default=None, metavar="LIST", help="which filters: 0-63 or 3,5,7-9 (default: the first 64)"
    )
    parser.add_argument("--steps", type=int, default=STEPS, help=f"gradient-ascent steps (default: {STEPS})")
    parser.add_argument("--device", default="auto", help="where to run (default: the GPU if there is one)")
    parser.add_argument("--progress", action="store_true", help="print `progress STEP/STEPS` lines (for the app)")
    parser.add_argument("--no-draw", action="store_true", help="store the images without drawing them")
    parser.add_argument("--save", default=None, metavar="FILE", help=argparse.SUPPRESS)  # the event, for the app


def main(args: argparse.Namespace) -> int:
    from tui.cli import CliError, resolve_run

    if args.steps < 1:
        raise CliError(f"--steps must be positive, got {args.steps}")
    store = resolve_run(args.run)
    from engine.visualize import VisualizeError, visualize
    from engine.visualize_images import images_of

    def progress(step: int, steps: int) -> None:
        print(f"progress {step}/{steps}", flush=True)

    try:
        event, fate = visualize(
            store, args.layer, args.filters, steps=args.steps, device=args.device,
            progress=progress if args.progress else None,
        )  # fmt: skip
    except VisualizeError as exc:
        raise CliError(str(exc)) from None
    if args.save:
        from engine import events as ev

        with open(args.save, "wb") as out:
            out.write(ev.encode(event))
    console = Console(highlight=False, no_color="NO_COLOR" in os.environ)
    color = console.is_terminal and "NO_COLOR" not in os.environ
    head = f"{event.layer}: {len(event.filters)} filters, the input each responds to most ({event.steps} steps"
    console.print(
        Text(f"{head} of gradient ascent from step {event.checkpoint_step:,}'s weights); {fate}"), soft_wrap=True
    )
    if not args.no_draw:
        for line in draw(images_of(event), list(event.filters), console.width, color):
            console.print(line, soft_wrap=True)
    sys.stdout.flush()
    return 0


def draw(images: np.ndarray, filters: list, width: int, color: bool, side: int = 16) -> list[Text]:
    """A grid of images [F, C, H, W], each shrunk to at most `side` pixels a side, titled with its filter's index."""
    if images.size == 0:
        return [Text("no images")]
    step = max(1, -(-max(images.shape[2:]) // side))
    shown = images[:, :, ::step, ::step]
    w = shown.shape[3]
    cols = max(1, (width + 1) // (w + 1))
    out: list[Text] = []
    for first in range(0, len(shown), cols):
        group = range(first, min(first + cols, len(shown)))
        out.append(Text(" ".join(str(filters[i])[:w].ljust(w) for i in group), style="dim" if color else ""))
        blocks = [render_image(shown[i], color=color) for i in group]
        for parts in zip(*blocks, strict=True):
            out.append(Text(" ").join(parts))
    return out


class Job:
    """`mirante visualize` of one layer in a child process, for the app: its progress and, at the end, its event
    (or why there is none). Started at once; read `progress`, `event` and `error` from the UI thread."""

    def __init__(self, store: str | os.PathLike, layer: str, steps: int | None = None) -> None:
        import subprocess
        import tempfile
        import threading

        self.layer = layer
        self.progress = "starting"
        self.event = None
        self.error: str | None = None
        self.done = False
        self._out = tempfile.NamedTemporaryFile(suffix=".event", delete=False)  # noqa: SIM115 - read at the end
        self._out.close()
        command = [sys.executable, "-m", "tui.cli", "visualize", str(store), "--layer", layer, "--progress",
                   "--no-draw", "--steps", str(steps or STEPS), "--save", self._out.name]  # fmt: skip
        self._child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        threading.Thread(target=self._follow, name="mirante-visualize", daemon=True).start()

    def _follow(self) -> None:
        from engine import events as ev

        for line in self._child.stdout:
            if line.startswith("progress "):
                self.progress = f"step {line.split()[1]}"
        error = self._child.stderr.read().strip().splitlines()
        code = self._child.wait()
        try:
            with open(self._out.name, "rb") as f:
                data = f.read()
            self.event = ev.decode(data) if code == 0 and data else None
        except (OSError, ValueError):
            self.event = None
        finally:
            os.unlink(self._out.name)
        if self.event is None:
            self.error = (error[-1] if error else f"exit {code}").removeprefix("mirante: error: ")
        self.done = True

    def cancel(self) -> None:
        import signal

        if not self.done:
            os.killpg(self._child.pid, signal.SIGTERM)
