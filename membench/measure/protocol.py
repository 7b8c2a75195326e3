"""The measurement protocol: one path for every cell, whatever measures it.

``run_cell(cell, device)`` is the only code that runs a cell's steps for a measurement. A
sweep's worker, ``membench run``, the pytest fixture (with its own ``timer``) and the estimator
(with an ``EstimateDevice``, whose steps run on fake tensors) all call it, so warmup, the FLOP
count, the memory pass and timing are written once (docs/measurement.md, "Measurement protocol"):

1. The budget, the runner and one synthetic batch on the device; ``warmup`` steps, not measured.
2. The memory pass, where the device has no allocator statistics (the CPU, an estimate): steps
   under the tensor tracker, apart from timing: one, or two for a runner that carries tensors
   from one step into the next (``tracked_steps``). Under a budget the CPU's tracker refuses
   to go past it, which is the CPU's out-of-memory. The FLOPs of the pass's first step are
   counted on it (``flops.FlopTally``, FlopCounterMode's formulas on the ops the tracker sees).
3. FLOPs, where the memory pass did not count them (CUDA, a compiled cell, a pass the budget cut
   short): one eager step of the cell's runner on fake tensors under ``FlopCounterMode``
   (``count_step_flops``; nothing is computed, no real step ever runs under the counter), kept
   for the other cells of the process whose FLOPs cannot differ (``flops_key``). So an
   estimate builds one runner and runs no step beyond its own.
4. The timed pass: ``steps`` steps, each timed by the device (CUDA events, ``perf_counter``); on
   CUDA the allocator's peaks are reset before and read after it. An estimate has no time.
   Around it, what else ran on the machine (``machine_load``); after it, the verdict on how
   far the times can be trusted (``membench.stability.judge``).
5. Only with ``timeline=True``: one more step, its memory recorded over time by the device
   (``Device.record_timeline``; docs/timeline.md).

Every row records how long all of it took (``wall_s``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from .. import __version__
from ..errors import one_line
from ..runners import Runner, get_runner
from ..schema import ERROR, OOM, Cell, CellResult
from ..stability import judge
from .devices import Device
from .flops import FlopTally, apply_peak, step_flops
from .machine_load import LoadWindow
from .memtrack import TensorMemoryTracker, optimizer_state_tensors
from .peaks import PeakSpec

# Steps of the memory pass for a runner that carries tensors from one step into the next (its
# first tracked step cannot see what the step before left; the second can); one otherwise.
DEFAULT_TRACKER_STEPS = 2
# Built-in runners whose step leaves nothing for the next one but what the memory pass counts
# from its start (parameters, buffers, gradients, optimizer state, the batch, a pipeline stage's
# ``held_tensors``): one tracked step has the steady state's peak. ``ff-naive`` and ``ff-pp``
# keep each layer's loss until late in the next step, so they are tracked over two, as is every
# fp16 cell (its GradScaler's scale and growth tracker are first seen when updated in place at
# the end of a step). A runner of another package says so itself
# (``carries_tensors_across_steps = False``) or is tracked over two.
# tests/measure/test_protocol.py holds every built-in method to one step's peak == two steps' peak.
STEP_CONTAINED_METHODS = frozenset(
    {
        "bp",
        "bp-accum",
        "bp-ckpt",
        "bp-sac",
        "bp-offload",
        "bp-deepsup",
        "ff-pipelined",
        "bp-ddp",
        "bp-fsdp",
        "bp-pp",
    }
)
# memory_source of a compiled cell on the CPU: its peak is left empty (see measure_memory).
UNTRACKED_COMPILED = "none (compiled: the tracker cannot see compiled buffers)"
# (step, count) -> each step's time in ms: the device's own timing, or the pytest fixture's.
Timer = Callable[[Callable[[], object], int], list[float]]


def provenance() -> dict:
    """What every result records about the software that produced it."""
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "membench_version": __version__,
    }


def new_result(cell: Cell, device: str, device_name: str, **values) -> CellResult:
    """A result for ``cell`` started now, with this process's provenance."""
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return CellResult(cell, device, device_name, started_at=started_at, **provenance(), **values)


