"""Planning without a GPU: predict a cell's peak memory by running it on fake tensors.

``estimate_cell`` measures the cell under the protocol itself (``protocol.run_cell``) on an
``EstimateDevice``: the device whose every step runs inside ``FakeTensorMode`` with the tensor
tracker on top. Every op computes only shapes, dtypes and aliasing, so nothing is allocated or
computed, and the tracker counts exactly the storages a real run would create at the dispatch
level. ``membench.planning.fit`` searches those estimates for the largest batch that fits a
device budget.

Fake CUDA tensors cannot run a backward pass on a machine without a GPU (the autograd engine
wants a real CUDA device queue), so a ``"cuda"`` estimate runs on fake CPU tensors and models
what CUDA does differently at the dispatch level:

- the caching allocator rounds every block up to 512 bytes (``memtrack.cuda_allocated_size``);
- ``F.dropout`` in training uses the fused ``native_dropout`` kernel on CUDA, which saves a 1-byte
  mask, where the CPU composite saves a float noise tensor (4 bytes per element);
- AdamW (and any optimizer with ``foreach=None``) defaults to the ``foreach`` implementation on
  CUDA, whose temporaries span every parameter of the group at once;
- under ``torch.autocast``, CUDA runs a list of ops in float32 (softmax, layer_norm, exp, pow,
  sum, ...) that the CPU's autocast leaves in the lower precision; an estimate applies CUDA's
  policy to them at the dispatcher, whatever their spelling
  (``membench.planning.cuda_autocast``), so a saved LayerNorm input or a checkpointed boundary
  is as large as on a GPU;
- ``scaled_dot_product_attention`` runs the kernel CUDA would pick for the precision and shapes
  (flash or memory-efficient: a log-sum-exp saved, not the attention matrix;
  ``membench.planning.cuda_attention``).

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
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..archs.hf import as_on_real_tensors
from ..errors import error_text
from ..measure.cuda_env import cuda_only_refusal
from ..measure.devices import Device
from ..measure.memtrack import TensorMemoryTracker, TrackingFakeTensorMode, cuda_allocated_size
from ..measure.protocol import run_cell, skip_inf_checks
from ..schema import (
    ESTIMATE_DEVICE_NAME,
    ESTIMATE_KINDS,
    ESTIMATE_SOURCE,
    ESTIMATED,
    OOM,
    Cell,
    CellResult,
    estimate_device,
)
from .cuda_attention import cuda_attention
from .cuda_autocast import cuda_autocast
from .device_profiles import device_profile_of
from .device_total import TERM_LABELS, deciding_term, describe_terms, judged_bytes, step_terms
from .step_stream import StreamTracker

DEVICE_KINDS = ESTIMATE_KINDS
# Compiled code allocates its buffers outside the dispatcher, where fake tensors and the tracker
# cannot see them: no sound model, so no number.
COMPILED_REFUSAL = (
    "an estimate of a compiled cell is refused: torch.compile's buffers are "
    "allocated outside what fake tensors can see; measure it on the device"
)

# Fake steps, kept minimal because each costs as much as the cell's ops, whatever the batch.
# One warmup step is enough: the first optimizer step creates AdamW's moments and step counts, so
# the tracker can name them optimizer state; after it every step of every built-in runner
# allocates and frees the same storages. The tracked pass is the protocol's
# (``protocol.tracked_steps``): one step, two for a runner that carries tensors over from the
# step before in its own attributes (ff-naive's ``layer_losses``), which the first cannot see.
FAKE_WARMUP_STEPS = 1


class EstimateDevice(Device):
    """The device an estimate plans for (``cuda`` or ``cpu``), as the protocol sees it: every
    step on fake CPU tensors, the peak from the tracker (with the CUDA caching allocator's
    rounding for ``cuda``), no time, and a budget compared after the fact, so an over-budget
    row still carries the whole estimate."""

    memory_source = ESTIMATE_SOURCE
    finished_status = ESTIMATED

    def __init__(self, kind: str = "cuda", profile=None, fit_by: str = "total"):
        if kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device kind {kind!r}; valid: {', '.join(DEVICE_KINDS)}")
        super().__init__(torch.device("cpu"))  # fake CPU tensors: see the module docstring
        self.kind = kind
        # The card a CUDA estimate's device total is for (docs/device-total.md), and what a
        # budget judges the estimate by (schema.FIT_BY).
        self.profile, self.fit_by = profile, fit_by
        self._stream = None  # the memory pass's StreamTracker: the step the allocator replays
        self._terms = None  # its device terms, once replayed

    def __str__(self) -> str:
        return estimate_device(self.kind)

    def name(self) -> str:
        return ESTIMATE_DEVICE_NAME

    def refusal(self, cell: Cell) -> str | None:
        if cell.compile != "none":
            return COMPILED_REFUSAL
        return cuda_only_refusal(cell) if self.kind != "cuda" else None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[]))  # leave the caller's RNG alone
            self.fake_mode = stack.enter_context(TrackingFakeTensorMode())
            stack.enter_context(as_on_real_tensors())  # transformers' reads of batch values
            if self.kind == "cuda":
                stack.enter_context(_cuda_dropout())
                stack.enter_context(cuda_autocast())
                stack.enter_context(cuda_attention())
            yield

    def tracking(self, tracker: TensorMemoryTracker) -> contextlib.AbstractContextManager:
        """The tracker counts inside the session's fake-tensor mode, not as a mode of its own
        (``memtrack.TrackingFakeTensorMode``), unless another fake-tensor mode was already
        active when the session began (then that one runs the ops, and the tracker is a mode
        above it)."""
        active = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
        return self.fake_mode.tracking(tracker) if active is self.fake_mode else tracker

    def adapt(self, runner) -> None:
        if self.kind == "cuda":
            _use_foreach_optimizers(runner)
        skip_inf_checks(runner)

    def warmup_steps(self, cell: Cell) -> int:
        return min(cell.warmup, FAKE_WARMUP_STEPS)

    def error_text(self, err: BaseException) -> str:
        return f"estimate failed: {error_text(err)}"

    def memory_tracker(self, cell: Cell) -> TensorMemoryTracker:
        if self.kind != "cuda":
            return TensorMemoryTracker()
        tracker = StreamTracker(rounding=cuda_allocated_size)
        if self._stream is None:  # the memory pass's; a timeline's step comes later
            self._stream = tracker
        return tracker

    def record_device_terms(self, prepared, result: CellResult) -> None:
        """The allocator replay of the memory pass's step, with the library workspaces and the
        device profile's context (``device_total.step_terms``), into ``result``."""
        if self._stream is None or result.peak_allocated_bytes is None:
            return
        profile = device_profile_of(self.profile)
        cell = result.cell
        terms = step_terms(
            self._stream.events,
            tensors=result.peak_allocated_bytes,
            gemm_threads=self._stream.gemm_threads,
            profile=profile,
            alloc_conf=cell.alloc_conf,
            benchmark=cell.cudnn_benchmark == "on",
            budget=cell.device_mem_bytes,
            fit_by=self.fit_by,
        )
        for column, value in terms.as_columns().items():
            setattr(result, column, value)
        result.device_profile = profile.name
        self._terms = terms

    def check_budget(self, result: CellResult) -> None:
        budget = result.cell.device_mem_bytes
        # the tensors' peak where there are no device terms (the CPU, a rank of several)
        has_terms = self.kind == "cuda" and result.device_total_bytes is not None
        fit_by = self.fit_by if has_terms else "allocated"
        judged = judged_bytes(vars(result), fit_by)
        if budget is None or judged is None:
            return
        if self._terms is not None and self._terms.out_of_memory:
            judged = max(judged, budget + 1)  # the replay under the budget ran out of memory
        if judged > budget:
            result.status = OOM
            result.error = budget_error(vars(result), budget, fit_by)

    def reset_host_peak(self) -> None:
        pass  # the host's memory says nothing about the device planned for

    def collect_garbage(self) -> None:
        """Nothing: a fake tensor holds no memory, so what a finished estimate leaves in
        reference cycles frees nothing the next cell could use, and the interpreter's own
        generational collector takes those objects as it goes. The next cell's count is its own
        tracker's: storages it did not see allocated never count, whenever they are freed, and
        no storage a tracked step allocates waits for the collector
        (tests/planning/test_estimate.py), so an estimate does not depend on when the collector
        runs. A full collection cost 0.15-0.7 s per cell (the whole heap of torch's modules)."""

    def record_peaks(self, result: CellResult) -> None:
        pass

    def time_steps(self, step, count) -> list[float]:
        return []  # an estimate has no time


