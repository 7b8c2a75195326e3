"""One rank of a cell on several devices, measured under the protocol itself.

Every rank runs ``protocol.run_cell`` on a ``RankDevice``: its own device (the CPU, its GPU, or
an estimate's), seen through a wrapper that adds what only a rank has (docs/multi-device.md,
"One measurement path"):

- the bytes it sends per step, counted by ``RankTracker`` during the protocol's tracker pass
  (every collective and send goes through the dispatcher as a ``c10d`` op, so a dispatch mode
  sees it with its tensors). On CUDA, whose peak comes from the allocator, the pass runs for
  the count alone (the schedule counts its steps on every device);
- its idle fraction, for runners with a ``clock`` (the pipelines): 1 - the time it computed ÷
  the time its timed steps took.

What a collective sends is counted as the ring algorithms NCCL and gloo use put it on the wire:
an all-reduce of S bytes sends 2(N-1)/N·S from each rank, an all-gather (N-1)·S of its input, a
reduce-scatter (N-1)/N·S of its input, a send its tensor, a broadcast S from the root.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from ..measure.devices import CpuDevice, CudaDevice, Device
from ..measure.memtrack import TensorMemoryTracker
from ..measure.protocol import DEFAULT_TRACKER_STEPS, run_cell
from ..schema import OK, Cell, CellResult


def _tensor_bytes(value) -> int:
    return sum(
        t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, torch.Tensor)
    )


def wire_bytes(op: str, args: tuple, world: int, rank: int) -> int:
    """Bytes a rank puts on the wire for one ``c10d`` op (the module docstring's ring model)."""
    if op in ("send",):
        return _tensor_bytes(args[0])
    if op in ("allreduce_", "allreduce_coalesced_"):
        return 2 * (world - 1) * _tensor_bytes(args[0]) // world
    if op in ("_allgather_base_", "allgather_into_tensor_coalesced_"):
        return (world - 1) * _tensor_bytes(args[1])
    if op in ("allgather_", "allgather_coalesced_"):
        return (world - 1) * _tensor_bytes(args[1])
    if op in ("_reduce_scatter_base_", "reduce_scatter_tensor_coalesced_", "reduce_scatter_"):
        return (world - 1) * _tensor_bytes(args[1]) // world
    if op == "broadcast_":
        return _tensor_bytes(args[0]) if args[2] == rank else 0  # (tensors, group, root, ...)
    return 0  # receives, barriers, monitored waits: nothing sent


class _StorageRef:
    """A storage where the tracker expects a tensor (it only asks for ``untyped_storage()``)."""

    def __init__(self, storage):
        self.storage = storage

    def untyped_storage(self):
        return self.storage


class RankTracker(TensorMemoryTracker):
    """The tensor tracker for a rank: it also counts the bytes this rank's ``c10d`` ops send,
    sees a DTensor's local shard (FSDP2's sharded parameters, gradients and moments), and
    follows storages resized in place (FSDP2 allocates and frees its unsharded parameters with
    ``UntypedStorage.resize_``, which no dispatch mode sees)."""

    def __init__(self, world: int, rank: int, parameters=(), **tracker_options):
        super().__init__(**tracker_options)
        self.world, self.rank, self.sent_bytes = world, rank, 0
        self.parameters = list(parameters)
        self._resize = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            self.sent_bytes += wire_bytes(func._opname, args, self.world, self.rank)
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _track(self, t, category=None) -> None:
        if is_traceable_wrapper_subclass(t):  # a DTensor: its local tensor holds the memory
            for name in t.__tensor_flatten__()[0]:
                inner = getattr(t, name)
                if isinstance(inner, torch.Tensor):
                    self._track(inner, category)
            return
        super()._track(t, category)

    def _resized(self, storage) -> None:
        known = self._live.get(id(storage))
        self._free(id(storage))
        if storage.nbytes():
            self._track(_StorageRef(storage), known[0].category if known else None)

    def __enter__(self):
        original, tracker = torch.UntypedStorage.resize_, self

        def resize_(storage, size):
            out = original(storage, size)
            tracker._resized(storage)
            return out

        self._resize, torch.UntypedStorage.resize_ = original, resize_
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._resize
        # Gradients a communication library placed (DDP's rebuilt buckets, FSDP2's sharded
        # gradients) never pass an accumulate hook: name them by where they ended up.
        self.add_existing("gradients", [p.grad for p in self.parameters if p.grad is not None])
        return super().__exit__(*exc)


class RankDevice(Device):
    """Rank ``rank`` of ``world`` on ``inner`` (see the module docstring); everything else is
    the inner device's."""

    def __init__(self, inner: Device, rank: int, world: int):
        super().__init__(inner.torch_device)
        self.inner, self.rank, self.world = inner, rank, world
        self.kind, self.memory_source = inner.kind, inner.memory_source
        self.finished_status = inner.finished_status
        self.runner = self.counter = None
        self.idle: float | None = None
        self.untracked = False  # the inner device has no tracker pass (CUDA: the allocator)

    def __str__(self) -> str:
        return str(self.inner)

    def adapt(self, runner) -> None:
        self.inner.adapt(runner)
        self.runner = runner

    def memory_tracker(self, cell: Cell) -> RankTracker:
        tracker = self.inner.memory_tracker(cell)
        self.untracked = tracker is None
        options = (
            {}
            if tracker is None
            else dict(budget_bytes=tracker.budget_bytes, rounding=tracker.rounding)
        )
        parameters = self.runner.parameters() if self.runner is not None else ()
        self.counter = RankTracker(self.world, self.rank, parameters, **options)
        # What a runner keeps from step to step outside its parameters, gradients and optimizer
        # state (a pipeline stage's receive buffers), counted from the start of the pass.
        held = self.runner.held_tensors() if self.runner is not None else []
        self.counter.add_existing("activations", held)
        return self.counter

    def time_steps(self, step, count) -> list[float]:
        clock = self.runner.clock if self.runner is not None else None
        if clock is not None:
            clock.reset()
        times = self.inner.time_steps(step, count)
        if clock is not None and sum(times) > 0:
            self.idle = max(0.0, 1.0 - clock.total_ms() / sum(times))
        return times

    def record_peaks(self, result: CellResult) -> None:
        self.inner.record_peaks(result)
        if self.untracked:  # the allocator's peak, as on one device; the pass only counted bytes
            result.breakdown = None
        if self.counter is not None:
            steps = max(1, min(DEFAULT_TRACKER_STEPS, result.cell.steps))  # measure_memory's
            result.sent_bytes_per_step = self.counter.sent_bytes // steps
        result.idle_fraction = self.idle
        self.runner = self.counter = None


_FORWARDED = (
    "name",
    "refusal",
    "session",
    "warmup_steps",
    "error_text",
    "set_memory_budget",
    "check_budget",
    "reset_host_peak",
    "reset_peak_memory",
    "total_memory_bytes",
    "release_cached_memory",
    "synchronize",
    "autocast_precisions",
)
for _name in _FORWARDED:
    setattr(
        RankDevice,
        _name,
        lambda self, *args, _name=_name, **kwargs: getattr(self.inner, _name)(*args, **kwargs),
    )


@dataclasses.dataclass(frozen=True)
class RankTask:
    """What every rank of a measured cell gets: the cell, the device kind and the first GPU."""

    cell: Cell
    kind: str
    first_index: int = 0


def measure_rank(rank: int, world: int, task: RankTask) -> tuple[CellResult, bool]:
    """A rank's measurement (run inside its process group): the protocol on its device; and
    whether it ended ok (a rank that did not stops the others)."""
    inner = CpuDevice() if task.kind == "cpu" else CudaDevice(task.first_index + rank)
    result = run_cell(task.cell, RankDevice(inner, rank, world), count_flops=False)
    return result, result.status == OK


__all__ = ["RankTracker", "RankDevice", "RankTask", "measure_rank", "wire_bytes"]
