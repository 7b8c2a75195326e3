"""Recording one step's memory over time: the phase of the step each event happens in, and the
tensor tracker's events into a ``Timeline`` (docs/timeline.md, "Phases").

Phases come from PyTorch's own public hooks, so no runner has to mark anything:

- global module forward hooks (``register_module_forward_pre_hook`` / ``..._hook``) say which
  module's forward runs, named by its place in the runner's modules (``backbone.blocks.3.0``)
  whichever module the runner calls: the FF runners call layers one by one, never their
  model's ``forward``. A forward that runs inside the backward pass is ``torch.utils.
  checkpoint`` recomputing it.
- a gradient hook on each module output (``Tensor.register_hook``) says which module's
  backward has begun: the last whose output's gradient arrived;
- the global optimizer step hooks (``register_optimizer_step_pre_hook`` / ``..._post_hook``)
  say when an optimizer steps, whoever calls it (a runner, a GradScaler).

``torch.utils.module_tracker.ModuleTracker`` does the first two, but not without changing what
it measures: the multi-grad hooks it puts on every module's inputs and outputs hold their
autograd nodes in a reference cycle, so a graph recomputed by checkpointing outlives its use
until the garbage collector runs (+27 % peak on a small bp-ckpt cell). These hooks hold only a
name. All of them work on fake tensors and inside checkpoint recomputation
(tests/timeline/test_timeline.py).
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from ..measure.memtrack import TensorMemoryTracker
from .events import ALLOC, FREE, Frame, Phase, Timeline, layer_of

# The tracker's and the recorder's own frames, left out of an allocation's stack.
_OWN_FILES = (str(Path(__file__).with_name("memtrack.py")), __file__)


def _graph_task() -> int:
    """The running backward pass's id, -1 outside one (what ModuleTracker.is_bw reads)."""
    return torch._C._current_graph_task_id()


