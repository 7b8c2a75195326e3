"""The one narrow device interface: what a cell runs inside, how its steps are timed and where
its peak memory comes from, per kind of device.

What the protocol does differently per device lives here (the devices an estimate plans for are
``membench.planning.estimate``'s, a rank's ``membench.multidevice.rank_device``'s); other CUDA
code sits with the feature that needs it (pinned host copies in the runners, NCCL and CUDA
events across devices, the datasheet peaks). ``CpuDevice`` times with ``perf_counter`` and has
no allocator statistics, so its peak comes from the tensor tracker's pass, which also enforces a
budget; ``CudaDevice`` times with CUDA events and reads the caching allocator's peaks and NVML,
following PyTorch's documented APIs only.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from ..errors import InputError, error_text
from ..schema import OK, Cell, CellResult, DeviceSpecError, parse_device
from .memtrack import TensorMemoryTracker

if TYPE_CHECKING:  # annotations only: the registry imports every runner
    from ..runners import Runner
    from ..timeline.events import Timeline


class DeviceError(InputError):
    """A device string that names no usable device."""


class Device:
    """What the protocol (``membench.measure.protocol``) needs from a device, and nothing more.
    The defaults are a real device's; subclasses override what differs."""

    kind: str = ""
    memory_source = "tracker"  # where a tracker pass's peak comes from, in a row
    finished_status = OK  # a cell that ran to the end

    def __init__(self, torch_device: torch.device):
        self.torch_device = torch_device

    def __str__(self) -> str:
        return str(self.torch_device)

    def name(self) -> str:
        """Human-readable hardware name (GPU model or CPU model)."""
        raise NotImplementedError

    # -- what a cell runs in -------------------------------------------------------------------
    def refusal(self, cell: Cell) -> str | None:
        """Why this device cannot measure ``cell`` at all (the row's error), or None."""
        return None

    def session(self) -> contextlib.AbstractContextManager:
        """The context every step of a cell runs in (nothing, for a real device)."""
        return contextlib.nullcontext()

    def adapt(self, runner: Runner) -> None:
        """Adjust a freshly built runner to this device (nothing, for a real device)."""

    def warmup_steps(self, cell: Cell) -> int:
        return cell.warmup

    def error_text(self, err: BaseException) -> str:
        """What a row's ``error`` says about an exception raised while measuring."""
        return error_text(err)

    # -- memory ---------------------------------------------------------------------------------
    def memory_tracker(self, cell: Cell) -> TensorMemoryTracker | None:
        """The tensor tracker of the memory pass, or None where the allocator has the peaks."""
        return None

    def set_memory_budget(self, budget_bytes: int | None) -> None:
        """Emulate a device with only ``budget_bytes`` of memory, or lift the cap (None)."""

    def check_budget(self, result: CellResult) -> None:
        """Make a finished result over its budget an oom row, where nothing refused it earlier
        (nothing, for a device that refuses the allocation itself)."""

    def reset_host_peak(self) -> None:
        reset_host_peak_rss()

    def reset_peak_memory(self) -> None:
        """Reset the allocator's peak statistics before the timed pass."""

    def record_peaks(self, result: CellResult) -> None:
        """Peaks of the timed pass into ``result``: the host's RSS, and the allocator's."""
        result.host_peak_rss_bytes = host_peak_rss_bytes()

    def total_memory_bytes(self) -> int | None:
        return None

    def release_cached_memory(self) -> None:
        """Give memory cached by the device's allocator back, between cells."""

    def record_timeline(self, prepared, snapshot: bool = False) -> Timeline | None:
        """One more step of ``prepared`` (a ``protocol.PreparedCell``), its memory recorded over
        time (docs/timeline.md, "Recording one step"): here, from the tensor tracker's own events
        (None where the device has no tracker, or for a compiled cell, whose buffers the
        tracker cannot see).
        ``snapshot``: record the Python stacks a snapshot pickle shows."""
        tracker = self.memory_tracker(prepared.cell)
        if tracker is None or prepared.cell.compile != "none":
            return None
        from ..timeline.phases import record_tracked_step

        return record_tracked_step(prepared, tracker, self.memory_source, frames=snapshot)

    # -- time -----------------------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for the device's queued work (nothing, for a synchronous device)."""

    def time_steps(self, step: Callable[[], object], count: int) -> list[float]:
        """Run ``step`` ``count`` times; return each step's time in milliseconds."""
        times = []
        for _ in range(count):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return times

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
    """The CPU: ``perf_counter`` timing; peak memory and budgets from the tensor tracker."""

    kind = "cpu"

    def __init__(self):
        super().__init__(torch.device("cpu"))

    def name(self) -> str:
        return cpu_model_name()

    def memory_tracker(self, cell: Cell) -> TensorMemoryTracker:
        # The tracker enforces the budget: the allocation that would pass it is the CPU's OOM.
        return TensorMemoryTracker(budget_bytes=cell.device_mem_bytes)


class CudaDevice(Device):
    """One CUDA device: CUDA-event timing, the caching allocator's peaks, NVML."""

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

    def record_peaks(self, result: CellResult) -> None:
        self.synchronize()
        super().record_peaks(result)
        result.peak_allocated_bytes = torch.cuda.max_memory_allocated(self.index)
        result.peak_reserved_bytes = torch.cuda.max_memory_reserved(self.index)
        result.nvml_used_bytes = nvml_used_bytes(self.index)
        result.memory_source = "cuda_allocator"

    def set_memory_budget(self, budget_bytes: int | None) -> None:
        # The fraction caps what the caching allocator may reserve; the CUDA context and library
        # handles live outside it (docs/sweeps.md says what that means for emulating a card).
        total = self.total_memory_bytes()
        if budget_bytes is None:
            torch.cuda.set_per_process_memory_fraction(1.0, self.index)
            return
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

    def record_timeline(self, prepared, snapshot: bool = False) -> Timeline:
        """The allocator's own history of one more step: ``_record_memory_history`` around it
        (Python stacks only with ``snapshot``), ``_snapshot()`` once it has run, recording
        stopped whatever happens; phases from hooks, placed by the history's clock."""
        from ..timeline.phases import PhaseMarks, PhaseTracker, storage_categories
        from ..timeline.snapshot import timeline_from_cuda

        before = storage_categories(prepared.live_tensors())
        phases = PhaseTracker(prepared.runner)
        torch.cuda.memory._record_memory_history(
            "all", context="all" if snapshot else None, stacks="python", clear_history=True
        )
        try:
            with phases, PhaseMarks(phases) as marks:
                prepared.step()
            self.synchronize()
            history = torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
        after = storage_categories(prepared.live_tensors())
        return timeline_from_cuda(
            history, self.index, (before, after), marks.marks, phases.phases, keep_snapshot=snapshot
        )

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
        raise DeviceError(
            f"device {spec!r} asked for, but CUDA is not available here; valid: auto, cpu"
        )
    index = index or 0
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {spec!r} does not exist; this machine has {torch.cuda.device_count()} CUDA "
            "device(s)"
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