def estimate_cell(
    cell: Cell,
    device_kind: str = "cuda",
    count_flops: bool = True,
    profile=None,
    fit_by: str = "total",
    **timeline: bool,
) -> CellResult:
    """Predict ``cell``'s peak allocated memory for a kind of device without allocating it: the
    protocol on an ``EstimateDevice`` (see the module docstring). A runner that fails under fake
    tensors (e.g. one that reads a tensor's value with ``.item()``) gives ``status="error"``.
    A CUDA estimate also carries the device total on ``profile`` (a device profile or its name;
    default ``device_profiles.DEFAULT_DEVICE_PROFILE``) and judges a budget by ``fit_by``
    (docs/device-total.md).
    ``timeline`` (``timeline=True``, ``timeline_snapshot``): run_cell's, a fake step's events."""
    device = EstimateDevice(device_kind, profile, fit_by)
    return run_cell(cell, device, count_flops=count_flops, **timeline)


def budget_error(values: dict, budget: int, fit_by: str) -> str:
    """An over-budget estimate's error: its figure, the budget, its terms and which decides."""
    judged = judged_bytes(values, fit_by)
    if fit_by == "allocated":
        return f"estimated {judged / 2**30:.3f} GiB > budget {budget / 2**30:.3f} GiB"
    term = deciding_term(values, budget, fit_by)
    what = "device total" if fit_by == "total" else "reserve"
    return (
        f"estimated {what} {judged / 2**30:.3f} GiB > budget {budget / 2**30:.3f} GiB "
        f"({describe_terms(values, fit_by)}; decided by {TERM_LABELS.get(term, term)})"
    )


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


def _use_foreach_optimizers(runner) -> None:
    """Give optimizers that left ``foreach`` to torch the implementation torch picks on CUDA."""
    for optimizer in runner.optimizers():
        for group in optimizer.param_groups:
            if "foreach" in group and group["foreach"] is None and not group.get("fused"):
                group["foreach"] = True
