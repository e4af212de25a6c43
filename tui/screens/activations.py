"""Activations: any captured layer's maps for each captured image, one channel enlarged, Grad-CAM over the image,
the confusion matrix, and the first conv's filters.

The layer tree on the left is the model's (stages and blocks collapse; `/` finds a layer by name); the view on the
right shows the picked layer for the picked image. Keys of this pane: `[` `]` image, `j` `k` channel, `z` enlarge
it, `o` order channels by mean activation, `v` next view (maps, Grad-CAM, confusion matrix, filters), left/right
(the app's) an earlier or later capture.
"""

from __future__ import annotations

import bisect
from typing import ClassVar

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Static, Tree

from engine.visualize_images import images_of
from tui import captures
from tui.screens.base import Pane, View
from tui.state import MapCapture, RunState
from tui.widgets import MapGrid, literal
from tui.widgets.capture import CaptureView, Frame
from tui.widgets.pictures import PictureView, sheet_of

VIEWS = ("maps", "gradcam", "confusion", "filters")


class ActivationsPane(Pane):
    TITLE = "Activations"
    KEY = "4"
    DEFAULT_CSS = """
    ActivationsPane #side { width: 22; }
    ActivationsPane #layer-tree { height: 1fr; }
    ActivationsPane #keys { height: 2; color: $text-muted; }
    ActivationsPane #view { width: 1fr; }
    ActivationsPane #filters { width: 1fr; }
    ActivationsPane #find { display: none; height: 3; }
    ActivationsPane #find.shown { display: block; }
    ActivationsPane #filters { display: none; }
    ActivationsPane.filters #filters { display: block; }
    ActivationsPane.filters #view { display: none; }
    ActivationsPane #pictures { display: none; width: 1fr; }
    ActivationsPane.pictures #pictures { display: block; }
    ActivationsPane.pictures #view { display: none; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left_square_bracket", "image(-1)", "previous image", show=False),
        Binding("right_square_bracket", "image(1)", "next image", show=False),
        Binding("j", "channel(1)", "next channel", show=False),
        Binding("k", "channel(-1)", "previous channel", show=False),
        Binding("z", "enlarge", "enlarge the channel (or back to all)", show=False),
        Binding("o", "order", "channels by mean activation (or in order)", show=False),
        Binding("v", "next_view", "next view: maps, Grad-CAM, confusion matrix, filters", show=False),
        Binding("slash", "find", "find a layer by name", show=False),
        Binding("V", "visualize", "visualize what the layer's filters respond to", show=False),
        Binding("escape", "close_find", "close the search", show=False),
    ]

    step: int | None = None  # None: the latest capture; left/right keys step through them

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.picked: str | None = None  # the layer shown (None: the first conv's, once captures exist)
        self.image = 0
        self.cursor: int | None = None  # the channel under the cursor
        self.by_mean = False
        self.enlarged = False
        self.view = "maps"
        self._tree_of: tuple[str, ...] = ()
        self.job = None  # a running `mirante visualize` (tui.visual.Job)

    def compose(self) -> ComposeResult:
        yield Static(id="caption")
        with Horizontal():
            with Vertical(id="side"):
                yield Tree(literal("layers"), id="layer-tree")
                yield Input(placeholder="layer name", id="find")
                yield Static(Text("[ ] image  v view  V\nj k z o  / find"), id="keys")
            yield CaptureView(id="view")
            yield MapGrid(id="filters")
            if self.app.graphics is not None:  # the terminal draws pictures (tui.graphics)
                yield PictureView(self.app.graphics, id="pictures")

    def on_mount(self) -> None:
        tree = self.query_one("#layer-tree", Tree)
        tree.show_root = False
        tree.auto_expand = False

    def on_show(self) -> None:
        """The pane's keys work while the focus is in it: on the layer tree, when the pane is shown."""
        self.query_one("#layer-tree", Tree).focus()

    # -- drawing

    def draw(self, state: RunState, view: View) -> None:
        layers = state.capture_layers
        built = tuple(layers) != self._tree_of
        if built:
            self._build_tree(layers)
        if self.picked is None or self.picked not in layers:
            self.picked = default_layer(layers)
        if built and self.picked is not None:
            self.call_after_refresh(self.pick, self.picked)  # the tree's cursor on the layer shown
        capture = state.capture_at(self.step)
        count = len(capture.images) if capture is not None else 1
        self.image = min(self.image, max(0, count - 1))
        seen = state.visualized.get(self.picked or "") if self.view == "filters" else None
        self.set_class(self.view == "filters" and seen is None, "filters")
        if seen is not None:
            heading = f"{seen.layer}: what each filter responds to most · step {seen.checkpoint_step:,}"
            self.show(
                Frame(mode="visualized", heading=heading, visual=images_of(seen), titles=[str(f) for f in seen.filters])
            )
        elif self.view == "filters":
            self.set_class(False, "pictures")
            self._draw_filters(state)
        else:
            self.show(self.frame(state, capture))
        self.query_one("#caption", Static).update(self.caption(state, capture))

    def show(self, frame: Frame) -> None:
        """The frame in pictures where the terminal draws them and the frame has some, else in cells."""
        sheet = sheet_of(frame) if self.app.graphics is not None else None
        self.set_class(sheet is not None, "pictures")
        if sheet is not None:
            self.query_one("#pictures", PictureView).show(sheet)
        else:
            self.query_one("#view", CaptureView).set_frame(frame)

    def frame(self, state: RunState, capture) -> Frame:
        """What the view on the right draws now."""
        classes = state.classes
        if not state.capture_steps:
            return Frame(message="no capture yet: the trainer captures every --capture-every steps, `c` asks now")
        if self.view == "confusion":
            epoch = captures.confusion_at(state.epochs, self.step)
            matrix = captures.confusion(epoch) if epoch is not None else None
            if epoch is None or matrix is None:
                return Frame(message="no confusion matrix: it is counted at each validation (an older run has none)")
            return Frame(
                mode="confusion",
                matrix=matrix,
                classes=classes,
                pairs=captures.worst_pairs(matrix, classes),
                matrix_title=f"confusion, validation of epoch {epoch.epoch}: rows true, columns predicted",
            )
        picture = state.latest_maps("input", self.step)
        image = picture.maps[self.image] if picture is not None and self.image < len(picture.maps) else None
        guess = captures.guess(capture, self.image) if capture is not None else None
        said = [captures.guess_line(guess, classes)] if capture is not None else []
        if self.view == "gradcam":
            cams = captures.cams(capture) if capture is not None else None
            if cams is None or guess is None:
                return Frame(message="no Grad-CAM in this capture (an older run's, or a model without a conv layer)")
            panels = [(f"looks at: {captures.class_name(classes, guess.predicted)}", cams[0][self.image])]
            if guess.label >= 0 and guess.label != guess.predicted:
                panels.append((f"for {captures.class_name(classes, guess.label)}", cams[1][self.image]))
            top = " · ".join(f"{captures.class_name(classes, k)} {100 * p:.0f}%" for k, p in guess.top)
            return Frame(
                mode="gradcam",
                image=image,
                cams=panels,
                image_lines=said,
                probs_line=f"likeliest: {top} (Grad-CAM on {capture.cam_layer})",
            )
        maps = state.latest_maps(self.picked, self.step) if self.picked else None
        if maps is None or maps.maps.ndim != 4 or self.image >= len(maps.maps):
            return Frame(image=image, image_lines=said, heading=f"{self.picked}: not in this capture")
        one = maps.maps[self.image]
        order = captures.channel_order(one, self.by_mean)
        if self.cursor is None or self.cursor >= len(one):
            self.cursor = order[0] if order else None
        frame = Frame(
            mode="channel" if self.enlarged else "maps",
            image=image,
            image_lines=said,
            maps=one[order] if order else one,
            titles=captures.channel_titles(order, maps.dead, self.cursor),
            heading=heading(maps, self.by_mean),
            total=maps.channels or len(one),
        )
        if self.enlarged and self.cursor is not None:
            frame.channel = one[self.cursor]
            frame.channel_lines = channel_lines(maps, self.cursor, one)
        return frame

    def _draw_filters(self, state: RunState) -> None:
        grid = self.query_one("#filters", MapGrid)
        filters = state.filters
        if filters is None or filters.maps.ndim != 4:
            grid.set_maps(np.empty((0, 0, 0)), heading="no filters captured yet")
            return
        out, cin, kh, kw = filters.maps.shape
        grid.set_maps(
            filters.maps.reshape(out * cin, kh, kw),
            [f"{i // cin}.{i % cin}" if cin > 1 else str(i) for i in range(out * cin)],
            heading=f"{filters.layer} filters",  # each titled filter.input channel
            total=out * cin,
            noun="kernels",
        )

    def caption(self, state: RunState, capture) -> str:
        if self.job is not None and not self.job.done:
            return f"visualizing {self.job.layer}: {self.job.progress} (V again: cancel)"
        if self.job is not None and self.job.error:
            return f"visualize {self.job.layer}: {self.job.error}"
        steps = state.capture_steps
        at = len(steps) if self.step is None else bisect.bisect_right(steps, self.step)
        if at == 0:
            return "no capture yet"
        images = len(capture.images) if capture is not None else 1
        parts = [f"capture {at:,}/{len(steps):,} · step {steps[at - 1]:,}"]
        if images > 1:
            parts.append(f"image {self.image + 1}/{images}")
        parts.append(self.view if not (self.view == "maps" and self.enlarged) else "one channel")
        return " · ".join(parts) + " · ←/→ earlier/later"

    # -- keys

    def redraw(self) -> None:
        """Draw again now, after a key of this pane (the app draws the pane shown, from its state)."""
        self.app.redraw(force=True)

    def move(self, state: RunState, delta: int) -> None:
        steps = state.capture_steps
        if not steps:
            return
        current = bisect.bisect_right(steps, self.step) - 1 if self.step is not None else len(steps) - 1
        self.step = steps[max(0, min(len(steps) - 1, current + delta))]

    def action_image(self, delta: int) -> None:
        capture = self.app.state.capture_at(self.step)
        count = len(capture.images) if capture is not None else 1
        self.image = (self.image + delta) % max(1, count)
        self.redraw()

    def action_channel(self, delta: int) -> None:
        maps = self.app.state.latest_maps(self.picked, self.step) if self.picked else None
        if maps is None or maps.maps.ndim != 4 or self.image >= len(maps.maps):
            return
        order = captures.channel_order(maps.maps[self.image], self.by_mean)
        if order:
            at = order.index(self.cursor) if self.cursor in order else 0
            self.cursor = order[(at + delta) % len(order)]
        self.redraw()

    def action_enlarge(self) -> None:
        self.enlarged = not self.enlarged
        self.view = "maps"
        self.redraw()

    def action_order(self) -> None:
        self.by_mean = not self.by_mean
        self.cursor = None  # the first channel of the new order
        self.redraw()

    def action_next_view(self) -> None:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]
        self.redraw()

    def action_visualize(self) -> None:
        """Start `mirante visualize` of the picked layer in a child (V again cancels it); its images show in the
        filters view when it is done."""
        from tui.visual import Job

        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.job = None
        elif self.app.store is None or not self.picked or self.picked == "input":
            self.app.tell("visualize: pick a conv layer or a block in the tree first")
        else:
            self.job = Job(self.app.store, self.picked)
        self.redraw()

    def tick(self, state: RunState, view: View) -> None:
        """The visualize job's progress; its images, once it is done."""
        if self.job is None:
            return
        if self.job.done and self.job.event is not None:
            state.apply(self.job.event)
            self.view, self.job = "filters", None
        self.draw(state, view)

    def action_find(self) -> None:
        find = self.query_one("#find", Input)
        find.add_class("shown")
        find.value = ""
        find.focus()

    def action_close_find(self) -> None:
        find = self.query_one("#find", Input)
        if find.has_class("shown"):
            find.remove_class("shown")
            self.query_one("#layer-tree", Tree).focus()

    def on_input_changed(self, message: Input.Changed) -> None:
        hits = captures.find_layers(self.app.state.capture_layers, message.value)
        if hits:
            self.pick(hits[0])

    def on_input_submitted(self, message: Input.Submitted) -> None:
        self.action_close_find()

    def on_tree_node_highlighted(self, message: Tree.NodeHighlighted) -> None:
        if message.node.data is not None and message.node.data != self.picked:
            self.picked = message.node.data
            self.cursor = None
            self.redraw()

    def pick(self, layer: str) -> None:
        """Show `layer`, and put the tree's cursor on it (its stage and block opened)."""
        self.picked, self.cursor = layer, None
        tree = self.query_one("#layer-tree", Tree)
        for node in _nodes(tree.root):
            if node.data == layer:
                parent = node.parent
                while parent is not None:
                    parent.expand()
                    parent = parent.parent
                tree.move_cursor(node)
                break
        self.redraw()

    def _build_tree(self, layers: list[str]) -> None:
        """The tree of `layers`, opened all the way for a model of up to 40 layers, else by stage only."""
        self._tree_of = tuple(layers)
        tree = self.query_one("#layer-tree", Tree)
        tree.clear()
        opened = len(layers) <= 40

        def add(parent, node: captures.LayerNode) -> None:
            label = literal(node.label) if node.layer is not None else literal(node.label + "/", "dim")
            if node.children:
                branch = parent.add(label, data=node.layer, expand=opened or parent is tree.root)
                for child in node.children:
                    add(branch, child)
            else:
                parent.add_leaf(label, data=node.layer)

        for child in captures.layer_tree(layers).children:
            add(tree.root, child)
        tree.root.expand()