def make_batch(cell: Cell, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The protocol's one synthetic batch, made once on the device before timing: images and
    class labels, or for a token cell token ids and its objective's labels
    (``membench.archs.token_batch``; a causal LM's labels are its input ids, one tensor)."""
    generator = torch.Generator().manual_seed(cell.seed)
    if cell.takes_tokens:
        from ..archs import token_batch

        inputs, labels = token_batch(
            cell.arch, cell.objective, cell.batch, cell.seq, cell.classes, generator
        )
        moved = inputs.to(device)
        return moved, moved if labels is inputs else labels.to(device)
    images = torch.randn(cell.batch, 3, cell.res, cell.res, generator=generator)
    labels = torch.randint(0, cell.classes, (cell.batch,), generator=generator)
    images = images.to(device)
    if cell.memory_format == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device)


def build_runner(cell: Cell, device: torch.device | str) -> Runner:
    """The cell's runner, built with the cell's seed and a schedule as long as the cell.

    The schedule covers warmup, the tracker pass and the measured steps, so no measured step
    runs past the cosine's end (where CosineAnnealingLR would climb back up). The runner reads
    every setting it takes from the cell itself.
    """
    return get_runner(cell.method)(
        cell, device, total_steps=cell.warmup + DEFAULT_TRACKER_STEPS + cell.steps
    )


def carries_tensors_across_steps(runner: Runner) -> bool:
    """Whether ``runner``'s step leaves tensors the next step still holds, beyond what the
    memory pass counts from its start (see ``STEP_CONTAINED_METHODS``): always with an fp16
    GradScaler, else the runner's own declaration, else membench's for a built-in method; a
    runner that says nothing is assumed to."""
    scaler = getattr(runner, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        return True
    declared = getattr(type(runner), "carries_tensors_across_steps", None)
    if declared is not None:
        return bool(declared)
    return runner.name not in STEP_CONTAINED_METHODS


def tracked_steps(runner: Runner, cell: Cell, tracker_steps: int = DEFAULT_TRACKER_STEPS) -> int:
    """Steps of the memory pass: one, or ``tracker_steps`` for a runner that carries tensors
    across steps; never more than the cell's measured steps."""
    wanted = tracker_steps if carries_tensors_across_steps(runner) else 1
    return max(1, min(wanted, cell.steps))


# Settings that cannot change what a step computes, only how (precision, memory format,
# compiling) or what it keeps where (gradients, optimizer state, a budget), or that are the
# protocol's own: the FLOP count is shared across them (tests/measure/test_flops.py shows it
# for every built-in method and each of them).
FLOP_INVARIANT_SETTINGS = (
    "precision",
    "memory_format",
    "compile",
    "grads",
    "optimizer_state",
    "device_mem_bytes",
    "warmup",
    "steps",
)
_FLOPS_CACHE_SIZE = 256
_flops_cache: OrderedDict[tuple, int] = OrderedDict()


def flops_key(cell: Cell) -> tuple:
    """What a cell's FLOP count depends on: the cell with every ``FLOP_INVARIANT_SETTINGS`` at
    its default, and the rank of the process group it is counted in (a cell on several devices
    counts each rank's share)."""
    defaults = {name: Cell.__dataclass_fields__[name].default for name in FLOP_INVARIANT_SETTINGS}
    rank = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = (torch.distributed.get_rank(), torch.distributed.get_world_size())
    return dataclasses.replace(cell, **defaults), rank


def count_step_flops(cell: Cell) -> int:
    """FLOPs of one training step of ``cell``: one eager step of its runner on fake tensors
    (step 3 of the protocol), counted once per ``flops_key`` in a process. A compiled cell is
    counted eager: compiling changes how, not what, it computes."""
    key = flops_key(cell)
    if key in _flops_cache:
        _flops_cache.move_to_end(key)
        return _flops_cache[key]
    flops = _fake_step_flops(dataclasses.replace(cell, compile="none"))
    _flops_cache[key] = flops
    if len(_flops_cache) > _FLOPS_CACHE_SIZE:
        _flops_cache.popitem(last=False)
    return flops


def forget_flop_counts() -> None:
    """Empty the process's FLOP counts (``count_step_flops``'s), so the next count steps."""
    _flops_cache.clear()


def _fake_step_flops(cell: Cell) -> int:
    """One eager step of a fresh runner for ``cell`` on fake tensors under FlopCounterMode."""
    from ..archs.hf import as_on_real_tensors

    with torch.random.fork_rng(devices=[]), FakeTensorMode(), as_on_real_tensors():
        runner = build_runner(cell, "cpu")
        skip_inf_checks(runner)
        images, labels = runner.local_batch(*make_batch(cell, torch.device("cpu")))
        return step_flops(lambda: runner.step(images, labels))


def skip_inf_checks(runner) -> None:
    """fp16's GradScaler asks the host whether a gradient overflowed (``.item()``), which fake
    tensors cannot answer; a fake step (the FLOP count, an estimate) assumes none did and steps
    the optimizer, as a real run does on all but the rare overflowing step. The scaler's own
    tensors are a few scalars."""
    scaler = runner.scaler
    if scaler.is_enabled():
        scaler._maybe_opt_step = lambda optimizer, optimizer_state, *args, **kwargs: optimizer.step(
            *args, **kwargs
        )


@dataclass
class PreparedCell:
    """A cell ready to measure: its runner and batch on the device, warmup done."""

    cell: Cell
    device: Device
    runner: Runner
    images: torch.Tensor
    labels: torch.Tensor
    first_step_s: float | None = None  # the first warmup step: where torch.compile compiles

    def step(self) -> None:
        """One training step of the cell (no synchronisation: the device times it)."""
        self.runner.step(self.images, self.labels)

    def live_tensors(self) -> list[tuple[str, list[torch.Tensor]]]:
        """(category, tensors) of everything the cell holds between steps: parameters and
        buffers, gradients, optimizer state, and the batch (an activation)."""
        runner = self.runner
        optimizer_state = [
            t for optimizer in runner.optimizers() for t in optimizer_state_tensors(optimizer)
        ]
        return [
            ("parameters", [*runner.parameters(), *runner.buffers()]),
            ("gradients", [p.grad for p in runner.parameters() if p.grad is not None]),
            ("optimizer_state", optimizer_state),
            ("activations", [self.images, self.labels]),
        ]

    def tracked(
        self,
        tracker: TensorMemoryTracker,
        steps: int,
        during: contextlib.AbstractContextManager | None = None,
        flops: FlopTally | None = None,
    ) -> TensorMemoryTracker:
        """Run ``steps`` steps under ``tracker``, counting what was live from the start;
        ``during``: a context the steps run in, entered once the tracker counts them (the
        timeline's recorder); ``flops``: counts the first step's FLOPs."""
        for category, tensors in self.live_tensors():
            tracker.add_existing(category, tensors)
        tracker.reset_peak()
        with (
            self.device.tracking(tracker),
            tracker.watch_gradients(self.runner.parameters()),
            during or contextlib.nullcontext(),
        ):
            for index in range(steps):
                tracker.observer = flops.count if flops is not None and index == 0 else None
                self.step()
            tracker.observer = None
        return tracker


def prepare_cell(cell: Cell, device: Device) -> PreparedCell:
    """Step 1 of the protocol: the budget, the runner and batch on the device, warmup."""
    device.set_memory_budget(cell.device_mem_bytes)
    runner = build_runner(cell, device.torch_device)
    device.adapt(runner)
    images, labels = runner.local_batch(*make_batch(cell, device.torch_device))
    prepared = PreparedCell(cell, device, runner, images, labels)
    for index in range(device.warmup_steps(cell)):
        start = time.perf_counter()
        prepared.step()
        if index == 0:
            device.synchronize()
            prepared.first_step_s = time.perf_counter() - start
    device.synchronize()
    return prepared


def measure_memory(
    prepared: PreparedCell, result: CellResult, tracker_steps: int, count_flops: bool = False
) -> None:
    """Step 2: the tracker pass where the device has one, into ``result``; ``count_flops``: the
    FLOPs of its first step too."""
    tracker = prepared.device.memory_tracker(prepared.cell)
    if tracker is None:
        return
    if prepared.cell.compile != "none":
        # Compiled kernels allocate their buffers outside the dispatcher, where the tracker
        # cannot see them: no peak rather than a wrong one.
        result.memory_source = UNTRACKED_COMPILED
        return
    flops = FlopTally() if count_flops else None
    steps = tracked_steps(prepared.runner, prepared.cell, tracker_steps)
    prepared.tracked(tracker, steps, flops=flops)
    result.peak_allocated_bytes = tracker.peak_bytes
    result.breakdown = tracker.peak_breakdown()
    result.memory_source = prepared.device.memory_source
    if flops is not None:
        result.flops_per_step = flops.total


def run_cell(
    cell: Cell,
    device: Device,
    *,
    peak: PeakSpec | None = None,
    timer: Timer | None = None,
    tracker_steps: int = DEFAULT_TRACKER_STEPS,
    count_flops: bool = True,
    timeline: bool = False,
    timeline_snapshot: bool = False,
) -> CellResult:
    """Measure one cell under the protocol (the module docstring). Out-of-memory and runner
    errors become the result's status, never an exception. ``peak``: what MFU is held against;
    ``timer``: times the steps instead of the device (the pytest fixture's rounds);
    ``count_flops=False`` leaves ``flops_per_step`` empty (to measure what counting costs);
    ``timeline``: record one more step, after the measured ones, into ``result.timeline``
    (``timeline_snapshot``: with what a memory snapshot pickle needs)."""
    start = time.perf_counter()
    result = new_result(cell, str(device), device.name(), status=device.finished_status)
    refusal = device.refusal(cell)
    if refusal:
        result.status, result.error = ERROR, refusal
        result.wall_s = time.perf_counter() - start
        return result
    try:
        with device.session(), device.cell_settings(cell):
            _measure(
                cell,
                device,
                result,
                timer or device.time_steps,
                (tracker_steps, count_flops),
                (timeline, timeline_snapshot),
            )
        device.check_budget(result)
    except Exception as err:  # an OOM or a runner bug must become a row, not end the sweep
        if is_out_of_memory(err):
            result.status, result.error = OOM, one_line(err)
        else:
            result.status, result.error = ERROR, device.error_text(err)
    finally:
        device.collect_garbage()  # what the cell left, so the next one starts where it did
        device.release_cached_memory()
    if count_flops and result.flops_per_step is None:  # step 3: no memory pass counted them
        result.flops_per_step = _counted_flops(cell)
    apply_peak(result, peak)  # MFU never above 1 (docs/measurement.md, "FLOPs and MFU")
    judge(result)  # its spread and what ran beside it: stable or not, and why
    result.wall_s = time.perf_counter() - start
    return result


def _measure(
    cell: Cell,
    device: Device,
    result: CellResult,
    timer: Timer,
    memory: tuple[int, bool],
    timeline: tuple[bool, bool],
) -> None:
    """Steps 1, 2, 4 and 5 into ``result``; the runner and batch go when this returns. ``memory``:
    (the memory pass's steps for a runner that carries tensors, count FLOPs on it);
    ``timeline``: (record one, with what a snapshot needs)."""
    prepared = prepare_cell(cell, device)
    if cell.compile != "none":
        result.compile_s = prepared.first_step_s
    device.reset_host_peak()
    measure_memory(prepared, result, *memory)
    device.reset_peak_memory()  # the allocator's peak covers the timed pass alone
    window = LoadWindow.start()  # what else runs on the machine meanwhile
    result.step_ms = timer(prepared.step, cell.steps)
    if result.step_ms:  # an estimate times nothing: the load beside it says nothing of it
        window.stop().record(result)
    device.record_peaks(result)
    device.record_device_terms(prepared, result)  # what the card must hold (device-total.md)
    result.offloaded_bytes = prepared.runner.offloaded_peak_bytes
    result.offloaded_optimizer_bytes = prepared.runner.offloaded_optimizer_bytes
    if timeline[0]:  # never inside a timed step, and only once every peak is read
        start = time.perf_counter()
        result.timeline = device.record_timeline(prepared, snapshot=timeline[1])
        if result.timeline is not None:
            result.timeline.seconds = time.perf_counter() - start


def _counted_flops(cell: Cell) -> int | None:
    """The cell's FLOPs, or None for a runner that cannot run on fake tensors (a third-party
    runner that reads a value with ``.item()``): the cell is still measured."""
    try:
        return count_step_flops(cell)
    except Exception:
        return None


# cuBLAS and cuDNN report a failed allocation as a plain RuntimeError with their status name.
_OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` means the device (or the emulated budget) ran out of memory."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MESSAGES)


__all__ = [
    "DEFAULT_TRACKER_STEPS",
    "FLOP_INVARIANT_SETTINGS",
    "PreparedCell",
    "STEP_CONTAINED_METHODS",
    "Timer",
    "build_runner",
    "carries_tensors_across_steps",
    "count_step_flops",
    "flops_key",
    "forget_flop_counts",
    "is_out_of_memory",
    "make_batch",
    "new_result",
    "prepare_cell",
    "run_cell",
    "tracked_steps",
]
