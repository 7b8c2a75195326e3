"""The measurement protocol: one function, the same for every runner and device.

1. Build the runner and one synthetic batch (N(0,1) images, uniform labels) on the device.
2. ``warmup`` steps, not measured: they materialise optimizer state and settle cuDNN and the
   allocator. The last one runs under ``FlopCounterMode``: the step's FLOPs.
3. CPU only: a short tensor-tracker pass (``tracker_steps`` steps) for peak memory and its
   breakdown, kept apart from timing so the tracker's overhead never reaches a timed step. With a
   device budget the tracker refuses to go past it, which is the CPU's out-of-memory.
4. The timed pass: ``steps`` steps, each timed by the device (CUDA events or perf_counter). On
   CUDA the allocator's peaks are reset before and read after this pass.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import __version__
from .devices import Device, host_peak_rss_bytes, reset_host_peak_rss
from .errors import error_text, one_line
from .memtrack import TensorMemoryTracker, optimizer_state_tensors
from .runners import Runner, get_runner
from .schema import ERROR, OOM, Cell, CellResult

DEFAULT_TRACKER_STEPS = 2
# memory_source of a compiled cell on the CPU: its peak is left empty (see run_cell).
UNTRACKED_COMPILED = "none (compiled: the tracker cannot see compiled buffers)"


def provenance() -> dict:
    """What every result records about the software that produced it."""
    return {"torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "membench_version": __version__}


def new_result(cell: Cell, device: str, device_name: str, **values) -> CellResult:
    """A result for ``cell`` started now, with this process's provenance."""
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return CellResult(cell, device, device_name, started_at=started_at, **provenance(), **values)


def make_batch(cell: Cell, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The protocol's one synthetic batch, made once on the device before timing."""
    generator = torch.Generator().manual_seed(cell.seed)
    images = torch.randn(cell.batch, 3, cell.res, cell.res, generator=generator)
    labels = torch.randint(0, cell.classes, (cell.batch,), generator=generator)
    images = images.to(device)
    if cell.memory_format == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device)


def build_runner(cell: Cell, device: torch.device | str) -> Runner:
    """The cell's runner, built with the cell's seed and a schedule as long as the cell.

    The schedule covers warmup, the CPU's tracker pass and the measured steps, so no measured
    step runs past the cosine's end (where CosineAnnealingLR would climb back up).
    """
    runner_cls = get_runner(cell.method)
    return runner_cls(
        cell.arch, cell.res, cell.classes, device, seed=cell.seed,
        total_steps=cell.warmup + DEFAULT_TRACKER_STEPS + cell.steps, micro_batch=cell.micro_batch,
        precision=cell.precision, memory_format=cell.memory_format, compile=cell.compile,
    )


def tracked_peak(
    runner: Runner,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    tracker: TensorMemoryTracker,
) -> TensorMemoryTracker:
    """Run ``steps`` steps under ``tracker``, counting what was already live from the start."""
    tracker.add_existing("parameters", runner.parameters())
    tracker.add_existing("parameters", runner.buffers())
    tracker.add_existing("gradients", [p.grad for p in runner.parameters() if p.grad is not None])
    for optimizer in runner.optimizers():
        tracker.add_existing("optimizer_state", optimizer_state_tensors(optimizer))
    tracker.add_existing("activations", [images, labels])
    tracker.reset_peak()
    with tracker, tracker.watch_gradients(runner.parameters()):
        for _ in range(steps):
            runner.step(images, labels)
    return tracker


@dataclass
class PreparedCell:
    """A cell ready to time: its runner and batch on the device, warmup done."""

    cell: Cell
    device: Device
    runner: Runner
    images: torch.Tensor
    labels: torch.Tensor
    first_step_s: float | None = None  # the first warmup step: where torch.compile compiles

    def step(self) -> None:
        """One training step of the cell (no synchronisation: the device times it)."""
        self.runner.step(self.images, self.labels)

    def tracked_memory(self, steps: int = DEFAULT_TRACKER_STEPS) -> TensorMemoryTracker:
        """The tracker pass (the CPU's peak memory), kept apart from any timed step. With a
        budget the tracker refuses to pass it (MemoryBudgetExceeded, an OOM)."""
        return tracked_peak(self.runner, self.images, self.labels,
                            max(1, min(steps, self.cell.steps)),
                            TensorMemoryTracker(budget_bytes=self.cell.device_mem_bytes))


def prepare_cell(cell: Cell, device: Device,
                 flop_counter: FlopCounterMode | None = None) -> PreparedCell:
    """Steps 1 and 2 of the protocol: the budget, the runner and batch on the device, warmup.
    A ``flop_counter`` counts the last warmup step: a step's FLOPs depend on shapes only, and
    no warmup step is measured (the counter's bookkeeping must not reach a measured one)."""
    if cell.device_mem_bytes is not None:
        device.set_memory_budget(cell.device_mem_bytes)
    runner = build_runner(cell, device.torch_device)
    images, labels = make_batch(cell, device.torch_device)
    prepared = PreparedCell(cell, device, runner, images, labels)
    for index in range(cell.warmup):
        counting = flop_counter is not None and index == cell.warmup - 1
        start = time.perf_counter()
        with flop_counter if counting else contextlib.nullcontext():
            prepared.step()
        if index == 0:
            device.synchronize()
            prepared.first_step_s = time.perf_counter() - start
    device.synchronize()
    return prepared


def run_cell(cell: Cell, device: Device, tracker_steps: int = DEFAULT_TRACKER_STEPS,
             count_flops: bool = True) -> CellResult:
    """Measure one cell under the protocol. OOM and runner errors become the result's status.
    ``count_flops=False`` leaves ``flops_per_step`` empty (to measure what counting costs)."""
    result = new_result(cell, str(device), device.name())
    try:
        compiled = cell.compile != "none"
        # Compiled code is counted on fake tensors instead (membench.flops).
        counter = FlopCounterMode(display=False) if count_flops and not compiled else None
        prepared = prepare_cell(cell, device, counter)
        if counter is not None and cell.warmup:
            result.flops_per_step = int(counter.get_total_flops())
        if compiled:
            result.compile_s = prepared.first_step_s
        reset_host_peak_rss()
        if device.needs_tracker_pass and compiled:
            # Compiled kernels allocate their buffers outside the dispatcher, where the tracker
            # cannot see them: no peak rather than a wrong one.
            result.memory_source = UNTRACKED_COMPILED
        elif device.needs_tracker_pass:
            tracker = prepared.tracked_memory(tracker_steps)
            result.peak_allocated_bytes = tracker.peak_bytes
            result.breakdown = tracker.peak_breakdown()
            result.memory_source = "tracker"
        device.reset_peak_memory()

        result.step_ms = device.time_steps(prepared.step, cell.steps)

        allocator = device.read_peak_memory()
        if allocator is not None:
            result.peak_allocated_bytes = allocator.peak_allocated_bytes
            result.peak_reserved_bytes = allocator.peak_reserved_bytes
            result.nvml_used_bytes = allocator.nvml_used_bytes
            result.memory_source = allocator.source
        result.host_peak_rss_bytes = host_peak_rss_bytes()
        result.offloaded_bytes = getattr(prepared.runner, "offloaded_peak_bytes", None)
    except Exception as err:  # an OOM or a runner bug must become a row, not end the sweep
        if is_out_of_memory(err):
            result.status, result.error = OOM, one_line(err)
        else:
            result.status, result.error = ERROR, error_text(err)
    return result


# cuBLAS and cuDNN report a failed allocation as a plain RuntimeError with their status name.
_OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` means the device (or the emulated budget) ran out of memory."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MESSAGES)
