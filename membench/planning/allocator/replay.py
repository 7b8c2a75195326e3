"""Replaying a stream of allocations and frees through the caching-allocator model, and the
model's segments laid out as ``torch.cuda.memory._snapshot()`` lists them (docs/allocator.md).

The planner's entry point::

    events = [Alloc("x", 6 << 20), Alloc("y", 30 << 20), Free("x")]
    result = replay(events, parse_alloc_conf("expandable_segments:True"))
    result.peak_reserved, result.at_peak.fragmentation
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from membench.errors import InputError

from .blocks import Block
from .conf import AllocatorConfig
from .model import CachingAllocatorModel, ModelledOutOfMemory, PeakState


class Alloc(NamedTuple):
    """Allocate ``size`` bytes on ``stream`` (any hashable: PyTorch's cudaStream_t value)."""

    key: Hashable  # names the allocation for its Free
    size: int
    stream: Hashable = 0


class Free(NamedTuple):
    """Free the allocation ``key`` (its block returns to the cache at once)."""

    key: Hashable


class EmptyCache(NamedTuple):
    """``torch.cuda.empty_cache()``."""


class ReplayError(InputError):
    """An event stream the model cannot replay (a free of a key never allocated, ...)."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay reserved and allocated. Bytes; ``allocated`` counts block sizes (as
    ``torch.cuda.max_memory_allocated``), ``requested`` the sizes asked for."""

    peak_reserved: int
    peak_allocated: int
    peak_requested: int
    at_peak: PeakState | None  # None: nothing was reserved
    final_reserved: int
    final_allocated: int
    events: int  # events replayed (up to and including an out-of-memory one)
    out_of_memory_at: int | None = None  # index of the allocation that failed under capacity


def replay(
    events: Iterable,
    config: AllocatorConfig | None = None,
    capacity: int | None = None,
    device_memory: int | None = None,
    model: CachingAllocatorModel | None = None,
) -> ReplayResult:
    """Replay ``events`` (``Alloc``, ``Free``, ``EmptyCache``) through a fresh model of one
    device's allocator (or ``model``), stopping at an allocation that does not fit ``capacity``."""
    model = model or CachingAllocatorModel(config, capacity, device_memory)
    live: dict[Hashable, Block | None] = {}
    index = -1
    for index, event in enumerate(events):
        model.event_index = index
        kind = type(event)
        if kind is Alloc:
            if event.key in live:
                raise ReplayError(f"event {index}: {event.key!r} allocated twice")
            try:
                live[event.key] = model.malloc(event.size, event.stream)
            except ModelledOutOfMemory:
                return replay_result(model, index + 1, out_of_memory_at=index)
        elif kind is Free:
            if event.key not in live:
                raise ReplayError(f"event {index}: free of {event.key!r}, which is not allocated")
            block = live.pop(event.key)
            if block is not None:
                model.free(block)
        elif kind is EmptyCache:
            model.empty_cache()
        else:
            raise ReplayError(f"event {index}: {event!r} is not an Alloc, Free or EmptyCache")
    return replay_result(model, index + 1)


def replay_result(
    model: CachingAllocatorModel, events: int, out_of_memory_at: int | None = None
) -> ReplayResult:
    """The figures of ``model`` after ``events`` events."""
    return ReplayResult(
        model.peak_reserved,
        model.peak_allocated,
        model.peak_requested,
        model.at_peak,
        model.reserved,
        model.allocated,
        events,
        out_of_memory_at,
    )


@dataclass(frozen=True)
class BlockLayout:
    offset: int  # from the start of its segment
    size: int
    state: str  # "active_allocated", "active_pending_free" or "inactive", as the snapshot says
    requested_size: int | None  # what was asked for, for an allocated block (else None)


@dataclass(frozen=True)
class SegmentLayout:
    """One segment as ``torch.cuda.memory._snapshot()['segments']`` lists it, reduced to what
    the allocator decides: where its blocks start, their sizes and states."""

    address: int
    stream: Hashable
    segment_type: str  # "small" or "large"
    is_expandable: bool
    total_size: int
    blocks: tuple[BlockLayout, ...]


def model_layout(
    model: CachingAllocatorModel,
    addresses: Mapping | None = None,
    pending_free: frozenset = frozenset(),
) -> list[SegmentLayout]:
    """The model's segments by address, each expandable segment split into its mapped runs
    (``DeviceCachingAllocator::snapshot``). ``addresses`` maps a segment to its real address
    (else the model's made-up one); a block whose address is in ``pending_free`` is shown as
    awaiting its free."""
    out = []
    for head in model.segment_heads():
        segment = head.segment
        base = addresses.get(segment, segment.address) if addresses else segment.address
        block = head
        while block is not None:
            run = []
            while block is not None and not block.mapped:
                block = block.next
            start = block.offset if block is not None else 0
            while block is not None and block.mapped:
                run.append(_block_layout(block, start, base, pending_free))
                block = block.next
            if run:
                out.append(
                    SegmentLayout(
                        base + start,
                        segment.stream,
                        "small" if segment.small else "large",
                        segment.expandable,
                        sum(b.size for b in run),
                        tuple(run),
                    )
                )
    return sorted(out, key=lambda s: s.address)


def _block_layout(block: Block, start: int, base: int, pending_free: frozenset) -> BlockLayout:
    if not block.allocated:
        return BlockLayout(block.offset - start, block.size, "inactive", None)
    state = "active_pending_free" if base + block.offset in pending_free else "active_allocated"
    return BlockLayout(block.offset - start, block.size, state, block.requested)


def layout_differences(model: list[SegmentLayout], real: list[SegmentLayout]) -> list[str]:
    """Where two layouts differ, one line each (empty: byte for byte the same)."""
    found = []
    by_address = {s.address: s for s in real}
    for segment in model:
        other = by_address.pop(segment.address, None)
        if other is None:
            found.append(
                f"segment {segment.address:#x} ({segment.total_size} B) is only in the model"
            )
        elif other != segment:
            found.append(
                f"segment {segment.address:#x} differs: model {_brief(segment)}, "
                f"real {_brief(other)}"
            )
    found += [
        f"segment {s.address:#x} ({s.total_size} B) is only in the real snapshot"
        for s in by_address.values()
    ]
    return found


def _brief(segment: SegmentLayout) -> str:
    blocks = " ".join(f"{b.offset}+{b.size}:{b.state}" for b in segment.blocks)
    return (
        f"{segment.segment_type} stream={segment.stream} expandable={segment.is_expandable} "
        f"{segment.total_size} B [{blocks}]"
    )
