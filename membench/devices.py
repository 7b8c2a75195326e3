"""The one narrow device interface: timing a step and reading peak memory, per device kind.

Everything device-specific in membench lives here. ``CpuDevice`` times with ``perf_counter`` and
has no allocator statistics (the protocol runs the tensor tracker instead); ``CudaDevice`` times
with CUDA events and reads the caching allocator's peaks and NVML, following PyTorch's documented
APIs only.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .errors import InputError
from .schema import DeviceSpecError, parse_device


class DeviceError(InputError):
    """A device string that names no usable device."""


@dataclass
class AllocatorPeak:
    """Peak figures read from a device allocator after the measured steps."""

    peak_allocated_bytes: int
    peak_reserved_bytes: int
    nvml_used_bytes: int | None
    source: str = "cuda_allocator"


class Device(ABC):
    """What the protocol needs from a device, and nothing more."""

    kind: str
    # True where the device has no allocator statistics and peak memory must come from the
    # tensor tracker's separate pass (see protocol.run_cell).
    needs_tracker_pass: bool = False

    def __init__(self, torch_device: torch.device):
        self.torch_device = torch_device

    def __str__(self) -> str:
        return str(self.torch_device)

    @abstractmethod
    def name(self) -> str:
        """Human-readable hardware name (GPU model or CPU model)."""

    @abstractmethod
    def synchronize(self) -> None: ...

    @abstractmethod
    def time_steps(self, step: Callable[[], object], count: int) -> list[float]:
        """Run ``step`` ``count`` times; return each step's time in milliseconds."""

    @abstractmethod
    def reset_peak_memory(self) -> None: ...

    @abstractmethod
    def read_peak_memory(self) -> AllocatorPeak | None:
        """Allocator peaks since the last reset, or None where the device has no allocator stats."""

    @abstractmethod
    def set_memory_budget(self, budget_bytes: int) -> None:
        """Emulate a device with only ``budget_bytes`` of memory (enforced where possible)."""

    def total_memory_bytes(self) -> int | None:
        return None

    def release_cached_memory(self) -> None:
        """Give memory cached by the device's allocator back, between cells (no-op by default)."""

    def autocast_precisions(self) -> tuple[str, ...]:
        """The precisions a cell can run at here: fp32, and what torch can autocast to."""
        if not torch.amp.is_autocast_available(self.torch_device.type):
            return ("fp32",)
        return ("fp32", "bf16", "fp16")


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CpuDevice(Device):
    kind = "cpu"
    needs_tracker_pass = True

    def __init__(self):
        super().__init__(torch.device("cpu"))

    def name(self) -> str:
        return cpu_model_name()

    def synchronize(self) -> None:
        pass

    def time_steps(self, step, count):
        times = []
        for _ in range(count):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    def reset_peak_memory(self) -> None:
        pass

    def read_peak_memory(self) -> None:
        return None

    def set_memory_budget(self, budget_bytes: int) -> None:
        # Enforced by the tensor tracker's pass (see protocol.run_cell), not by an allocator.
        pass


class CudaDevice(Device):
    kind = "cuda"

    def __init__(self, index: int):
        super().__init__(torch.device("cuda", index))
        self.index = index

    def name(self) -> str:
        return torch.cuda.get_device_name(self.index)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.index)

    def time_steps(self, step, count):
        # One event pair per step, read only after a final synchronize, so timing adds no
        # host-device sync inside the measured loop.
        # Record on this device's current stream (the one the step's kernels go to), not on
        # whichever device happens to be current.
        stream = torch.cuda.current_stream(self.index)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(count)
        ]
        for start, end in events:
            start.record(stream)
            step()
            end.record(stream)
        self.synchronize()
        return [start.elapsed_time(end) for start, end in events]

    def reset_peak_memory(self) -> None:
        self.synchronize()
        torch.cuda.reset_peak_memory_stats(self.index)

    def read_peak_memory(self) -> AllocatorPeak:
        self.synchronize()
        return AllocatorPeak(
            peak_allocated_bytes=torch.cuda.max_memory_allocated(self.index),
            peak_reserved_bytes=torch.cuda.max_memory_reserved(self.index),
            nvml_used_bytes=nvml_used_bytes(self.index),
        )

    def set_memory_budget(self, budget_bytes: int) -> None:
        # The fraction caps what the caching allocator may reserve; the CUDA context and library
        # handles live outside it (docs/sweeps.md says what that means for emulating a card).
        total = self.total_memory_bytes()
        if budget_bytes > total:
            raise DeviceError(
                f"--device-mem {budget_bytes / 2**30:.2f} GiB is more than this card's "
                f"{total / 2**30:.2f} GiB; a budget can only emulate a smaller card"
            )
        torch.cuda.set_per_process_memory_fraction(budget_bytes / total, self.index)

    def total_memory_bytes(self) -> int:
        return torch.cuda.get_device_properties(self.index).total_memory

    def release_cached_memory(self) -> None:
        torch.cuda.empty_cache()

    def autocast_precisions(self) -> tuple[str, ...]:
        # bf16 needs native support (compute capability 8.0 or later), not emulation.
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return ("fp32", "bf16", "fp16") if bf16 else ("fp32", "fp16")


@contextlib.contextmanager
def nvml() -> Iterator[object]:
    """The initialised ``pynvml`` module for the duration of the block."""
    import pynvml

    pynvml.nvmlInit()
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def nvml_used_bytes(index: int) -> int | None:
    """Device-wide memory in use according to NVML (all processes), or None without NVML.

    The GPU is found by UUID: CUDA's device order (and CUDA_VISIBLE_DEVICES) need not match
    NVML's indices.
    """
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        with nvml() as pynvml:
            for prefix in ("GPU-", "MIG-"):  # a MIG instance has a MIG- UUID
                try:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(prefix + uuid)
                except pynvml.NVMLError:
                    continue
                return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # NVML missing or unusable: the figure is optional
        pass
    return None


def resolve_device(spec: str) -> Device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a Device; DeviceError naming the choices otherwise."""
    try:
        kind, index = parse_device(spec)
    except DeviceSpecError as err:
        raise DeviceError(str(err)) from None
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return CpuDevice()
    spec = spec.strip().lower()
    if not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} asked for, but CUDA is not available here; valid: auto, cpu")
    index = index or 0
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {spec!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return CudaDevice(index)


def reset_host_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter for this process (Linux), so the next read is fresh."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def host_peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last reset (VmHWM on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def visible_cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
