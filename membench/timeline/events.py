"""Memory over time: one training step's allocation events, and what they say.

A ``Timeline`` is one recorded step (docs/timeline.md): what was live when it
began (``baseline``), then every allocation and free in order, each with its category and
the phase of the step it happened in (forward, backward, recomputation, the optimizer step or
other work outside modules; the conv layer and module where known). It comes from the tensor
tracker's events on the CPU and for estimates, or from the CUDA allocator's history
(``membench.timeline.snapshot``), and travels from the worker to the sweep process inside the
cell's result.

``timeline_rows`` turns it into the rows of ``timeline.csv`` (one per event, with the live bytes
of every category after it); ``find_peak`` says where in those rows the step peaks. Both work on
plain rows, so the sweep process, ``membench timeline`` and the report share them without torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..schema import CATEGORIES

# What part of a step an event happened in, in the order a legend lists them.
PHASES = ("forward", "backward", "recompute", "optimizer", "other")
ALLOC, FREE, START = "alloc", "free", "start"
# The modules of a conv stack (and the per-layer modules around it) carry their layer index.
_LAYER = re.compile(r"(?:^|\.)(?:blocks|propagate|readouts|heads)\.(\d+)(?:\.|$)")
LIVE_COLUMNS = [f"{category}_bytes" for category in CATEGORIES]
TIMELINE_COLUMN_TYPES = {
    "cell_id": "str",
    "device": "str",
    "started_at": "str",
    "event": "int",
    "action": "str",
    "bytes": "int",
    "category": "str",
    **dict.fromkeys(LIVE_COLUMNS, "int"),
    "total_bytes": "int",
    "phase": "str",
    "layer": "int",
    "module": "str",
}
TIMELINE_COLUMNS = list(TIMELINE_COLUMN_TYPES)


def layer_of(module: str) -> int | None:
    """The conv layer a module belongs to, from its name: 'backbone.blocks.3.0' -> 3,
    'readouts.2' -> 2; None for a module of no one layer ('head', 'classifier.2')."""
    match = _LAYER.search(module)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class Phase:
    """Where in a step an event happened: one of PHASES, the conv layer (None if no one
    layer), and the innermost module running (its name in the runner's modules; '' outside)."""

    kind: str
    layer: int | None = None
    module: str = ""


# One event: (action, storage key, bytes, category, phase index, stack index or -1). The key
# names one allocation while it lives (a storage id, or an address on CUDA).
Event = tuple[str, int, int, str, int, int]
# One Python frame of an allocation's stack: (file name, line, function); a stack lists them
# innermost first, as PyTorch's snapshots do.
Frame = tuple[str, int, str]


@dataclass
class Timeline:
    """One recorded step (see the module docstring). ``stacks`` are the Python stacks of the
    allocations where they were recorded; ``snapshot`` the CUDA allocator's own snapshot, kept
    when one was asked for."""

    source: str  # tracker | estimate | cuda_allocator: the cell's memory_source
    baseline: list[tuple[int, int, str]] = field(default_factory=list)  # (key, bytes, category)
    events: list[Event] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    stacks: list[tuple[Frame, ...]] = field(default_factory=list)
    snapshot: dict | None = None  # the CUDA allocator's own, when a snapshot was asked for
    keep_snapshot: bool = False  # write a snapshot pickle (the CUDA one, or one synthesized)
    seconds: float | None = None  # wall time of the recorded step, recording included


def timeline_rows(timeline: Timeline) -> list[dict]:
    """The rows of ``timeline.csv`` for one step, without the cell's columns: a ``start`` row
    (event 0: what was live when the step began), then one row per event with the live bytes of
    every category after it."""
    live = dict.fromkeys(CATEGORIES, 0)
    categories: dict[int, str] = {}
    for key, nbytes, category in timeline.baseline:
        live[category] += nbytes
        categories[key] = category
    rows = [_row(0, START, 0, "", live, Phase(""))]
    for index, (action, key, nbytes, category, phase, _) in enumerate(timeline.events, 1):
        if action == ALLOC:
            live[category] += nbytes
            categories[key] = category
        else:
            category = categories.pop(key, category)
            live[category] -= nbytes
        rows.append(_row(index, action, nbytes, category, live, timeline.phases[phase]))
    return rows


def _row(
    event: int, action: str, nbytes: int, category: str, live: Mapping[str, int], phase: Phase
) -> dict:
    row = {"event": event, "action": action, "bytes": nbytes, "category": category}
    row.update({f"{c}_bytes": live[c] for c in CATEGORIES})
    row["total_bytes"] = sum(live.values())
    row.update(phase=phase.kind, layer=phase.layer, module=phase.module)
    return row


@dataclass(frozen=True)
class TimelinePeak:
    """Where one step peaks: the event, how far through the step (0..1), the live bytes in
    total and by category, and the phase, layer and module it happened in."""

    event: int
    progress: float
    total_bytes: int
    live: dict[str, int]
    phase: str
    layer: int | None
    module: str


def find_peak(rows: Sequence[Mapping]) -> TimelinePeak:
    """The first row of ``rows`` (one step, in event order) with the most bytes live."""
    if not rows:
        raise ValueError("a timeline without events has no peak")
    best = max(range(len(rows)), key=lambda i: (int(rows[i]["total_bytes"]), -i))
    row = rows[best]
    layer = row.get("layer")
    return TimelinePeak(
        event=int(row["event"]),
        progress=best / max(1, len(rows) - 1),
        total_bytes=int(row["total_bytes"]),
        live={c: int(row[f"{c}_bytes"]) for c in CATEGORIES},
        phase=str(row.get("phase") or ""),
        layer=None if layer in (None, "") or layer != layer else int(layer),
        module=str(row.get("module") or ""),
    )


def phase_spans(phases: Iterable[str]) -> list[tuple[str, int, int]]:
    """(phase, first row, last row) for every run of one phase in a step's rows, in order."""
    spans: list[tuple[str, int, int]] = []
    for index, phase in enumerate(phases):
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], index)
        else:
            spans.append((phase, index, index))
    return spans


def where(peak: TimelinePeak) -> str:
    """'backward of layer 3 (backbone.blocks.3.0)': the phase, layer and module of a peak."""
    text = peak.phase or "start"
    if peak.layer is not None:
        text += f" of layer {peak.layer}"
    return text + (f" ({peak.module})" if peak.module else "")


__all__ = [
    "LIVE_COLUMNS",
    "PHASES",
    "TIMELINE_COLUMNS",
    "TIMELINE_COLUMN_TYPES",
    "Event",
    "Phase",
    "Timeline",
    "TimelinePeak",
    "find_peak",
    "layer_of",
    "phase_spans",
    "timeline_rows",
    "where",
]
