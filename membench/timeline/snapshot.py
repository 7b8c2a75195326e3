"""PyTorch memory snapshots and timelines, both ways (docs/timeline.md).

- ``synthesize_snapshot``: a ``Timeline`` recorded by the tensor tracker (the CPU, estimates) as
  the dictionary ``torch.cuda.memory._snapshot()`` returns, so PyTorch's own viewers open it
  (``python -m torch.cuda._memory_viz``, pytorch.org/memory_viz): ``device_traces`` with one
  ``alloc`` per allocation and ``free_requested`` + ``free_completed`` per free, each with its
  size, category and Python frames where they were recorded, ``segments`` holding what is live at
  the end, and a last ``snapshot`` entry (the allocator records one when a snapshot is taken)
  of the category PyTorch's viewer requires (``VIEWER_CATEGORY``). Addresses are made up (a bump
  pointer, aligned to the CUDA allocator's 512 bytes, never reused), so the viewer's layout of
  segments means nothing; the timeline does.
  ``torch.cuda._memory_viz._profile_to_snapshot`` builds the same format from a profile.
- ``timeline_from_cuda``: the CUDA allocator's history of a step as a ``Timeline``, its entries
  placed in phases by their ``time_us`` and in categories by the data pointers of what the cell
  held before and after the step.

Plain dictionaries only: no torch, so the sweep process writes snapshots without importing it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from .events import ALLOC, FREE, Phase, Timeline

# PyTorch's viewer (MemoryViz.js, its annotate_snapshot; docs/timeline.md, "Files")
# colours an allocation it knows only from `segments` (here: live through the whole step) as
# 'unknown' and needs that name among the trace's categories, else it throws and draws nothing.
VIEWER_CATEGORY = "unknown"
ALIGNMENT = 512  # the CUDA caching allocator's smallest block (memtrack.cuda_allocated_size)
BASE_ADDRESS = 0x7F0000000000  # where made-up addresses start: looks like a device address
LARGE_SEGMENT = 2**20  # the allocator's 'large' pool takes blocks over 1 MiB


def _frames(timeline: Timeline, stack: int) -> list[dict]:
    if stack < 0:
        return []
    return [{"filename": f, "line": line, "name": name} for f, line, name in timeline.stacks[stack]]


def _segment(address: int, size: int, frames: list[dict]) -> dict:
    """One segment holding one live block, as ``_snapshot()`` describes a segment."""
    block = {
        "address": address,
        "size": size,
        "requested_size": size,
        "state": "active_allocated",
        "frames": frames,
    }
    return {
        "device": 0,
        "address": address,
        "total_size": size,
        "stream": 0,
        "segment_type": "large" if size > LARGE_SEGMENT else "small",
        "segment_pool_id": (0, 0),
        "allocated_size": size,
        "active_size": size,
        "requested_size": size,
        "blocks": [block],
    }


def synthesize_snapshot(timeline: Timeline) -> dict:
    """A tracker-recorded ``timeline`` as a PyTorch memory snapshot (see the module docstring).
    Storages of no bytes are left out: the allocator never hands out an empty block."""
    next_address = BASE_ADDRESS
    live: dict[int, tuple[int, int, str, list[dict]]] = {}  # key -> address, size, category, frames

    def place(key: int, size: int, category: str, frames: list[dict]) -> int:
        nonlocal next_address
        address = next_address
        next_address += -(-size // ALIGNMENT) * ALIGNMENT
        live[key] = (address, size, category, frames)
        return address

    for key, size, category in timeline.baseline:
        if size:
            place(key, size, category, [])
    trace = []
    for action, key, size, category, _, stack in timeline.events:
        if action == ALLOC and size:
            frames = _frames(timeline, stack)
            trace.append(
                {
                    "action": "alloc",
                    "addr": place(key, size, category, frames),
                    "size": size,
                    "stream": 0,
                    "frames": frames,
                    "category": category,
                }
            )
        elif action == FREE and key in live:
            address, size, category, frames = live.pop(key)
            trace += [
                {
                    "action": done,
                    "addr": address,
                    "size": size,
                    "stream": 0,
                    "frames": frames,
                    "category": category,
                }
                for done in ("free_requested", "free_completed")
            ]
    segments = [
        _segment(address, size, frames) for address, size, _, frames in sorted(live.values())
    ]
    trace.append(
        {
            "action": "snapshot",
            "addr": 0,
            "size": sum(segment["allocated_size"] for segment in segments),
            "stream": 0,
            "frames": [],
            "category": VIEWER_CATEGORY,
        }
    )
    return {"segments": segments, "device_traces": [trace]}


def _blocks(snapshot: Mapping, device: int) -> dict[int, int]:
    """Address -> size of every block in use on ``device`` when the snapshot was taken."""
    found = {}
    for segment in snapshot.get("segments", []):
        if segment.get("device", device) != device:
            continue
        address = segment["address"]
        for block in segment["blocks"]:
            if block["state"] == "active_allocated":
                found[block.get("address", address)] = block["size"]
            address = block.get("address", address) + block["size"]
    return found


def timeline_from_cuda(
    snapshot: Mapping,
    device: int,
    categories: tuple[Mapping[int, str], Mapping[int, str]],
    marks: Sequence[tuple[int, int]],
    phases: Sequence[Phase],
    keep_snapshot: bool = False,
) -> Timeline:
    """The allocator's history of one step (``device_traces[device]`` of a snapshot taken right
    after it) as a Timeline. ``categories``: data pointer -> category of what the cell held
    before and after the step (an allocation still live at an address held after the step, a
    gradient say, is of that category from its allocation on; any other is an activation).
    ``marks``: (time_us, phase index) where the phase changed (``phases.PhaseMarks``)."""
    before, after = categories
    traces = snapshot.get("device_traces", [])
    entries = [
        e
        for e in (traces[device] if device < len(traces) else [])
        if e["action"] in ("alloc", "free_completed")
    ]
    phases = list(phases) + [Phase("other")]  # for entries before the first mark
    times = [t for t, _ in marks]
    timeline = Timeline(
        source="cuda_allocator",
        phases=phases,
        snapshot=dict(snapshot) if keep_snapshot else None,
        keep_snapshot=keep_snapshot,
    )
    live: dict[int, int] = {}  # address -> index of its alloc event
    baseline: dict[int, int] = {}
    for entry in entries:
        address, size = entry["addr"], entry["size"]
        at = bisect.bisect_right(times, entry.get("time_us", 0)) - 1
        phase = marks[at][1] if at >= 0 else len(phases) - 1
        if entry["action"] == "alloc":
            live[address] = len(timeline.events)
            timeline.events.append((ALLOC, address, size, "activations", phase, -1))
        else:
            if live.pop(address, None) is None:
                baseline[address] = size  # allocated before the step began
            category = before.get(address, "activations")
            timeline.events.append((FREE, address, size, category, phase, -1))
    for address, size in _blocks(snapshot, device).items():
        if address not in live:
            baseline[address] = size  # live throughout the step
    for address, index in live.items():
        if address in after:
            action, key, size, _, phase, stack = timeline.events[index]
            timeline.events[index] = (action, key, size, after[address], phase, stack)
    timeline.baseline = [
        (address, size, before.get(address, "activations")) for address, size in baseline.items()
    ]
    return timeline


__all__ = ["VIEWER_CATEGORY", "synthesize_snapshot", "timeline_from_cuda"]
