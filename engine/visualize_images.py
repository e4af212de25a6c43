"""A `Visualized` event's images as numbers, without torch (the UI draws them)."""

from __future__ import annotations

import numpy as np

from engine import events as ev


def images_of(event: ev.Visualized) -> np.ndarray:
    """The event's images as float32 [F, C, H, W] in 0..1 (empty when its data does not match its shape)."""
    data = np.frombuffer(event.data, dtype=np.uint8)
    if len(event.shape) != 4 or data.size != int(np.prod(event.shape)):
        return np.zeros((0, 0, 0, 0), np.float32)
    return data.reshape(event.shape).astype(np.float32) / 255
