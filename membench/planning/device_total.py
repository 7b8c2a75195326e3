"""What the card must hold for a step: the device total and its terms (docs/device-total.md).

    device total = peak reserved + context
                 = peak allocated (tensors) + workspace + reserve slack + context

- **peak allocated**: the step's tensors at their peak (the estimate's ``peak_allocated_bytes``);
- **workspace**: how much library workspaces (cuBLAS's per handle, cuDNN's per convolution call,
  ``workspace.py``) raise the peak of requested bytes above the tensors' peak;
- **reserve slack**: what PyTorch's caching allocator reserves beyond that requested peak (block
  rounding, segment sizes, cached blocks that cannot serve the next request): the allocator
  model's replay of the step (``planning.allocator``, docs/allocator.md);
- **context**: what the process holds outside the allocator (the device profile's figure).

``replay_step`` replays a step's stream (``step_stream.StreamTracker``) through the allocator
model with the workspaces in place: the cuBLAS workspaces are allocated when the steps begin
(they were allocated at the first GEMM of warmup and are never freed), each convolution's
workspace around its call. A convolution workspace that does not fit under a capacity is
skipped, as PyTorch falls back to a plan that needs less (workspace.py); any other allocation
that does not fit, after the allocator has released what it caches, is out of memory. The
recorded steps are then repeated (``repeated_steps``) until a repetition reserves nothing more:
a real run's timed steps find the segments its earlier steps left cached, and a step can need a
segment the step before it did not (docs/device-total.md, "The estimate: the step replayed
through the allocator").

This module imports no torch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..schema import FIT_BY
from .allocator.conf import AllocatorConfig, parse_alloc_conf
from .allocator.model import CachingAllocatorModel, ModelledOutOfMemory
from .workspace import ConvCall, conv_workspace_bytes

if TYPE_CHECKING:
    from .device_profiles import DeviceProfile

START = ("start",)  # in a stream: where the tracked steps begin (what came before was live)
# The terms of the device total, bottom to top: the order a budget is filled in, so the first
# whose running sum passes the budget is the one that decides.
TERMS = ("tensors", "workspace", "reserve_slack", "context")
TERM_LABELS = {
    "tensors": "the tensors (peak allocated)",
    "workspace": "the workspaces",
    "reserve_slack": "the allocator's reserve slack",
    "context": "the CUDA context",
}
# What each way of judging a budget counts, of the terms.
JUDGED_TERMS = {"total": TERMS, "reserved": TERMS[:3], "allocated": TERMS[:1]}
# At most this many repetitions of the recorded steps after them (``repeated_steps``). Replays
# of ten classifiers and VGG11 (bp, bp-accum, bp-ckpt) stopped growing after one; the bound
# keeps a stream whose reserve creeps up step after step from running on.
MAX_REPEATS = 3


@dataclass(frozen=True)
class Workspaces:
    """The library workspaces of one replay: ``cublas_count`` persistent cuBLAS workspaces of
    ``cublas_bytes`` each, and each convolution's as ``conv_ratio`` x its lowered matrix."""

    cublas_bytes: int = 0
    cublas_count: int = 0
    conv_ratio: float = 0.0

    def conv(self, call: ConvCall) -> int:
        return conv_workspace_bytes(call, self.conv_ratio)


@dataclass(frozen=True)
class StepReplay:
    """What one replay of a step reserved and requested. Bytes."""

    peak_reserved: int
    peak_requested: int  # tensors and workspaces, the sizes asked for
    fragmentation: int  # reserved - allocated right after the reserve's peak
    out_of_memory: bool = False  # an allocation did not fit the capacity
    skipped_workspaces: int = 0  # the recorded steps' conv workspaces that did not fit
    repeats: int = 0  # repetitions of the recorded steps replayed after them