class PhaseTracker:
    """Where a step is now: ``current()`` is the index of its ``Phase`` in ``phases``.

    The phase is ``optimizer`` inside an optimizer's step; otherwise ``backward`` inside
    autograd's backward pass (``recompute`` while a module's forward runs there), ``forward``
    while a module's forward runs, and ``other`` for work outside every module (losses,
    clipping, pooling of features). The module is the innermost one running (in backward: the
    last whose backward began); the layer is that module's, else the last layer that ran.
    """

    def __init__(self, runner):
        self._names = {}
        for root in runner.modules():
            for name, module in root.named_modules():
                self._names.setdefault(module, name or type(root).__name__)
        owner = {p: name for root in runner.modules() for name, p in root.named_parameters()}
        self._optimizer_phases = {}
        for index, optimizer in enumerate(runner.optimizers()):
            layers = {
                layer_of(owner.get(p, ""))
                for group in optimizer.param_groups
                for p in group["params"]
            }
            layer = layers.pop() if len(layers) == 1 else None
            self._optimizer_phases[optimizer] = Phase("optimizer", layer, f"optimizer[{index}]")
        self._stepping: list[Phase] = []
        self._running: list[str] = []  # the modules whose forward runs, innermost last
        self._backward = (-1, "")  # (backward pass, module) of the last module backward begun
        self._hooked = WeakIdKeyDictionary()  # module outputs given a gradient hook
        self._last_layer: int | None = None
        self._index: dict[Phase, int] = {}
        self.phases: list[Phase] = []
        self._handles: list = []

    def current(self) -> int:
        """The index in ``phases`` of the phase the step is in now."""
        if self._stepping:
            phase = self._stepping[-1]
        else:
            task = _graph_task()
            if task == -1:
                kind, module = ("forward" if self._running else "other"), ""
            else:
                kind = "recompute" if self._running else "backward"
                module = self._backward[1] if self._backward[0] == task else ""
            module = self._running[-1] if self._running else module
            layer = layer_of(module)
            self._last_layer = layer = self._last_layer if layer is None else layer
            phase = Phase(kind, layer, module)
        index = self._index.get(phase)
        if index is None:
            index = self._index[phase] = len(self.phases)
            self.phases.append(phase)
        return index

    def _entered(self, module, args) -> None:
        self._running.append(self._names.get(module, type(module).__name__))

    def _left(self, module, args, output) -> None:
        name = self._running.pop() if self._running else ""
        if _graph_task() != -1:
            return  # a recomputation: its outputs' gradients never flow
        for t in tree_leaves(output):
            # A tensor a parent module passes on as its own output keeps its innermost name.
            if isinstance(t, torch.Tensor) and t.requires_grad and t not in self._hooked:
                self._hooked[t] = True
                t.register_hook(partial(self._backward_began, name))

    def _backward_began(self, name: str, grad) -> None:
        self._backward = (_graph_task(), name)

    def _step_started(self, optimizer, args, kwargs) -> None:
        self._stepping.append(self._optimizer_phases.get(optimizer, Phase("optimizer")))

    def _step_done(self, optimizer, args, kwargs) -> None:
        if self._stepping:
            self._stepping.pop()

    def __enter__(self) -> PhaseTracker:
        self._handles = [
            register_module_forward_pre_hook(self._entered),
            # always_call: checkpointing stops a recomputation by raising
            # inside the forward, which must still count as leaving the module
            register_module_forward_hook(self._left, always_call=True),
            register_optimizer_step_pre_hook(self._step_started),
            register_optimizer_step_post_hook(self._step_done),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class EventRecorder:
    """The tensor tracker's recorder for one step: what is live when the step starts is the
    baseline; from then on every allocation and free, with its phase (and, with ``frames``,
    its Python stack), until the step ends. Events after that (a storage collected later) are
    ignored. A storage named anew while live (an output that became a gradient) takes its new
    category from its allocation on, as the tracker's breakdown counts it."""

    def __init__(self, phases: PhaseTracker, frames: bool = False):
        self.phases, self.frames = phases, frames
        self.timeline = Timeline(source="", keep_snapshot=frames)
        self._before: dict[int, tuple[int, str]] = {}  # key -> (bytes, category)
        self._allocated: dict[int, int] = {}  # key -> index of its alloc event, while live
        self._stacks: dict[tuple[Frame, ...], int] = {}
        self._state = "before"

    def __call__(self, action: str, key: int, nbytes: int, category: str) -> None:
        if self._state == "recording":
            self._record(action, key, nbytes, category)
        elif self._state == "before":
            if action == FREE:
                self._before.pop(key, None)
            else:
                self._before[key] = (nbytes, category)

    def _record(self, action: str, key: int, nbytes: int, category: str) -> None:
        events = self.timeline.events
        if action == "category":
            if key in self._allocated:
                event = events[self._allocated[key]]
                events[self._allocated[key]] = (*event[:3], category, *event[4:])
            elif key in self._before:
                self._before[key] = (nbytes, category)
            return
        if action == ALLOC:
            self._allocated[key] = len(events)
        else:
            self._allocated.pop(key, None)
        stack = self._stack() if self.frames and action == ALLOC else -1
        events.append((action, key, nbytes, category, self.phases.current(), stack))

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """The recorded step: events inside it are the timeline."""
        with self.phases:
            self._state = "recording"
            try:
                yield
            finally:
                self._state = "after"
        self.timeline.baseline = [(key, *value) for key, value in self._before.items()]
        self.timeline.phases = list(self.phases.phases)

    def _stack(self) -> int:
        frames = tuple(
            (f.f_code.co_filename, line, f.f_code.co_name)
            for f, line in traceback.walk_stack(None)
            if f.f_code.co_filename not in _OWN_FILES
        )
        index = self._stacks.get(frames)
        if index is None:
            index = self._stacks[frames] = len(self.timeline.stacks)
            self.timeline.stacks.append(frames)
        return index


def record_tracked_step(
    prepared, tracker: TensorMemoryTracker, source: str, frames: bool = False
) -> Timeline:
    """One more step of a prepared cell (``protocol.PreparedCell``) under ``tracker``, its
    events recorded: the timeline of the CPU and of estimates."""
    recorder = EventRecorder(PhaseTracker(prepared.runner), frames)
    tracker.recorder = recorder
    prepared.tracked(tracker, 1, during=recorder.step())
    recorder.timeline.source = source
    return recorder.timeline


class PhaseMarks(TorchDispatchMode):
    """Where the phase changes, op by op: ``marks`` are (microseconds since the epoch, phase
    index), the clock of the CUDA allocator's ``time_us``, so its history can be placed in
    phases afterwards (``snapshot.timeline_from_cuda``)."""

    def __init__(self, phases: PhaseTracker):
        super().__init__()
        self.phases = phases
        self.marks: list[tuple[int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        index = self.phases.current()
        if not self.marks or self.marks[-1][1] != index:
            self.marks.append((time.time_ns() // 1000, index))
        return func(*args, **(kwargs or {}))


def storage_categories(live: list[tuple[str, list[torch.Tensor]]]) -> dict[int, str]:
    """Data pointer -> category of the storages a cell holds (``PreparedCell.live_tensors``);
    the first category named wins, as in the tracker."""
    found: dict[int, str] = {}
    for category, tensors in live:
        for t in tensors:
            found.setdefault(t.untyped_storage().data_ptr(), category)
    return found


__all__ = [
    "EventRecorder",
    "PhaseMarks",
    "PhaseTracker",
    "record_tracked_step",
    "storage_categories",
]
