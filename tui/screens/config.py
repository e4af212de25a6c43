"""The run's configuration: every key of its config, grouped, each value shown as the store holds it."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.widgets import literal

GROUPS = {  # group -> the config keys it shows, in this order; keys of no group are shown under "other"
    "model": ("model", "num_classes", "activation", "depth", "residual", "image_size", "pretrained", "aux_logits",
              "init", "init_std"),
    "data": ("dataset", "data_dir", "val_fraction", "test", "batch_size", "workers", "overfit_batches"),
    "optimizer and schedule": ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "l1", "schedule",
                               "warmup_steps", "step_size", "milestones", "gamma", "patience", "loss",
                               "label_smoothing", "clip_grad", "epochs", "steps", "steps_per_epoch", "total_steps"),
    "augmentation": ("augment",),
    "seed": ("seed",),
    "device and precision": ("device", "precision", "channels_last", "compile", "peak_tflops", "world_size",
                             "backend"),
    "run": ("name", "group", "swept", "runs_dir", "log_every", "probe_every", "update_every", "capture_every",
            "capture_images", "capture_kb", "capture_layer", "on_divergence", "range_test", "headless", "diagnostics"),
}  # fmt: skip


def resolved(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, str]:
    """Notes for the values whose meaning the run decided: the image size a None stood for."""
    shape = summary.get("input_shape")
    if config.get("image_size") is None and isinstance(shape, list) and len(shape) == 3:
        return {"image_size": f"{shape[1]}x{shape[2]} fed to the model"}
    return {}


def grouped(config: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(group, its keys present in `config`) for the groups with any, then "other" with the keys of no group."""
    known = {key for keys in GROUPS.values() for key in keys}
    out = [(group, [k for k in keys if k in config]) for group, keys in GROUPS.items()]
    out.append(("other", [k for k in config if k not in known]))
    return [(group, keys) for group, keys in out if keys]


def config_text(config: dict[str, Any], notes: dict[str, str] | None = None) -> Text:
    """A group's title, then its keys and values, one a line; keys and values literal (a store may hold anything).
    `notes` says after a value what it came to in the run ("None  (32x32 fed to the model)")."""
    notes = notes or {}
    width = max((len(literal(k).plain) for k in config), default=0)
    lines = []
    for group, keys in grouped(config):
        lines.append(Text(group, style="bold"))
        for key in keys:
            name = literal(key, "cyan")
            line = Text("  ") + name + Text(" " * (width - name.cell_len + 2))
            line += literal(config[key])
            if key in notes:
                line += literal(f"  ({notes[key]})", "dim")
            lines.append(line)
    return Text("\n").join(lines) if lines else Text("no configuration: the run has not started", style="dim")


class ConfigScreen(ModalScreen[None]):
    """The run's configuration over the current screen; g or esc closes it."""

    BINDINGS = [("escape,g,q", "dismiss", "close")]

    def __init__(self, name: str, config: dict[str, Any], notes: dict[str, str] | None = None) -> None:
        super().__init__()
        self.run_name, self.config, self.notes = name, config, notes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full"):
            yield Static(Text.assemble(literal(self.run_name, "bold"), "  configuration  (g or esc closes)"))
            with VerticalScroll():
                yield Static(config_text(self.config, self.notes), id="config")
