"""Typed training events and their byte encoding: the contract between engine and tui.

Standard library only: the UI, the store and the diagnostics import this without torch.

Every event is a frozen, slotted dataclass that starts with the same header
(`seq`, `wall_time`, `step`) and carries one payload. `encode`/`decode` turn any event
into bytes and back exactly (NaN, infinities and -0.0 included); an event kind written by
a newer mirante decodes to `None` with a warning instead of failing.
"""

from __future__ import annotations

import json
import math
import struct
import time
import warnings
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

SCHEMA_VERSION = 1
"""Version of the event schema and of the run store that keeps it (`PRAGMA user_version`)."""

RUN_STATUSES = ("finished", "failed", "interrupted", "pruned")  # pruned: a search stopped a poor trial early
DIAGNOSTIC_LEVELS = ("ok", "warn", "fail")


def _f32(values: Iterable[float]) -> array:
    """A float32 vector; the compact form of per-layer statistics."""
    if isinstance(values, array) and values.typecode == "f":
        return values
    if isinstance(values, (bytes, bytearray)):
        out = array("f")
        out.frombytes(values)
        return out
    try:  # a float32 buffer (a numpy array, a tensor's numpy view): copy it whole
        view = memoryview(values)  # type: ignore[arg-type]
    except TypeError:
        return array("f", values)
    if view.format == "f" and view.c_contiguous:
        out = array("f")
        out.frombytes(view.cast("B"))
        return out
    return array("f", view.tolist() if view.ndim else values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """The header every event shares."""

    kind: ClassVar[str] = "Event"
    seq: int  # position in the run's event log: 1, 2, 3, ... without gaps
    wall_time: float  # seconds since the epoch, when the event was made
    step: int  # optimizer steps taken when the event was made


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    """The first event of a run: what is trained, on what, with which software."""

    kind: ClassVar[str] = "RunStarted"
    name: str
    model: str
    dataset: str
    config: Mapping[str, Any] = field(default_factory=dict)
    # params, MACs, FLOPs and the like, keyed by name; the profiler fills it
    model_summary: Mapping[str, Any] = field(default_factory=dict)
    # parameterised modules, in order; LayerStats vectors are aligned with it
    layers: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()  # the dataset's class names, in label order
    device: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "classes", tuple(self.classes))


