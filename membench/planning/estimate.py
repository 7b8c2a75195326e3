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
from torch._subclasses.fake_tensor import FakeTensorMode

from ..errors import error_text
from ..measure.devices import Device
from ..measure.memtrack import TensorMemoryTracker, cuda_allocated_size
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
from ..units import format_gib
from .cuda_attention import cuda_attention
from .cuda_autocast import cuda_autocast

DEVICE_KINDS = ESTIMATE_KINDS
# Compiled code allocates its buffers outside the dispatcher, where fake tensors and the tracker
# cannot see them: no sound model, so no number.
COMPILED_REFUSAL = (
    "an estimate of a compiled cell is refused: torch.compile's buffers are "
    "allocated outside what fake tensors can see; measure it on the device"
)

# Fake steps, kept minimal because each costs about a second for VGG11 whatever the batch.
# One warmup step is enough: the first optimizer step creates AdamW's moments and step counts, so
# the tracker can name them optimizer state; after it every step of every built-in runner
# allocates and frees the same storages. The tracked pass keeps the protocol's step count
# (protocol.DEFAULT_TRACKER_STEPS = 2) because its first step cannot see tensors a runner carries
# over from the step before in its own attributes (ff-naive's ``layer_losses``); the second can.
FAKE_WARMUP_STEPS = 1


class EstimateDevice(Device):
    """The device an estimate plans for (``cuda`` or ``cpu``), as the protocol sees it: every
    step on fake CPU tensors, the peak from the tracker (with the CUDA caching allocator's
    rounding for ``cuda``), no time, and a budget compared after the fact, so an over-budget
    row still carries the whole estimate."""

    memory_source = ESTIMATE_SOURCE
    finished_status = ESTIMATED

    def __init__(self, kind: str = "cuda"):
        if kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device kind {kind!r}; valid: {', '.join(DEVICE_KINDS)}")
        super().__init__(torch.device("cpu"))  # fake CPU tensors: see the module docstring
        self.kind = kind

    def __str__(self) -> str:
        return estimate_device(self.kind)

    def name(self) -> str:
        return ESTIMATE_DEVICE_NAME

    def refusal(self, cell: Cell) -> str | None:
        return COMPILED_REFUSAL if cell.compile != "none" else None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[]))  # leave the caller's RNG alone
            stack.enter_context(FakeTensorMode())
            if self.kind == "cuda":
                stack.enter_context(_cuda_dropout())
                stack.enter_context(cuda_autocast())
                stack.enter_context(cuda_attention())
            yield

    def adapt(self, runner) -> None:
        if self.kind == "cuda":
            _use_foreach_optimizers(runner)
        skip_inf_checks(runner)

    def warmup_steps(self, cell: Cell) -> int:
        return min(cell.warmup, FAKE_WARMUP_STEPS)

    def error_text(self, err: BaseException) -> str:
        return f"estimate failed: {error_text(err)}"

    def memory_tracker(self, cell: Cell) -> TensorMemoryTracker:
        return TensorMemoryTracker(rounding=cuda_allocated_size if self.kind == "cuda" else None)

    def check_budget(self, result: CellResult) -> None:
        budget, peak = result.cell.device_mem_bytes, result.peak_allocated_bytes
        if budget is not None and peak is not None and peak > budget:
            result.status = OOM
            result.error = f"estimated {format_gib(peak)} > budget {format_gib(budget)}"

    def reset_host_peak(self) -> None:
        pass  # the host's memory says nothing about the device planned for

    def record_peaks(self, result: CellResult) -> None:
        pass

    def time_steps(self, step, count) -> list[float]:
        return []  # an estimate has no time


def estimate_cell(
    cell: Cell, device_kind: str = "cuda", count_flops: bool = True, **timeline: bool
) -> CellResult:
    """Predict ``cell``'s peak allocated memory for a kind of device without allocating it: the
    protocol on an ``EstimateDevice`` (see the module docstring). A runner that fails under fake
    tensors (e.g. one that reads a tensor's value with ``.item()``) gives ``status="error"``.
    ``timeline`` (``timeline=True``, ``timeline_snapshot``): run_cell's, a fake step's events."""
    return run_cell(cell, EstimateDevice(device_kind), count_flops=count_flops, **timeline)


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