def _nodes(node):
    yield node
    for child in node.children:
        yield from _nodes(child)


def default_layer(layers: list[str]) -> str | None:
    """The layer shown first: the first conv's (the lecture's first-layer maps), else the first captured."""
    named = [n for n in layers if n != "input"]
    return named[0] if named else (layers[0] if layers else None)


def heading(maps: MapCapture, by_mean: bool) -> str:
    """`conv4 · 16x16 · by mean · 3 dead`: what the grid shows of the layer (its own size when pooled down)."""
    h, w = maps.maps.shape[2:]
    size = f"{h}x{w}" if not maps.size or tuple(maps.size) == (h, w) else f"{h}x{w} of {maps.size[0]}x{maps.size[1]}"
    parts = [maps.layer, size]
    if by_mean:
        parts.append("by mean")
    dead = captures.dead_count(maps.dead)
    if dead:
        parts.append(f"{dead} dead (x)")
    return " · ".join(parts)


def channel_lines(maps: MapCapture, channel: int, one: np.ndarray) -> list[str]:
    """What is said over an enlarged channel of one image's maps [C, H, W]: which, where it ranks by mean, its
    range, whether it is dead."""
    values = one[channel]
    finite = values[np.isfinite(values)]
    order = captures.channel_order(one, by_mean=True)
    rank = order.index(channel) + 1
    span = f"mean {finite.mean():.3g}, {finite.min():.3g} to {finite.max():.3g}" if finite.size else "no finite value"
    dead = " · dead on every image" if maps.dead is not None and channel < len(maps.dead) and maps.dead[channel] else ""
    return [f"{maps.layer} channel {channel} ({rank} of {len(order)} by mean) · {span}{dead}"]
