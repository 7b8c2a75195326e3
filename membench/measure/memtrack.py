"""A tensor-storage memory tracker: the CPU's (and the estimator's) source of peak memory.

It is a ``TorchDispatchMode``: every op's outputs are inspected, and each storage seen for the
first time counts as an allocation until its Python storage object is collected (PyTorch keeps
one Python object per live storage, so a weakref callback marks the free). Views and in-place ops
reuse a known storage and cost nothing. This is what the CUDA caching allocator's
``max_memory_allocated`` measures too, minus the allocator's rounding, which ``rounding`` adds
back when the tracker predicts a CUDA figure.

We wrote this rather than use ``torch.distributed._tools.mem_tracker.MemTracker`` because we
need three things it does not give together through a public, stable interface: refusing an
allocation past a budget (to emulate a smaller card), running unchanged under ``FakeTensorMode``
with a caller-supplied rounding rule, and a breakdown that does not depend on module hooks (the
FF runners call layers one by one, outside ``Module.__call__`` of any parent).

The breakdown classifies each live storage at the moment of the peak as parameters, gradients,
optimizer state or activations (everything else: saved activations, temporaries, the input
batch). Gradients are recognised through ``register_post_accumulate_grad_hook``, optimizer state
and parameters by being named before the pass starts.

A ``recorder``, when given, is told of every allocation, free and change of category as it
happens (the memory timeline, docs/timeline.md "Recording one step"); without one the tracker
records nothing beyond its peak, so the ordinary pass costs what it did. An ``observer``, when
set, is shown every op the tracker sees with its output (an estimate's FLOP count,
``flops.FlopTally``), so what else must see every op needs no dispatch mode of its own.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..runners.host_memory import is_host_allocation, is_host_storage, tensor_storage
from ..schema import CATEGORIES, MemoryBreakdown
from ..units import format_gib

# (action, storage key, bytes, category): action is "alloc", "free" or "category" (a live
# storage named anew, e.g. an activation that became a parameter's gradient).
Recorder = Callable[[str, int, int, str], None]
# (op, args, kwargs, output) of every op the tracker sees.
Observer = Callable[[object, tuple, dict, object], None]


class MemoryBudgetExceeded(torch.OutOfMemoryError):
    """Raised by the tracker when live tensor bytes would pass the emulated device budget."""


@dataclass(eq=False)
class _Allocation:
    nbytes: int
    category: str = "activations"


def cuda_allocated_size(nbytes: int) -> int:
    """Bytes the CUDA caching allocator reports as allocated for a request of ``nbytes``.

    Every block is rounded up to a multiple of 512 bytes (``kMinBlockSize`` in
    c10/cuda/CUDACachingAllocator.cpp); ``max_memory_allocated`` sums those block sizes.
    """
    return 0 if nbytes == 0 else ((nbytes + 511) // 512) * 512


@dataclass
class _PeakState:
    current_bytes: int = 0
    peak_bytes: int = 0
    peak_allocations: list[_Allocation] = field(default_factory=list)


class TensorMemoryTracker(TorchDispatchMode):
    """Count live tensor storage bytes between ``__enter__`` and ``__exit__``; keep the peak.

    Usage::

        tracker = TensorMemoryTracker(budget_bytes=8 * 2**30)
        tracker.add_existing("parameters", model.parameters())
        tracker.add_existing("optimizer_state", optimizer_state_tensors(optimizer))
        with tracker, tracker.watch_gradients(model.parameters()):
            step()
        tracker.peak_bytes, tracker.peak_breakdown()
    """

    def __init__(
        self,
        budget_bytes: int | None = None,
        rounding: Callable[[int], int] | None = None,
        recorder: Recorder | None = None,
    ):
        super().__init__()
        self.budget_bytes = budget_bytes
        self.rounding = rounding or (lambda nbytes: nbytes)
        self.recorder = recorder
        self.observer: Observer | None = None
        self._live: dict[int, tuple[_Allocation, weakref.ref]] = {}
        self._state = _PeakState()

    # -- accounting ---------------------------------------------------------------------------
    @property
    def current_bytes(self) -> int:
        return self._state.current_bytes

    @property
    def peak_bytes(self) -> int:
        return self._state.peak_bytes

    def reset_peak(self) -> None:
        """Start a new peak window from what is live now."""
        self._state.peak_bytes = self._state.current_bytes
        self._state.peak_allocations = [alloc for alloc, _ in self._live.values()]

    def peak_breakdown(self) -> MemoryBreakdown:
        """Bytes per category among the storages that were live at the peak."""
        breakdown = MemoryBreakdown()
        for alloc in self._state.peak_allocations:
            setattr(breakdown, alloc.category, getattr(breakdown, alloc.category) + alloc.nbytes)
        return breakdown

    def _track(self, t: torch.Tensor, category: str | None = None) -> None:
        storage = tensor_storage(t)
        if storage is None or is_host_allocation() or is_host_storage(storage):
            return
        key = id(storage)
        known = self._live.get(key)
        if known is not None:
            if category is not None and known[0].category == "activations":
                known[0].category = category
                if self.recorder is not None:
                    self.recorder("category", key, known[0].nbytes, category)
            return
        alloc = _Allocation(self.rounding(storage.nbytes()), category or "activations")
        self._live[key] = (alloc, weakref.ref(storage, lambda _ref, k=key: self._free(k)))
        if self.recorder is not None:
            self.recorder("alloc", key, alloc.nbytes, alloc.category)
        state = self._state
        state.current_bytes += alloc.nbytes
        if state.current_bytes > state.peak_bytes:
            state.peak_bytes = state.current_bytes
            state.peak_allocations = [a for a, _ in self._live.values()]
        if self.budget_bytes is not None and state.current_bytes > self.budget_bytes:
            raise MemoryBudgetExceeded(
                f"tracked tensors need {format_gib(state.current_bytes)}, past the "
                f"{format_gib(self.budget_bytes)} device budget"
            )

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._state.current_bytes -= entry[0].nbytes
            if self.recorder is not None:
                self.recorder("free", key, entry[0].nbytes, entry[0].category)

    def add_existing(self, category: str, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that were alive before the tracker started, under ``category``."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; valid: {', '.join(CATEGORIES)}")
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._track(t, category)

    def watch_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> _GradientWatch:
        """Context manager: classify each parameter's ``.grad`` storage as a gradient."""
        return _GradientWatch(self, list(parameters))

    # -- dispatch -----------------------------------------------------------------------------
    def __enter__(self):
        self.opened()
        return super().__enter__()

    def __exit__(self, *exc):
        self.closed()
        return super().__exit__(*exc)

    def opened(self) -> None:
        """Counting begins: entered as a mode of its own, or fed by a ``TrackingFakeTensorMode``
        (``tracking``); a subclass that marks where its pass starts does it here."""

    def closed(self) -> None:
        """Counting ends (either way ``opened`` says)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.saw(func, args, kwargs, out)
        return out

    def saw(self, func, args: tuple, kwargs: dict, out) -> None:
        """One op the tracker sees and its output: every new storage among its outputs counts
        (and the ``observer`` is shown the op)."""
        if self.observer is not None:
            self.observer(func, args, kwargs, out)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)


class TrackingFakeTensorMode(FakeTensorMode):
    """``FakeTensorMode`` that shows its ``tracker`` (when set) every op it is asked for, the way
    a tracker entered above it would see them: each op the step dispatches, with its fake
    output, and none of the ops fake tensors run inside their own implementation (a
    decomposition re-enters the mode one level down). The same counts, without a second Python
    dispatch mode on every op of an estimate's tracked step (about a quarter of a fake step's
    time; docs/estimate.md). A tracker for a cell on several devices stays a mode of its own:
    this mode sees a tensor subclass's (a DTensor's) ops only after the subclass has run them.
    """

    def __init__(self):
        super().__init__()
        self.tracker: TensorMemoryTracker | None = None
        self._depth = 0

    def dispatch(self, func, types, args=(), kwargs=None):
        # FakeTensorMode's own entry point runs every op through ``dispatch``; overriding it
        # rather than ``__torch_dispatch__`` adds no second wrapper of torch's to every op.
        kwargs = kwargs or {}
        self._depth += 1
        try:
            out = super().dispatch(func, types, args, kwargs)
        finally:
            self._depth -= 1
        if self._depth == 0 and self.tracker is not None:
            self.tracker.saw(func, args, kwargs, out)
        return out

    @contextlib.contextmanager
    def tracking(self, tracker: TensorMemoryTracker) -> Iterator[TensorMemoryTracker]:
        """``tracker`` counts every op this mode handles inside the block."""
        self.tracker = tracker
        tracker.opened()
        try:
            yield tracker
        finally:
            tracker.closed()
            self.tracker = None


class _GradientWatch:
    def __init__(self, tracker: TensorMemoryTracker, parameters: list[torch.nn.Parameter]):
        self.tracker, self.parameters, self.handles = tracker, parameters, []

    def __enter__(self) -> _GradientWatch:
        for p in self.parameters:
            if p.requires_grad:
                self.handles.append(p.register_post_accumulate_grad_hook(self._mark))
        return self

    def _mark(self, p: torch.nn.Parameter) -> None:
        if p.grad is not None:
            self.tracker._track(p.grad, "gradients")

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor an optimizer keeps between steps (AdamW's moments and step counts)."""
    return [
        v
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    ]