@dataclass(frozen=True)
class _Steps:
    """The recorded steps (what follows ``START``) as a unit that can run again: what was live
    before them and is freed in them (``pre_freed``: its index in ``steps`` -> the index of the
    survivor that takes its place; a free no survivor replaces is not in it), and what they
    allocate and leave live (``survivors``: the indexes of its allocations in ``steps``)."""

    steps: list
    pre_freed: dict[int, int]
    survivors: list[int]

    @property
    def kept(self) -> list[int]:
        """The survivors (their indexes in ``survivors``) that take no block's place."""
        replacing = set(self.pre_freed.values())
        return [n for n in range(len(self.survivors)) if n not in replacing]


def repeated_steps(events: list) -> _Steps | None:
    """The recorded steps of a stream as a unit that repeats, or None where there are none (no
    ``START``) or they free a block the stream never allocated.

    A repetition frees, in place of each block that was live before the steps, a survivor of
    the same size: the n-th freed of a size, the n-th allocated survivor of that size. Which of
    several equal blocks it is only moves blocks of one size about; replays of two recorded
    steps and of one step and its repetition reserved the same bytes for the cells
    docs/device-total.md names. Two kinds of block take part once only:

    - a block live before the steps and freed in them that no survivor of its size replaces
      (something from before the steps that the steps let go of: a repetition has none of it
      to free);
    - a survivor that takes no block's place (``kept``: what a runner keeps from one step into
      the next, or gradients a first backward pass created). A repetition frees it as it
      begins, the earliest moment a real step could.

    So a repetition starts from no more bytes than the recorded steps started from and requests
    no more than they did (its requested peak stays the tensors' peak, which the workspace term
    is measured from)."""
    start = next((i for i, event in enumerate(events) if event is START), None)
    if start is None:
        return None
    live_before: dict = {}
    for event in events[:start]:
        if event[0] == "alloc":
            live_before[event[1]] = event[2]
        else:
            live_before.pop(event[1], None)
    steps = events[start + 1 :]
    live: dict = {}  # key -> its allocation's index in steps
    freed_before: list[tuple[int, int]] = []  # (index in steps, bytes) of frees of live_before
    for index, event in enumerate(steps):
        if isinstance(event, ConvCall):
            continue
        if event[0] == "alloc":
            live[event[1]] = index
        elif event[1] in live:
            del live[event[1]]
        elif event[1] in live_before:
            freed_before.append((index, live_before.pop(event[1])))
        else:
            return None  # a free of a block never allocated: nothing to repeat it by
    survivors = sorted(live.values())
    by_size: dict[int, list[int]] = defaultdict(list)
    for position, index in enumerate(survivors):
        by_size[steps[index][2]].append(position)
    pre_freed = {index: by_size[size].pop(0) for index, size in freed_before if by_size[size]}
    return _Steps(steps, pre_freed, survivors)


def _repetition(unit: _Steps, number: int, previous: list) -> Iterator:
    """The events of repetition ``number`` of ``unit``: first the frees of the last run's
    ``kept`` survivors, then the steps with fresh keys (``(number, index)``, never a tracker's),
    each free of a block live before the steps a free of the survivor of ``previous`` (the keys
    of the last run's survivors) that takes its place, or none where none does."""
    for position in unit.kept:
        yield ("free", previous[position], unit.steps[unit.survivors[position]][2])
    live: dict = {}
    for index, event in enumerate(unit.steps):
        if isinstance(event, ConvCall):
            yield event
        elif event[0] == "alloc":
            live[event[1]] = (number, index)
            yield ("alloc", (number, index), event[2])
        elif event[1] in live:
            yield ("free", live.pop(event[1]), event[2])
        elif index in unit.pre_freed:
            yield ("free", previous[unit.pre_freed[index]], event[2])


