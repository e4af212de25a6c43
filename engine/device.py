"""The device a run or a profile uses: which one, at what precision, its name, and its peak for MFU.

One place for these facts, so that the trainer, the Monitor and the profiler agree and none
of them imports another to learn them.
"""

from __future__ import annotations

import platform
from typing import Any

import torch

from engine.config import ConfigError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Precision names and the autocast dtype each means (None: plain fp32)."""

# Dense peak TFLOP/s per GPU from the vendors' datasheets, by autocast dtype. "fp32" is TF32
# on the tensor cores where the GPU has them: PyTorch runs fp32 convolutions that way by default.
# Matched against the device name, longest key first ("H100 PCIe" before "H100").
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "fp32": 183.0},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6},
    "RTX 3090": {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA, then MPS, then the CPU), or the device named; ConfigError if it is not here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (try --device cpu)")
    if name == "mps" and not _mps():
        raise ConfigError("--device mps: no MPS device is available here (try --device cpu)")
    return torch.device(name)


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32; `auto` is bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (use bf16 or fp32)")
    return PRECISIONS[precision]


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """ "fp32", "bf16" or "fp16": the name of an autocast dtype (None: fp32)."""
    return next(name for name, dtype in PRECISIONS.items() if dtype == amp_dtype)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """What a run records about its device: type, name, host, threads (and memory and count on CUDA)."""
    info: dict[str, Any] = {"type": device.type, "host": platform.node(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"memory_gb": round(props.total_memory / 2**30, 1), "count": 1}
    return info | {"name": device_name(device)}


def peak_tflops(name: str, dtype: str) -> float | None:
    """A device's dense peak for `dtype` ("bf16", "fp16", "fp32") by its name, or None if unknown."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_TFLOPS[key].get(dtype)
    return None


def device_peak(device: torch.device, amp_dtype: torch.dtype | None) -> float | None:
    """The GPU's dense peak TFLOP/s for the dtype in use; None off CUDA or for a GPU not in the table."""
    if device.type != "cuda":
        return None
    return peak_tflops(device_name(device), precision_name(amp_dtype))


def mfu(train_flops_per_sample: int, samples_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: training FLOPs per second over the peak (in TFLOP/s)."""
    if not peak:
        return None
    return train_flops_per_sample * samples_per_s / (peak * 1e12)