@dataclass(frozen=True, slots=True, kw_only=True)
class Step(Event):
    """Named scalars of one optimizer step: `train/loss`, `lr`, `throughput/img_s`, ..."""

    kind: ClassVar[str] = "Step"
    scalars: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerStats(Event):
    """Per-layer vectors, float32, aligned with `RunStarted.layers` (NaN where unknown)."""

    kind: ClassVar[str] = "LayerStats"
    grad_norm: array = field(default_factory=lambda: array("f"))
    weight_norm: array = field(default_factory=lambda: array("f"))
    # ||lr * update|| / ||weight||: about 1e-3 when the learning rate is sane
    update_ratio: array = field(default_factory=lambda: array("f"))

    def __post_init__(self) -> None:
        for name in ("grad_norm", "weight_norm", "update_ratio"):
            object.__setattr__(self, name, _f32(getattr(self, name)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Epoch(Event):
    """End-of-epoch metrics; validation fields are None when there is no validation split."""

    kind: ClassVar[str] = "Epoch"
    epoch: int
    train_loss: float | None = None
    train_acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    scalars: Mapping[str, float] = field(default_factory=dict)
    # the validation's counts, row = true class, column = predicted, K x K row-major (empty: not counted)
    confusion: array = field(default_factory=lambda: array("f"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "confusion", _f32(self.confusion))


@dataclass(frozen=True, slots=True, kw_only=True)
class Activation(Event):
    """Activation maps of one layer for one fixed sample, float16, C-order, of `shape`."""

    kind: ClassVar[str] = "Activation"
    layer: str  # module name, or "input" for the image itself
    sample: int  # index of the validation sample the maps belong to
    shape: tuple[int, ...]  # (channels, height, width)
    data: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "data", bytes(self.data))


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture(Event):
    """What the model made of a few fixed validation images: their classes, its probabilities, and Grad-CAM on its
    last conv layer; each layer's maps follow as `Maps` events of the same step."""

    kind: ClassVar[str] = "Capture"
    images: tuple[int, ...]  # indices in the validation split
    labels: tuple[int, ...]  # their true classes (-1: unknown)
    probs: array = field(default_factory=lambda: array("f"))  # [N, K] row-major: the model's softmax
    layers: tuple[str, ...] = ()  # the captured layers, in the model's order ("input" first)
    budget: int = 0  # bytes of maps the capture was fitted to
    cam_layer: str = ""  # the layer Grad-CAM was taken on ("": none)
    cam_shape: tuple[int, ...] = ()  # (2, N, H, W): for the predicted class, then for the true class
    cam: bytes = b""  # uint8, each map scaled to its own maximum

    def __post_init__(self) -> None:
        for name in ("images", "labels", "layers", "cam_shape"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "probs", _f32(self.probs))
        object.__setattr__(self, "cam", bytes(self.cam))


@dataclass(frozen=True, slots=True, kw_only=True)
class Maps(Event):
    """One layer's output maps for a capture's images, one byte a value: value = lo + q / 255 * (hi - lo) per
    channel (a channel whose lo is NaN had a NaN). The first `shape[1]` of the layer's `channels`, average-pooled
    from `size` to `shape[2:]` when the capture's budget asked for it."""

    kind: ClassVar[str] = "Maps"
    layer: str  # module name, or "input" for the images themselves
    shape: tuple[int, ...]  # (images, channels, height, width) kept
    channels: int  # the layer's own channel count
    size: tuple[int, ...]  # the layer's own (height, width)
    block: bool = False  # a block's output (a residual block, an Inception module), not a conv's
    lo: array = field(default_factory=lambda: array("f"))
    hi: array = field(default_factory=lambda: array("f"))
    data: bytes = b""  # uint8 [images, channels, height, width], C-order
    dead: bytes = b""  # one byte per channel of the layer, 1 where it is zero on every image after its ReLU

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))
        object.__setattr__(self, "lo", _f32(self.lo))
        object.__setattr__(self, "hi", _f32(self.hi))
        object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "dead", bytes(self.dead))


@dataclass(frozen=True, slots=True, kw_only=True)
class Visualized(Event):
    """What a layer's filters respond to: for each, the input that maximises its mean activation, found by gradient
    ascent from noise (`mirante visualize`), each image scaled to its own range, one byte a value."""

    kind: ClassVar[str] = "Visualized"
    layer: str
    filters: tuple[int, ...]  # the layer's output channels drawn, in order
    shape: tuple[int, ...]  # (filters, channels, height, width)
    data: bytes = b""  # uint8, C-order
    score: array = field(default_factory=lambda: array("f"))  # each filter's mean activation at the end
    steps: int = 0  # gradient-ascent steps taken
    checkpoint_step: int = 0  # the training step of the weights used

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(int(n) for n in self.filters))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "score", _f32(self.score))


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters(Event):
    """Weights of one conv layer, float16, C-order, of `shape` (out, in, kh, kw)."""

    kind: ClassVar[str] = "Filters"
    layer: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "data", bytes(self.data))


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostic(Event):
    """A check changed state: what it saw, in one sentence, and the numbers behind it."""

    kind: ClassVar[str] = "Diagnostic"
    level: str  # ok, warn or fail
    code: str  # stable identifier, e.g. "initial-loss"
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class System(Event):
    """Memory and utilisation of one process (rank) and its device."""

    kind: ClassVar[str] = "System"
    rank: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnded(Event):
    """The last event of a run. A run without one is running, or crashed."""

    kind: ClassVar[str] = "RunEnded"
    status: str  # finished, failed or interrupted
    reason: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        RunStarted,
        Step,
        LayerStats,
        Epoch,
        Activation,
        Capture,
        Maps,
        Visualized,
        Filters,
        Diagnostic,
        System,
        RunEnded,
    )  # fmt: skip
}


class Sequencer:
    """Stamps event headers: consecutive `seq` from where a run left off, and the wall time."""

    def __init__(self, last_seq: int = 0, clock=time.time) -> None:
        self.last_seq = last_seq
        self._clock = clock

    def header(self, step: int) -> dict[str, Any]:
        self.last_seq += 1
        return {"seq": self.last_seq, "wall_time": self._clock(), "step": step}


