"""The measurement protocol: one function, the same for every runner and device.

1. Build the runner and one synthetic batch (N(0,1) images, uniform labels) on the device.
2. ``warmup`` steps, not measured: they materialise optimizer state and settle cuDNN and the
   allocator.
3. CPU only: a short tensor-tracker pass (``tracker_steps`` steps) for peak memory and its
   breakdown, kept apart from timing so the tracker's overhead never reaches a timed step. With a
   device budget the tracker refuses to go past it, which is the CPU's out-of-memory.
4. The timed pass: ``steps`` steps, each timed by the device (CUDA events or perf_counter). On
   CUDA the allocator's peaks are reset before and read after this pass.
"""

from __future__ import annotations

import datetime as dt
import statistics
import traceback
from dataclasses import dataclass, field

import torch

from . import __version__
from .devices import Device, host_peak_rss_bytes, reset_host_peak_rss
from .grid import Cell
from .memtrack import MemoryBreakdown, TensorMemoryTracker, optimizer_state_tensors
from .runners import Runner, get_runner

DEFAULT_TRACKER_STEPS = 2


@dataclass
class CellResult:
    """One cell's measurement; carries its own configuration and provenance."""

    cell: Cell
    device: str
    device_name: str
    status: str = "ok"  # ok | oom | error | timeout | estimated
    error: str = ""
    step_ms: list[float] = field(default_factory=list)
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    host_peak_rss_bytes: int | None = None
    nvml_used_bytes: int | None = None
    memory_source: str = ""
    breakdown: MemoryBreakdown | None = None
    started_at: str = ""
    torch_threads: int = 0

    @property
    def imgs_per_s(self) -> float | None:
        """Images per second over the measured steps: batch x steps / total measured time."""
        total_s = sum(self.step_ms) / 1e3
        return self.cell.batch * len(self.step_ms) / total_s if total_s > 0 else None

    def summary_stats(self) -> dict[str, float | None]:
        if not self.step_ms:
            return dict.fromkeys(("median", "p10", "p90", "mean"))
        ordered = sorted(self.step_ms)
        if len(ordered) >= 2:
            deciles = statistics.quantiles(ordered, n=10, method="inclusive")
            p10, p90 = deciles[0], deciles[-1]
        else:
            p10 = p90 = ordered[0]
        return {"median": statistics.median(ordered), "p10": p10, "p90": p90,
                "mean": statistics.fmean(ordered)}

    def row(self) -> dict:
        """This result as one ``cells.csv`` row (see results.CELL_COLUMNS)."""
        stats = self.summary_stats()
        cell = self.cell
        row = {
            "cell_id": cell.cell_id, "method": cell.method, "arch": cell.arch, "res": cell.res,
            "batch": cell.batch, "micro_batch": cell.micro_batch, "classes": cell.classes,
            "seed": cell.seed, "device": self.device, "device_name": self.device_name,
            "device_mem_bytes": cell.device_mem_bytes, "status": self.status, "error": self.error,
            "warmup": cell.warmup, "steps": cell.steps,
            "step_ms_median": stats["median"], "step_ms_p10": stats["p10"],
            "step_ms_p90": stats["p90"], "step_ms_mean": stats["mean"],
            "imgs_per_s": self.imgs_per_s,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "host_peak_rss_bytes": self.host_peak_rss_bytes,
            "nvml_used_bytes": self.nvml_used_bytes,
            "memory_source": self.memory_source,
            "torch_version": torch.__version__, "membench_version": __version__,
            "torch_threads": self.torch_threads, "started_at": self.started_at,
        }
        breakdown = self.breakdown.as_columns() if self.breakdown else {}
        for column in ("parameters_bytes", "gradients_bytes", "optimizer_state_bytes", "activations_bytes"):
            row[column] = breakdown.get(column)
        return row


def make_batch(cell: Cell, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The protocol's one synthetic batch, made once on the device before timing."""
    generator = torch.Generator().manual_seed(cell.seed)
    images = torch.randn(cell.batch, 3, cell.res, cell.res, generator=generator)
    labels = torch.randint(0, cell.classes, (cell.batch,), generator=generator)
    return images.to(device), labels.to(device)


def build_runner(cell: Cell, device: torch.device | str) -> Runner:
    """The cell's runner, built with the cell's seed and a schedule as long as the cell.

    The schedule covers warmup, the CPU's tracker pass and the measured steps, so no measured
    step runs past the cosine's end (where CosineAnnealingLR would climb back up).
    """
    runner_cls = get_runner(cell.method)
    return runner_cls(
        cell.arch, cell.res, cell.classes, device, seed=cell.seed,
        total_steps=cell.warmup + DEFAULT_TRACKER_STEPS + cell.steps, micro_batch=cell.micro_batch,
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


def run_cell(cell: Cell, device: Device, tracker_steps: int = DEFAULT_TRACKER_STEPS) -> CellResult:
    """Measure one cell under the protocol. OOM and runner errors become the result's status."""
    result = CellResult(
        cell, str(device), device.name(), torch_threads=torch.get_num_threads(),
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    try:
        if cell.device_mem_bytes is not None:
            device.set_memory_budget(cell.device_mem_bytes)
        runner = build_runner(cell, device.torch_device)
        images, labels = make_batch(cell, device.torch_device)

        def one_step() -> None:
            runner.step(images, labels)

        for _ in range(cell.warmup):
            one_step()
        device.synchronize()

        reset_host_peak_rss()
        if device.needs_tracker_pass:
            tracker = tracked_peak(
                runner, images, labels, max(1, min(tracker_steps, cell.steps)),
                TensorMemoryTracker(budget_bytes=cell.device_mem_bytes),
            )
            result.peak_allocated_bytes = tracker.peak_bytes
            result.breakdown = tracker.peak_breakdown()
            result.memory_source = "tracker"
        device.reset_peak_memory()

        result.step_ms = device.time_steps(one_step, cell.steps)

        allocator = device.read_peak_memory()
        if allocator is not None:
            result.peak_allocated_bytes = allocator.peak_allocated_bytes
            result.peak_reserved_bytes = allocator.peak_reserved_bytes
            result.nvml_used_bytes = allocator.nvml_used_bytes
            result.memory_source = allocator.source
        result.host_peak_rss_bytes = host_peak_rss_bytes()
    except Exception as err:  # an OOM or a runner bug must become a row, not end the sweep
        if is_out_of_memory(err):
            result.status, result.error = "oom", _one_line(err)
        else:
            result.status, result.error = "error", _one_line(err) + " | " + _where(err)
    return result


# cuBLAS and cuDNN report a failed allocation as a plain RuntimeError with their status name.
_OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` means the device (or the emulated budget) ran out of memory."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MESSAGES)


def _one_line(err: BaseException, limit: int = 800) -> str:
    """The error on one line; a long one keeps its head and its tail, where CUDA's OOM message
    says how much was allowed and allocated."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= limit else f"{text[: limit // 2]} ... {text[-(limit // 2 - 5):]}"


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    return f"at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
