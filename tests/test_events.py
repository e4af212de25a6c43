"""The event contract: every kind round-trips exactly; unknown kinds and fields are skipped."""

from __future__ import annotations

import dataclasses
import math
import struct
from array import array

import pytest

from engine import events as ev
from tests.runs import SPECIAL, bits, make_events

HEADER = {"seq": 7, "wall_time": 1_700_000_000.123456, "step": 42}


def one_of_each() -> list[ev.Event]:
    maps = struct.pack("<6e", math.nan, math.inf, -math.inf, -0.0, 1.5, 0.0)
    return [
        ev.RunStarted(
            **HEADER,
            name="r",
            model="resnet18",
            dataset="shapes",
            config={"lr": 0.1, "special": list(SPECIAL), "nested": {"a": [1, 2]}},
            model_summary={"params": 11_689_512, "macs": 1.8e9},
            layers=("conv1", "fc"),
            classes=("cat", "dog"),
            device={"type": "cuda", "name": "H100"},
            versions={"torch": "2.4"},
        ),
        ev.Step(**HEADER, scalars={"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "-0": -0.0, "x": 0.1}),
        ev.LayerStats(**HEADER, grad_norm=SPECIAL, weight_norm=[1.0, 2.0], update_ratio=[-0.0, math.nan]),
        ev.Epoch(
            **HEADER,
            epoch=3,
            train_loss=math.nan,
            train_acc=-0.0,
            val_loss=math.inf,
            val_acc=None,
            confusion=[3.0, 1.0, 0.0, 4.0],
        ),  # fmt: skip
        ev.Activation(**HEADER, layer="conv1", sample=5, shape=(1, 2, 3), data=maps),
        ev.Capture(
            **HEADER,
            images=(4, 9),
            labels=(1, -1),
            probs=[0.25, 0.75, math.nan, 1.0],
            layers=("input", "c"),
            budget=1024,
            cam_layer="c",
            cam_shape=(2, 2, 1, 1),
            cam=bytes([0, 255, 7, 9]),
        ),  # fmt: skip
        ev.Maps(
            **HEADER,
            layer="c",
            shape=(2, 1, 1, 2),
            channels=4,
            size=(2, 4),
            block=True,
            lo=[math.nan],
            hi=[math.inf],
            data=bytes([0, 1, 254, 255]),
            dead=bytes([0, 1, 0, 0]),
        ),
        ev.Visualized(
            **HEADER,
            layer="c",
            filters=(3, 1),
            shape=(2, 1, 1, 2),
            data=bytes([0, 9, 99, 255]),
            score=[math.inf, -0.0],
            steps=256,
            checkpoint_step=41,
        ),
        ev.Filters(**HEADER, layer="conv1", shape=(1, 1, 2, 3), data=maps),
        ev.Diagnostic(**HEADER, level="fail", code="divergence", message="loss is NaN", evidence={"loss": math.nan}),
        ev.System(**HEADER, rank=1, metrics={"gpu/mem_gb": -math.inf, "gpu/util": -0.0}),
        ev.RunEnded(**HEADER, status="failed", reason="loss became NaN"),
    ]


def float_bits(value):
    """Every float inside `value`, as its exact bit pattern, structure kept."""
    if isinstance(value, float):
        return ("f", bits(value))
    if isinstance(value, array):
        return ("a", value.typecode, value.tobytes())
    if isinstance(value, dict):
        return {k: float_bits(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [float_bits(v) for v in value]
    return value


def test_every_kind_has_a_case():
    assert {type(e) for e in one_of_each()} == set(ev.EVENT_TYPES.values())


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: e.kind)
def test_round_trip_is_exact(event):
    back = ev.decode(ev.encode(event))
    assert type(back) is type(event)
    for f in dataclasses.fields(event):
        assert float_bits(getattr(back, f.name)) == float_bits(getattr(event, f.name)), f.name


def test_special_floats_survive_by_bit_pattern():
    step = ev.decode(ev.encode(one_of_each()[1]))
    assert math.isnan(step.scalars["nan"])
    assert step.scalars["inf"] == math.inf and step.scalars["-inf"] == -math.inf
    assert math.copysign(1.0, step.scalars["-0"]) == -1.0
    assert step.scalars["x"] == 0.1  # full double precision, not float32
    stats = ev.decode(ev.encode(one_of_each()[2]))
    assert math.isnan(stats.grad_norm[0]) and stats.grad_norm[1] == math.inf and stats.grad_norm[2] == -math.inf
    assert struct.pack("<f", stats.grad_norm[3]) == struct.pack("<f", -0.0)


def test_events_are_frozen_and_slotted():
    step = one_of_each()[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.step = 1
    assert not hasattr(step, "__dict__")


def test_layer_stats_take_numpy_float32_buffers():
    np = pytest.importorskip("numpy")
    v = np.array([1.5, np.nan, -0.0], dtype=np.float32)
    stats = ev.LayerStats(**HEADER, grad_norm=v, weight_norm=v, update_ratio=v)
    assert stats.grad_norm.tobytes() == v.tobytes()


def test_unknown_kind_is_skipped_with_a_warning():
    data = ev.encode(one_of_each()[1]).replace(b"\x04Step", b"\x04Jump", 1)
    with pytest.warns(UserWarning, match="unknown kind 'Jump'"):
        assert ev.decode(data) is None


def test_unknown_field_from_a_newer_writer_is_ignored():
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class NewerRunEnded(ev.Event):
        kind = "RunEnded"
        status: str
        reason: str = ""
        exit_code: int = 3  # a field this version does not know

    data = ev.encode(NewerRunEnded(**HEADER, status="failed", reason="oom"))
    with pytest.warns(UserWarning, match="RunEnded.exit_code"):
        back = ev.decode(data)
    assert back == ev.RunEnded(**HEADER, status="failed", reason="oom")


def test_garbage_is_a_decode_error_not_a_crash():
    for data in (b"", b"\x04Step", b"\x04Step" + b"\x00" * 24 + b"\xff\xff\xff\xff{"):
        with pytest.raises(ev.EventDecodeError):
            ev.decode(data)


def test_sequencer_numbers_without_gaps():
    seq = ev.Sequencer(last_seq=10, clock=lambda: 5.0)
    assert seq.header(3) == {"seq": 11, "wall_time": 5.0, "step": 3}
    assert seq.header(4)["seq"] == 12


def test_to_json_is_standard_json():
    import json

    for event in make_events(steps=200):
        json.dumps(ev.to_json(event), allow_nan=False)
    doc = ev.to_json(one_of_each()[1])
    assert doc["scalars"] == {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "-0": -0.0, "x": 0.1}