def replay_step(
    events: Iterable,
    config: AllocatorConfig,
    workspaces: Workspaces,
    capacity: int | None = None,
    device_memory: int | None = None,
) -> StepReplay:
    """Replay a step's stream through the caching-allocator model, then its steps again until a
    repetition reserves nothing more, at most ``MAX_REPEATS`` times (module docstring);
    ``capacity``: the bytes the allocator can get (None: no limit)."""
    events = list(events)
    model = CachingAllocatorModel(config, capacity, device_memory)
    run = _Run(model, workspaces)
    try:
        run.replay(events)
        unit = repeated_steps(events)
        previous = [] if unit is None else [unit.steps[i][1] for i in unit.survivors]
        for number in range(MAX_REPEATS if unit is not None else 0):
            reserved = model.peak_reserved
            run.replay(_repetition(unit, number, previous), recorded=False)
            run.repeats += 1
            previous = [(number, index) for index in unit.survivors]
            if model.peak_reserved == reserved:
                break
    except ModelledOutOfMemory:
        return run.result(out_of_memory=True)
    return run.result()


class _Run:
    """One replay's allocator model and what it has counted so far."""

    def __init__(self, model: CachingAllocatorModel, workspaces: Workspaces):
        self.model, self.workspaces = model, workspaces
        self.blocks: dict = {}
        self.skipped = self.repeats = self.index = 0

    def replay(self, events: Iterable, recorded: bool = True) -> None:
        """Each event through the model; ModelledOutOfMemory where one does not fit.
        ``recorded``: the recorded steps, whose skipped workspaces are counted (a repetition
        skips the same ones, or more where it finds less room)."""
        model = self.model
        for event in events:
            model.event_index = self.index
            self.index += 1
            if event is START:
                for _ in range(self.workspaces.cublas_count):
                    model.malloc(self.workspaces.cublas_bytes)  # held until the process ends
            elif isinstance(event, ConvCall):
                skipped = conv_workspace(model, self.workspaces.conv(event))
                self.skipped += skipped if recorded else 0
            elif event[0] == "alloc":
                self.blocks[event[1]] = model.malloc(event[2])
            else:
                block = self.blocks.pop(event[1])
                if block is not None:
                    model.free(block)

    def result(self, out_of_memory: bool = False) -> StepReplay:
        model = self.model
        fragmentation = model.at_peak.fragmentation if model.at_peak is not None else 0
        return StepReplay(
            model.peak_reserved,
            model.peak_requested,
            fragmentation,
            out_of_memory,
            self.skipped,
            self.repeats,
        )


def conv_workspace(model: CachingAllocatorModel, size: int) -> int:
    """A convolution's workspace, allocated and freed around its call; 1 when it does not fit
    and PyTorch would fall back to a plan that needs less (workspace.py), else 0."""
    if not size:
        return 0
    try:
        model.free(model.malloc(size))
    except ModelledOutOfMemory:
        return 1
    return 0


@dataclass(frozen=True)
class DeviceTerms:
    """A step's device total and its terms (module docstring). Bytes."""

    tensors: int
    workspace: int
    reserve_slack: int
    context: int
    fragmentation: int = 0
    out_of_memory: bool = False  # the replay under the budget ran out of memory

    @property
    def peak_reserved(self) -> int:
        return self.tensors + self.workspace + self.reserve_slack

    @property
    def total(self) -> int:
        return self.peak_reserved + self.context

    def as_columns(self) -> dict[str, int]:
        """The row's columns of these terms."""
        return {
            "peak_reserved_bytes": self.peak_reserved,
            "device_total_bytes": self.total,
            "context_bytes": self.context,
            "workspace_bytes": self.workspace,
            "reserve_slack_bytes": self.reserve_slack,
        }


def terms_of(tensors: int, replay: StepReplay, context: int) -> DeviceTerms:
    """The terms of a replay whose tensors peak at ``tensors`` bytes."""
    return DeviceTerms(
        tensors,
        replay.peak_requested - tensors,
        replay.peak_reserved - replay.peak_requested,
        context,
        replay.fragmentation,
        replay.out_of_memory,
    )


