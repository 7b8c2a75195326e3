"""The CPU's achievable peak per precision: a bounded calibration of GEMM and convolution rates.

A CPU has no datasheet membench could look up, so the peak a CPU cell's MFU is held against is
*measured* (docs/measurement.md, "The CPU's peak"): the best rate of two dense probes, a square GEMM
(``torch.mm``) and a 3x3 convolution (``F.conv2d``, the op a conv net spends its FLOPs in), at
torch's current thread count. A GEMM alone is not a peak for a conv net: oneDNN's convolutions
often run faster than ``torch.mm`` at the same precision (on a CPU without native bf16 the bf16
GEMM is emulated and many times slower than the bf16 convolution), and a step that runs faster
than its "peak" gives an MFU above 100 %.

For a reduced precision (bf16, fp16) the peak is the best of its own probes and the fp32 ones:
a cell can always reach the fp32 rate by computing in fp32, so where the CPU has no native
bf16 or fp16 arithmetic the fp32 rate is the honest ceiling. ``cpu_peak`` says which probe set
the peak (``gemm-calibrated`` or ``conv-calibrated``, and the probe's precision).

Bounded on any CPU, whatever a dtype's speed: each probe starts at a small size, doubles it only
while the next size is predicted (from the last call) to fit in the time left, and repeats its
largest size until its share of the budget is spent, so a precision costs about
``CALIBRATION_SECONDS`` however slow its arithmetic. Results are kept per process, precision,
thread count and budget, so a second sweep in one process (or a second precision's fp32 route)
does not calibrate again.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .peaks import PeakSpec

GEMM_CALIBRATED, CONV_CALIBRATED = "gemm-calibrated", "conv-calibrated"
CALIBRATED_SOURCES = (GEMM_CALIBRATED, CONV_CALIBRATED)
# Seconds of calibration per precision (the GEMM and the convolution probe share them);
# MEMBENCH_CALIBRATION_S changes it (membench's own tests shorten it).
CALIBRATION_SECONDS = 2.0
CALIBRATION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CONV_BATCH, CONV_RES = 8, 32
# A probe's sizes, smallest first: GEMM side n (FLOPs x8 per step), conv channels (FLOPs x4).
GEMM_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
CONV_CHANNELS = (8, 16, 32, 64, 128, 256, 512)
REPEATS = 3  # calls at one size before trying the next

# The time the calibration sees; tests replace it (with PROBES) to emulate another CPU.
clock: Callable[[], float] = time.perf_counter
Call = Callable[[], object]


def _gemm(size: int, dtype: torch.dtype) -> tuple[Call, int]:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    return (lambda: torch.mm(a, b)), 2 * size**3


def _conv(channels: int, dtype: torch.dtype) -> tuple[Call, int]:
    x = torch.randn(CONV_BATCH, channels, CONV_RES, CONV_RES).to(dtype)
    w = torch.randn(channels, channels, 3, 3).to(dtype)
    flops = 2 * CONV_BATCH * channels * channels * 9 * CONV_RES * CONV_RES
    return (lambda: F.conv2d(x, w, padding=1)), flops


# kind -> (build(size, dtype) -> (call, FLOPs per call), sizes, FLOPs growth per size step)
PROBES: dict[str, tuple[Callable[[int, torch.dtype], tuple[Call, int]], tuple[int, ...], int]] = {
    "gemm": (_gemm, GEMM_SIZES, 8),
    "conv": (_conv, CONV_CHANNELS, 4),
}


def calibration_seconds() -> float:
    """The budget per precision: $MEMBENCH_CALIBRATION_S, else CALIBRATION_SECONDS."""
    return float(os.environ.get("MEMBENCH_CALIBRATION_S", CALIBRATION_SECONDS))


def _timed(call: Call) -> float:
    start = clock()
    call()
    return max(clock() - start, 1e-9)


def probe_rate(kind: str, precision: str, budget_s: float) -> tuple[float, float]:
    """(best FLOP/s, seconds spent) of one probe at ``precision`` within about ``budget_s``:
    start at the smallest size, move to the next only while it is predicted to fit in the time
    left, then repeat the largest size reached until the budget is spent."""
    build, sizes, growth = PROBES[kind]
    dtype = CALIBRATION_DTYPES[precision]
    start, best, last = clock(), 0.0, 0.0
    for size in sizes:
        call, flops = build(size, dtype)
        for _ in range(REPEATS):
            last = _timed(call)
            best = max(best, flops / last)
            if clock() - start + last > budget_s:
                break
        if clock() - start + last * growth > budget_s:
            break
    while clock() - start + last <= budget_s:  # what is left, at the largest size reached
        last = _timed(call)
        best = max(best, flops / last)
    return best, clock() - start


@functools.cache
def _rates(precision: str, threads: int, budget_s: float) -> dict[str, float]:
    """kind -> best FLOP/s at ``precision`` (0 where the probe cannot run), once per process,
    thread count and budget; the probes share the budget."""
    rates = {}
    for kind in PROBES:
        try:
            rates[kind] = probe_rate(kind, precision, budget_s / len(PROBES))[0]
        except RuntimeError:  # a dtype this build of torch cannot compute on the CPU
            rates[kind] = 0.0
    return rates


def cpu_peak(precision: str = "fp32", seconds: float | None = None) -> PeakSpec:
    """The achievable peak of this CPU for cells of ``precision`` (module docstring): the best
    probe at that precision or, for bf16 and fp16, at fp32; its source names the probe and its
    precision the probe's. Empty, with a note, when no probe runs at all."""
    budget = calibration_seconds() if seconds is None else seconds
    threads = torch.get_num_threads()
    routes = [precision] if precision == "fp32" else [precision, "fp32"]
    found = [
        (rate, kind, route)
        for route in routes
        for kind, rate in _rates(route, threads, budget).items()
    ]
    rate, kind, route = max(found)
    if rate <= 0:
        return PeakSpec(
            None,
            note=f"no GEMM or convolution ran at {precision} on this CPU; MFU "
            "left empty: pass --peak-tflops to set one",
        )
    return PeakSpec(rate / 1e12, f"{kind}-calibrated", route)


__all__ = [
    "CALIBRATED_SOURCES",
    "CALIBRATION_SECONDS",
    "CONV_CALIBRATED",
    "GEMM_CALIBRATED",
    "PROBES",
    "calibration_seconds",
    "cpu_peak",
    "probe_rate",
]
