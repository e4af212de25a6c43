"""What the Activations pane shows of a capture, worked out without Textual: the layer tree, channel order, dead
channels, the model's guess for an image, Grad-CAM over the image, and the confusion matrix's worst pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engine import events as ev


@dataclass
class LayerNode:
    """A node of the layer tree: a captured layer (`layer` set) or a group of them (a stage: `layer` None)."""

    label: str
    layer: str | None = None
    children: list[LayerNode] = field(default_factory=list)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def layer_tree(layers: list[str]) -> LayerNode:
    """The captured layers as a tree by their dotted names: each under the nearest captured layer its name starts
    with (a conv under its block), and layers sharing a prefix no captured layer has (a stage: `layer1`) under a
    group of that name when there are two or more of them. Labels are names relative to the parent."""
    root = LayerNode("")
    _grow(root, "", layers)
    return root


def _grow(parent: LayerNode, prefix: str, names: list[str]) -> None:
    """Add `names` (all under `prefix`) below `parent`, in their order."""
    taken: set[str] = set()
    for name in names:
        if name in taken:
            continue
        rest = name[len(prefix) :]
        head = rest.split(".")[0]
        group_prefix = prefix + head + "."
        inside = [n for n in names if n.startswith(group_prefix) and n not in taken]
        if prefix + head == name:  # a captured layer: the ones inside it go below it
            node = LayerNode(rest, name)
            parent.children.append(node)
            taken.add(name)
            _grow(node, group_prefix, inside)
            taken.update(inside)
        elif len(inside) >= 2:  # a stage: a group of captured layers
            node = LayerNode(head)
            parent.children.append(node)
            _grow(node, group_prefix, inside)
            taken.update(inside)
        else:
            parent.children.append(LayerNode(rest, name))
            taken.add(name)


def find_layers(layers: list[str], text: str) -> list[str]:
    """The layers whose names hold `text` (case-insensitive): those that end with it first."""
    text = text.strip().lower()
    if not text:
        return []
    hits = [n for n in layers if text in n.lower()]
    return sorted(hits, key=lambda n: (not n.lower().endswith(text), layers.index(n)))


def channel_order(maps: np.ndarray, by_mean: bool) -> list[int]:
    """Channel indices of one image's maps [C, H, W]: in order, or by mean activation, highest first (NaN last)."""
    count = maps.shape[0] if maps.ndim == 3 else 0
    if not by_mean or count == 0:
        return list(range(count))
    with np.errstate(invalid="ignore"):
        means = np.nanmean(maps.reshape(count, -1), axis=1) if maps.size else np.zeros(count)
    means = np.where(np.isfinite(means), means, -np.inf)
    return [int(i) for i in np.argsort(-means, kind="stable")]


def channel_titles(order: list[int], dead: np.ndarray | None, cursor: int | None) -> list[str]:
    """Each shown channel's title: its index, `x` when dead, `>` before the one under the cursor."""
    titles = []
    for i in order:
        title = f"{i}x" if dead is not None and i < len(dead) and dead[i] else str(i)
        titles.append(f">{title}" if i == cursor else title)
    return titles


def dead_count(dead: np.ndarray | None) -> int | None:
    return int(dead.sum()) if dead is not None else None


@dataclass(frozen=True)
class Guess:
    """The model's answer for one captured image."""

    label: int  # the true class (-1: unknown)
    predicted: int
    confidence: float  # the predicted class's probability
    top: list[tuple[int, float]]  # the three likeliest classes and their probabilities

    @property
    def right(self) -> bool | None:
        return None if self.label < 0 else self.label == self.predicted


def guess(capture: ev.Capture, image: int) -> Guess | None:
    """What the model made of image `image` of the capture (None when the capture holds no probabilities)."""
    n = len(capture.images)
    probs = np.asarray(capture.probs, dtype=np.float64)
    if n == 0 or probs.size % n or not 0 <= image < n:
        return None
    row = probs.reshape(n, -1)[image]
    top = [(int(k), float(row[k])) for k in np.argsort(-row, kind="stable")[:3]]
    label = capture.labels[image] if image < len(capture.labels) else -1
    return Guess(label, top[0][0], top[0][1], top)


def class_name(classes: tuple[str, ...], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else f"class {k}"


def guess_line(g: Guess | None, classes: tuple[str, ...]) -> str:
    """`triangle -> square 62% (wrong)`: the image's class, the model's guess and its confidence."""
    if g is None:
        return "no prediction recorded"
    said = f"{class_name(classes, g.predicted)} {100 * g.confidence:.0f}%"
    if g.label < 0:
        return f"predicted {said}"
    return f"{class_name(classes, g.label)} -> {said} ({'right' if g.right else 'wrong'})"


def cams(capture: ev.Capture) -> np.ndarray | None:
    """The capture's Grad-CAM maps, [2, N, H, W] in 0..1 (for the predicted class, then the true one), or None."""
    shape = tuple(capture.cam_shape)
    if len(shape) != 4 or not capture.cam or len(capture.cam) != int(np.prod(shape)):
        return None
    return np.frombuffer(capture.cam, dtype=np.uint8).reshape(shape).astype(np.float32) / 255


def overlay(image: np.ndarray, cam: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The image [3, H, W] (any range) with a heat map `cam` [H, W] in 0..1 laid over it in `colour`'s colours
    (a [256, 3] table): half the image's own light, and the map's colour as strong as the map. [3, H, W] in 0..1."""
    img = np.asarray(image, dtype=np.float64)
    img = np.repeat(img[:1], 3, axis=0) if img.shape[0] == 1 else img[:3]
    finite = img[np.isfinite(img)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    base = np.clip((np.nan_to_num(img) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    if cam.shape != base.shape[1:]:
        return base
    heat = colour[np.clip(np.rint(cam * 255), 0, 255).astype(int)].transpose(2, 0, 1) / 255
    alpha = 0.2 + 0.6 * cam  # the map shows where it is high, the image shows through where it is low
    return (1 - alpha) * base * 0.8 + alpha * heat


def confusion(epoch: ev.Epoch) -> np.ndarray | None:
    """The epoch's confusion counts as a K x K matrix (row: true class, column: predicted), or None."""
    counts = np.asarray(epoch.confusion, dtype=np.float64)
    k = math.isqrt(counts.size)
    return counts.reshape(k, k) if k and k * k == counts.size else None


def worst_pairs(matrix: np.ndarray, classes: tuple[str, ...], n: int = 5) -> list[str]:
    """The most frequent mistakes: `triangle as square: 12 (8% of triangles)`, most first."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    pairs = []
    for flat in np.argsort(-off, axis=None, kind="stable")[:n]:
        true, predicted = divmod(int(flat), matrix.shape[1])
        count = off[true, predicted]
        if count <= 0:
            break
        total = matrix[true].sum()
        share = f" ({100 * count / total:.0f}% of {class_name(classes, true)})" if total else ""
        pairs.append(f"{class_name(classes, true)} as {class_name(classes, predicted)}: {count:,.0f}{share}")
    return pairs


def confusion_at(epochs: list[ev.Epoch], step: int | None) -> ev.Epoch | None:
    """The latest epoch with a confusion matrix at or before `step` (None: the latest of all)."""
    for epoch in reversed(epochs):
        if len(epoch.confusion) and (step is None or epoch.step <= step):
            return epoch
    return None