# --- encoding -------------------------------------------------------------------------
#
# An encoded event is: u8 length of the kind name, the kind name (ascii), the header
# (i64 seq, i64 step, f64 wall_time), then the payload. The payload is a u32 length, a
# JSON object of the other fields, and the raw bytes of binary fields, which the JSON
# refers to as {"$bytes": [offset, length]} or {"$f32": [offset, length]}. JSON keeps
# floats exactly (repr round-trips) and Python's json writes NaN/Infinity/-0.0 as such.

_HEADER = struct.Struct("<qqd")
_LEN = struct.Struct("<I")
_warned_kinds: set[str] = set()
_warned_fields: set[tuple[str, str]] = set()


class EventDecodeError(ValueError):
    """Bytes that do not hold an event."""


def encode_payload(event: Event) -> bytes:
    """The fields of `event` other than the header, as bytes."""
    doc: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for f in fields(event):
        if f.name in ("seq", "wall_time", "step"):
            continue
        value = getattr(event, f.name)
        if isinstance(value, array):
            raw, tag = value.tobytes(), "$f32"
        elif isinstance(value, (bytes, bytearray)):
            raw, tag = bytes(value), "$bytes"
        else:
            doc[f.name] = value
            continue
        doc[f.name] = {tag: [offset, len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
    return _LEN.pack(len(text)) + text + b"".join(blobs)


def decode_payload(kind: str, seq: int, step: int, wall_time: float, payload: bytes) -> Event | None:
    """The event of `kind` with this header and payload; None (and a warning) if the kind is unknown."""
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        if kind not in _warned_kinds:
            _warned_kinds.add(kind)
            warnings.warn(f"skipping events of unknown kind {kind!r} (written by a newer mirante?)", stacklevel=2)
        return None
    try:
        (n,) = _LEN.unpack_from(payload, 0)
        doc = json.loads(payload[4 : 4 + n])
        blobs = payload[4 + n :]
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in doc.items():
            if key not in known:
                if (kind, key) not in _warned_fields:
                    _warned_fields.add((kind, key))
                    warnings.warn(f"ignoring unknown field {kind}.{key} (written by a newer mirante?)", stacklevel=2)
                continue
            if isinstance(value, dict) and len(value) == 1 and ("$bytes" in value or "$f32" in value):
                tag, (start, length) = next(iter(value.items()))
                raw = blobs[start : start + length]
                if len(raw) != length:
                    raise EventDecodeError(f"{kind}.{key}: binary field runs past the end of the payload")
                value = _f32(raw) if tag == "$f32" else raw
            kwargs[key] = value
        return cls(seq=seq, step=step, wall_time=wall_time, **kwargs)
    except EventDecodeError:
        raise
    except (ValueError, TypeError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise EventDecodeError(f"cannot decode {kind} event {seq}: {exc}") from exc


def encode(event: Event) -> bytes:
    """`event` as self-describing bytes."""
    kind = event.kind.encode("ascii")
    return bytes([len(kind)]) + kind + _HEADER.pack(event.seq, event.step, event.wall_time) + encode_payload(event)


def decode(data: bytes) -> Event | None:
    """The event `encode` made, or None (with a warning) for a kind this version does not know."""
    try:
        n = data[0]
        kind = data[1 : 1 + n].decode("ascii")
        seq, step, wall_time = _HEADER.unpack_from(data, 1 + n)
    except (IndexError, UnicodeDecodeError, struct.error) as exc:
        raise EventDecodeError(f"not an encoded event: {exc}") from exc
    return decode_payload(kind, seq, step, wall_time, data[1 + n + _HEADER.size :])


def to_json(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of `event`: binary fields as lists or base64, non-finite floats as strings.

    Standard JSON has no NaN or Infinity; they are written "NaN", "Infinity", "-Infinity".
    """
    import base64

    out: dict[str, Any] = {"kind": event.kind}
    for f in fields(event):
        value = getattr(event, f.name)
        if isinstance(value, array):
            value = [_json_float(v) for v in value]
        elif isinstance(value, (bytes, bytearray)):
            value = base64.b64encode(value).decode("ascii")
        else:
            value = _json_safe(value)
        out[f.name] = value
    return out


def _json_float(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
