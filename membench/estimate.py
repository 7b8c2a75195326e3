"""Planning without a GPU: predict a cell's peak memory by running it on fake tensors.

``estimate_cell`` runs the cell's real runner code, the protocol's way (``build_runner``,
``make_batch``, warmup, ``tracked_peak``), inside ``FakeTensorMode`` with the tensor tracker on top:
every op computes only shapes, dtypes and aliasing, so nothing is allocated or computed, and the
tracker counts exactly the storages a real run would create at the dispatch level. ``fit_batch``
searches those estimates for the largest batch that fits a device budget.

Fake CUDA tensors cannot run a backward pass on a machine without a GPU (the autograd engine
wants a real CUDA device queue), so a ``"cuda"`` estimate runs on fake CPU tensors and models
what CUDA does differently at the dispatch level:

- the caching allocator rounds every block up to 512 bytes (``memtrack.cuda_allocated_size``);
- ``F.dropout`` in training uses the fused ``native_dropout`` kernel on CUDA, which saves a 1-byte
  mask, where the CPU composite saves a float noise tensor (4 bytes per element);
- AdamW (and any optimizer with ``foreach=None``) defaults to the ``foreach`` implementation on
  CUDA, whose temporaries span every parameter of the group at once.

What no dispatch-level model sees, and so what a measured ``max_memory_allocated`` can add on top:
cuDNN/cuBLAS workspaces and other allocations made inside a kernel (e.g. a contiguous copy of
LayerNorm's permuted input), blocks the caching allocator hands out unsplit (up to 1 MiB more than
asked for a large block), and the CUDA context (not part of ``max_memory_allocated`` anyway).

Rows: ``status="estimated"``, ``memory_source="estimate"``, ``device="cuda (estimate)"`` or
``"cpu (estimate)"`` and ``device_name="estimate"``, so an estimate never matches a measured row
(whose device is ``cuda:N`` or ``cpu``) in reports or ``membench compare``. With a budget
(``cell.device_mem_bytes``) an estimate above it gets ``status="oom"`` and an error saying
``estimated X GiB > budget Y GiB``; its ``peak_allocated_bytes`` is still the full estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from .archs import ArchError, validate_arch
from .config import ConfigError, check_parameter_size
from .errors import error_text
from .memtrack import TensorMemoryTracker, cuda_allocated_size
from .protocol import DEFAULT_TRACKER_STEPS, build_runner, make_batch, new_result, tracked_peak
from .runners import Runner, RunnerConfigError, UnknownMethodError, get_runner
from .schema import (
    ERROR, ESTIMATE_DEVICE_NAME, ESTIMATE_SOURCE, ESTIMATED, OOM, Cell, CellResult,
    estimate_device,
)

DEVICE_KINDS = ("cuda", "cpu")
# Compiled code allocates its buffers outside the dispatcher, where fake tensors and the tracker
# cannot see them: no sound model, so no number.
COMPILED_REFUSAL = ("an estimate of a compiled cell is refused: torch.compile's buffers are "
                    "allocated outside what fake tensors can see; measure it on the device")

# Fake steps, kept minimal because each costs about a second for VGG11 whatever the batch.
# One warmup step is enough: the first optimizer step creates AdamW's moments and step counts, so
# the tracker can name them optimizer state; after it every step of every built-in runner
# allocates and frees the same storages. The tracked pass keeps the protocol's step count
# (protocol.DEFAULT_TRACKER_STEPS = 2) because its first step cannot see tensors a runner carries
# over from the step before in its own attributes (ff-naive's ``layer_losses``); the second can.
FAKE_WARMUP_STEPS = 1


def estimate_cell(cell: Cell, device_kind: str = "cuda", count_flops: bool = True) -> CellResult:
    """Predict ``cell``'s peak allocated memory without allocating it.

    Runs the protocol's path (build the runner, make the batch, one warmup step, the tracked
    steps) under ``FakeTensorMode`` with the tensor tracker. ``device_kind="cuda"`` applies the CUDA caching
    allocator's rounding and CUDA's dispatch-level differences (see the module docstring);
    ``"cpu"`` predicts what the CPU tracker measures. A runner that fails under fake tensors
    (e.g. one that reads a tensor's value with ``.item()``) gives ``status="error"``.
    """
    if device_kind not in DEVICE_KINDS:
        raise ValueError(f"unknown device kind {device_kind!r}; valid: {', '.join(DEVICE_KINDS)}")
    if cell.compile != "none":
        return new_result(cell, estimate_device(device_kind), ESTIMATE_DEVICE_NAME, status=ERROR,
                          memory_source=ESTIMATE_SOURCE, error=COMPILED_REFUSAL)
    result = new_result(cell, estimate_device(device_kind), ESTIMATE_DEVICE_NAME,
                        status=ESTIMATED, memory_source=ESTIMATE_SOURCE)
    counter = FlopCounterMode(display=False) if count_flops else None
    try:
        offloaded: list[int] = []
        tracker = _fake_tracked_run(
            cell, cuda_kernels=device_kind == "cuda",
            rounding=cuda_allocated_size if device_kind == "cuda" else None, flop_counter=counter,
            offloaded=offloaded,
        )
    except Exception as err:  # a runner that cannot run on fake tensors becomes a row
        result.status = ERROR
        result.error = f"estimate failed: {error_text(err)}"
        return result
    result.peak_allocated_bytes = tracker.peak_bytes
    result.breakdown = tracker.peak_breakdown()
    result.offloaded_bytes = offloaded[0] if offloaded else None
    if counter is not None and min(cell.warmup, FAKE_WARMUP_STEPS):
        result.flops_per_step = int(counter.get_total_flops())
    budget = cell.device_mem_bytes
    if budget is not None and tracker.peak_bytes > budget:
        result.status = OOM
        result.error = (
            f"estimated {tracker.peak_bytes / 2**30:.3f} GiB > budget {budget / 2**30:.3f} GiB"
        )
    return result


def _fake_tracked_run(
    cell: Cell, cuda_kernels: bool, rounding: Callable[[int], int] | None,
    flop_counter: FlopCounterMode | None = None, offloaded: list[int] | None = None,
) -> TensorMemoryTracker:
    """The protocol's path on fake CPU tensors; ``cuda_kernels`` models CUDA's dispatch paths;
    ``flop_counter`` counts the warmup step, as ``protocol.prepare_cell`` does."""
    warmup = min(cell.warmup, FAKE_WARMUP_STEPS)
    tracked_steps = max(1, min(DEFAULT_TRACKER_STEPS, cell.steps))  # as protocol.run_cell
    # The tracker counts without a budget so the row carries the whole estimate, not the point
    # where a refusal would have stopped it; estimate_cell compares against the budget after.
    tracker = TensorMemoryTracker(rounding=rounding)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))  # leave the caller's RNG alone
        stack.enter_context(FakeTensorMode())
        if cuda_kernels:
            stack.enter_context(_cuda_dropout())
        runner = build_runner(cell, "cpu")
        if cuda_kernels:
            _use_foreach_optimizers(runner)
        _skip_inf_checks(runner)
        images, labels = make_batch(cell, torch.device("cpu"))
        for index in range(warmup):
            counting = flop_counter is not None and index == warmup - 1
            with flop_counter if counting else contextlib.nullcontext():
                runner.step(images, labels)
        tracked_peak(runner, images, labels, tracked_steps, tracker)
    if offloaded is not None and hasattr(runner, "offloaded_peak_bytes"):
        offloaded.append(runner.offloaded_peak_bytes)  # host memory, outside the device peak
    return tracker


@contextlib.contextmanager
def _cuda_dropout() -> Iterator[None]:
    """Route training-mode ``F.dropout`` to ``native_dropout``, the kernel CUDA uses.

    ``at::dropout`` takes the fused path only for CUDA inputs; on the CPU it multiplies by a float
    noise tensor that autograd saves, 4 bytes per element where CUDA saves a 1-byte mask. This
    patches the function rather than using a TorchFunctionMode because function modes are not
    active in the backward pass, where ``torch.utils.checkpoint`` recomputes the forward.
    """
    original_dropout = F.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if training and not inplace and 0 < p < 1 and input.numel() > 0:
            return torch.native_dropout(input, p, True)[0]
        return original_dropout(input, p, training, inplace)

    F.dropout = dropout
    try:
        yield
    finally:
        F.dropout = original_dropout


def _skip_inf_checks(runner) -> None:
    """fp16's GradScaler asks the host whether a gradient overflowed (``.item()``), which fake
    tensors cannot answer; an estimate assumes none did and steps the optimizer, as a real run
    does on all but the rare overflowing step. The scaler's own tensors are a few scalars."""
    scaler = getattr(runner, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        scaler._maybe_opt_step = (lambda optimizer, optimizer_state, *args, **kwargs:
                                  optimizer.step(*args, **kwargs))


def _use_foreach_optimizers(runner) -> None:
    """Give optimizers that left ``foreach`` to torch the implementation torch picks on CUDA."""
    for optimizer in runner.optimizers():
        for group in optimizer.param_groups:
            if "foreach" in group and group["foreach"] is None and not group.get("fused"):
                group["foreach"] = True


# -- fit ------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """The largest batch of one method that fits a budget, by estimate.

    ``batch`` is None when even the smallest batch does not fit; ``capped`` is True when
    ``max_batch`` itself fits (the true limit may be higher). ``next_batch``/``next_peak_bytes``
    are the smallest searched batch above ``batch`` and its estimate (None when capped).
    ``micro_batch`` is set for runners that split the batch (bp-accum).
    """

    method: str
    arch: str
    res: int
    classes: int
    budget_bytes: int
    device_kind: str
    batch: int | None
    micro_batch: int | None
    peak_bytes: int | None
    next_batch: int | None
    next_peak_bytes: int | None
    capped: bool = False
    estimates: int = 0


def fit_batch(
    method: str,
    arch: str,
    res: int,
    budget_bytes: int,
    classes: int = 10,
    device_kind: str = "cuda",
    max_batch: int = 4096,
    micro_batch: int | None = None,
    seed: int = 0,
) -> FitResult:
    """Largest batch of ``method`` whose estimated peak fits ``budget_bytes``.

    An exponential search brackets the limit and a binary search narrows it, both accelerated by
    interpolating on the estimates (peak memory is close to affine in the batch, so a search
    takes about five estimates instead of twenty), with doubling and bisection as the fallbacks
    that bound it. Assumes the peak does not shrink as the batch grows. A batch of one that
    cannot train (BatchNorm) starts the search at two. Runners that split the batch (bp-accum)
    search the effective batch: with ``micro_batch`` over its multiples, without it over even
    batches with micro-batch batch/2 (the sweep's default). Raises ConfigError on invalid input.
    """
    runner_cls = check_fit_input(
        method, arch, res, budget_bytes, classes, device_kind, max_batch, micro_batch
    )
    splits = _splits_batch(runner_cls, micro_batch)
    unit = (micro_batch or 2) if splits else 1

    def cell_for(k: int) -> Cell:
        batch = k * unit
        mb = (micro_batch or runner_cls.default_micro_batch(batch)) if splits else None
        return Cell(method, arch, res, batch, mb, classes, seed, device_mem_bytes=None)

    max_k = max_batch // unit
    if max_k < 1:
        raise ConfigError(f"--max-batch {max_batch} is below the smallest batch {unit} of {method}")
    search = _BatchSearch(lambda k: estimate_cell(cell_for(k), device_kind), budget_bytes, method,
                          unit)
    lo, hi = search.bracket(_first_runnable(search.peak, max_k), max_k)
    lo, hi = search.narrow(lo, hi)
    best = cell_for(lo) if lo else None
    return FitResult(
        method=method, arch=arch, res=res, classes=classes, budget_bytes=budget_bytes,
        device_kind=device_kind,
        batch=best.batch if best else None, micro_batch=best.micro_batch if best else None,
        peak_bytes=search.peaks.get(lo), next_batch=hi * unit if hi is not None else None,
        next_peak_bytes=search.peaks.get(hi) if hi is not None else None,
        capped=hi is None, estimates=len(search.peaks),
    )


def _splits_batch(runner_cls: type[Runner], micro_batch: int | None) -> bool:
    """Whether a fit splits the batch: a micro-batch was given, or the runner splits by default
    (bp-accum: batch/2; ff-pipelined does not unless asked)."""
    return runner_cls.uses_micro_batch and (
        micro_batch is not None or runner_cls.default_micro_batch(2) is not None)


def fit_cell(fit: FitResult) -> Cell:
    """The cell of a fit's largest batch (ValueError when nothing fits)."""
    if fit.batch is None:
        raise ValueError(f"{fit.method}: no batch fits")
    return Cell(fit.method, fit.arch, fit.res, fit.batch, fit.micro_batch, fit.classes,
                device_mem_bytes=None)


class _BatchSearch:
    """The search behind ``fit_batch``, over k = batch / unit, caching one estimate per k."""

    def __init__(self, estimate: Callable[[int], CellResult], budget_bytes: int, method: str,
                 unit: int):
        self.estimate, self.budget_bytes, self.method, self.unit = estimate, budget_bytes, method, unit
        self.peaks: dict[int, int] = {}

    def peak(self, k: int) -> int:
        if k not in self.peaks:
            result = self.estimate(k)
            if result.status == ERROR:
                raise FitError(f"{self.method} at batch {k * self.unit}: {result.error}")
            self.peaks[k] = result.peak_allocated_bytes
        return self.peaks[k]

    def fits(self, k: int) -> bool:
        return self.peak(k) <= self.budget_bytes

    def interpolate(self, a: int, b: int) -> int | None:
        """Where the line through the estimates at a and b meets the budget (None if flat)."""
        if self.peak(b) == self.peak(a):
            return None
        return a + int((self.budget_bytes - self.peak(a)) * (b - a) / (self.peak(b) - self.peak(a)))

    def bracket(self, first: int, max_k: int) -> tuple[int, int | None]:
        """(lo, hi): lo the largest k known to fit (0: none), hi the smallest k known not to
        (None: up to max_k everything fits). Grows from the largest fitting k along the line
        through the last two fitting estimates, by at least one and at most 4x per step;
        doubles when there is no line yet."""
        lo, hi = (first, None) if self.fits(first) else (0, first)
        fitting = [lo] if lo else []
        while hi is None and lo < max_k:
            guess = 2 * lo
            if len(fitting) >= 2:
                line = self.interpolate(fitting[-2], fitting[-1])
                if line is not None:
                    guess = min(line, 4 * lo)
            guess = min(max(guess, lo + 1), max_k)
            if self.fits(guess):
                lo = guess
                fitting.append(guess)
            else:
                hi = guess
        return lo, hi

    def narrow(self, lo: int, hi: int | None) -> tuple[int, int | None]:
        """Interpolate inside the bracket and check the neighbour on the far side (memory is
        close to affine in the batch, so this usually ends the search); bisect whenever a round
        fails to halve the bracket, which bounds the search at about twice a binary search."""
        while hi is not None and hi - lo > 1:
            width = hi - lo
            line = self.interpolate(lo, hi) if lo else None
            guess = min(max(line if line is not None else (lo + hi) // 2, lo + 1), hi - 1)
            if self.fits(guess):
                lo, neighbour = guess, guess + 1
            else:
                hi, neighbour = guess, guess - 1
            if lo < neighbour < hi:
                if self.fits(neighbour):
                    lo = neighbour
                else:
                    hi = neighbour
            if hi - lo > 1 and hi - lo > width // 2:
                mid = (lo + hi) // 2
                if self.fits(mid):
                    lo = mid
                else:
                    hi = mid
        return lo, hi


class FitError(RuntimeError):
    """A method's runner could not be estimated, so no batch can be fitted for it."""


def _first_runnable(peak, max_k: int) -> int:
    """1, or 2 when a batch of one cannot train (BatchNorm in training mode, as in the FF
    runners' classifier, refuses a single sample); any other failure is the runner's."""
    try:
        peak(1)
        return 1
    except FitError:
        if max_k < 2:
            raise
        peak(2)
        return 2


def check_fit_input(
    method: str,
    arch: str,
    res: int,
    budget_bytes: int,
    classes: int = 10,
    device_kind: str = "cuda",
    max_batch: int = 4096,
    micro_batch: int | None = None,
) -> type[Runner]:
    """Validate ``fit_batch``'s input without estimating anything; ConfigError names the problem."""
    try:
        runner_cls = get_runner(method)
    except UnknownMethodError as err:
        raise ConfigError(str(err)) from None
    if device_kind not in DEVICE_KINDS:
        raise ConfigError(f"unknown device kind {device_kind!r}; valid: {', '.join(DEVICE_KINDS)}")
    for value, option in ((res, "--res"), (classes, "--classes"), (max_batch, "--max-batch"),
                          (budget_bytes, "--device-mem")):
        if value <= 0:
            raise ConfigError(f"{option} must be positive, got {value}")
    if micro_batch is not None and micro_batch <= 0:
        raise ConfigError(f"--micro-batch must be at least 1, got {micro_batch}")
    try:
        validate_arch(arch, res)
        check_parameter_size(arch)
        probe_batch = micro_batch or 2
        runner_cls.check_cell(arch, res, probe_batch, micro_batch if runner_cls.uses_micro_batch else None)
    except (ArchError, RunnerConfigError) as err:
        raise ConfigError(str(err)) from None
    if micro_batch is not None and not runner_cls.uses_micro_batch:
        raise ConfigError(f"--micro-batch applies only to methods that split the batch, not {method}")
    unit = (micro_batch or 2) if _splits_batch(runner_cls, micro_batch) else 1
    if max_batch < unit:
        raise ConfigError(f"--max-batch {max_batch} is below the smallest batch {unit} of {method}")
    return runner_cls