def step_terms(
    events: Iterable,
    *,
    tensors: int,
    gemm_threads: Iterable[str],
    profile: DeviceProfile,
    alloc_conf: str = "",
    benchmark: bool = False,
    budget: int | None = None,
    fit_by: str = "total",
) -> DeviceTerms:
    """The device terms of a recorded step (``step_stream.StreamTracker``'s ``events`` and
    ``gemm_threads``; ``tensors``: its tensor peak) on ``profile``'s card, the allocator under
    ``alloc_conf``, convolutions with ``cudnn.benchmark`` as ``benchmark`` says.

    With a ``budget`` the step is judged as ``fit_by`` says; when its figure is over the budget
    the step is replayed again with the budget as the allocator's capacity (less the context
    for ``total``), where PyTorch would free cached blocks before failing: if that replay runs
    through, its terms are the step's (it fits); if not, ``out_of_memory`` is set and the terms
    are the full, unlimited ones."""
    config = parse_alloc_conf(alloc_conf)
    workspaces = Workspaces(
        int(profile.cublas_workspace.value),
        len(set(gemm_threads)),
        profile.conv_workspace_ratio(benchmark).value,
    )
    context, memory = profile.context_bytes(), int(profile.memory.value)
    events = list(events)
    terms = terms_of(tensors, replay_step(events, config, workspaces, None, memory), context)
    judged = {"total": terms.total, "reserved": terms.peak_reserved, "allocated": tensors}
    if budget is None or judged[fit_by] <= budget or fit_by == "allocated":
        return terms
    capacity = budget - (context if fit_by == "total" else 0)
    if capacity <= 0:
        return replace(terms, out_of_memory=True)
    capped = replay_step(events, config, workspaces, capacity, memory)
    if capped.out_of_memory:
        return replace(terms, out_of_memory=True)
    return terms_of(tensors, capped, context)


def judged_bytes(values: Mapping[str, int | None], fit_by: str) -> int | None:
    """The figure a budget judges by (``schema.FIT_BY``), from a row's columns or a mapping
    with ``peak_allocated_bytes``, ``peak_reserved_bytes``, ``device_total_bytes``; None where
    the row lacks it."""
    column = {
        "total": "device_total_bytes",
        "reserved": "peak_reserved_bytes",
        "allocated": "peak_allocated_bytes",
    }
    if fit_by not in column:
        raise ValueError(f"unknown fit_by {fit_by!r}; valid: {', '.join(FIT_BY)}")
    return values.get(column[fit_by])


def term_values(values: Mapping[str, int | None]) -> dict[str, int | None]:
    """The four terms of a row's columns, by term name."""
    return {
        "tensors": values.get("peak_allocated_bytes"),
        "workspace": values.get("workspace_bytes"),
        "reserve_slack": values.get("reserve_slack_bytes"),
        "context": values.get("context_bytes"),
    }


def deciding_term(values: Mapping[str, int | None], budget: int, fit_by: str = "total") -> str:
    """The term that decides a budget: filling the budget term by term (tensors, workspace,
    reserve slack, context; only those ``fit_by`` counts), the first whose running sum passes
    it; for a row that fits, the largest term. '' when the row lacks its terms."""
    terms = term_values(values)
    counted = [(name, terms[name]) for name in JUDGED_TERMS[fit_by]]
    if any(value is None for _, value in counted):
        return ""
    running = 0
    for name, value in counted:
        running += value
        if running > budget:
            return name
    return max(counted, key=lambda item: item[1])[0]


def describe_terms(values: Mapping[str, int | None], fit_by: str = "total") -> str:
    """'tensors 6.90 + workspaces 0.05 + allocator reserve slack 0.80 + CUDA context 0.42 GiB':
    the terms ``fit_by`` counts, in GiB."""
    terms = term_values(values)
    parts = [
        f"{name.replace('_', ' ')} {terms[name] / 2**30:.2f}"
        for name in JUDGED_TERMS[fit_by]
        if terms[name] is not None
    ]
    return " + ".join(parts) + " GiB"


__all__ = [
    "DeviceTerms",
    "JUDGED_TERMS",
    "MAX_REPEATS",
    "START",
    "StepReplay",
    "TERMS",
    "TERM_LABELS",
    "Workspaces",
    "deciding_term",
    "describe_terms",
    "judged_bytes",
    "repeated_steps",
    "replay_step",
    "step_terms",
    "terms_of",
]
