"""A real allocator history (``torch.cuda.memory._snapshot()['device_traces']``) replayed
through the caching-allocator model, so the model's segments can be held against the
snapshot's own ``segments``, byte for byte (docs/allocator.md, "Checking the model").

The model decides placement; the trace supplies only what a program did (``alloc`` of a size
on a stream, ``free_completed``) and what ``empty_cache`` or an out-of-memory retry released
(``segment_free``, ``segment_unmap``), which the replay applies to the same segments. The
trace's ``segment_alloc``/``segment_map`` events are checked against the model's own, and give
each modelled segment its real address; every ``alloc``'s address is checked too. The history
must start with an empty allocator (record before the first CUDA allocation of the process).
Plain dictionaries, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from membench.errors import InputError

from .conf import AllocatorConfig
from .model import CachingAllocatorModel
from .replay import BlockLayout, ReplayResult, SegmentLayout, model_layout, replay_result

MAX_DIVERGENCES = 20  # the first ones explain; later ones follow from them
IGNORED_ACTIONS = frozenset({"oom", "snapshot", "annotate"})


class SnapshotError(InputError):
    """A snapshot the model cannot replay."""


@dataclass(frozen=True)
class SnapshotReplay:
    segments: list[SegmentLayout]  # the model's, at the real addresses
    divergences: tuple[str, ...]  # where the model's decisions differed from the trace's
    result: ReplayResult


def _pool_is_default(pool) -> bool:
    return pool is None or tuple(pool) == (0, 0)


def snapshot_layout(snapshot: Mapping, device: int = 0) -> list[SegmentLayout]:
    """The snapshot's own ``segments`` of ``device`` as layouts, by address."""
    out = []
    for seg in snapshot.get("segments", ()):
        if seg.get("device", 0) != device:
            continue
        if not _pool_is_default(seg.get("segment_pool_id")):
            raise SnapshotError(
                "segments of a private memory pool (CUDA graphs, MemPool) are not modelled"
            )
        blocks = tuple(
            BlockLayout(
                b["address"] - seg["address"],
                b["size"],
                _state(b["state"]),
                None if b["state"] == "inactive" else b["requested_size"],
            )
            for b in seg["blocks"]
        )
        out.append(
            SegmentLayout(
                seg["address"],
                seg["stream"],
                seg["segment_type"],
                bool(seg.get("is_expandable", False)),
                seg["total_size"],
                blocks,
            )
        )
    return sorted(out, key=lambda s: s.address)


def _state(state: str) -> str:
    # torch.cuda.memory._snapshot's docstring says "active_awaiting_free"; the dictionaries
    # say "active_pending_free" (torch/csrc/cuda/Module.cpp).
    return "active_pending_free" if state == "active_awaiting_free" else state


class _TraceReplay:
    def __init__(self, config: AllocatorConfig | None, device_memory: int | None):
        self.model = CachingAllocatorModel(config, device_memory=device_memory)
        self.model.log = []
        self.addresses: dict = {}  # modelled segment -> its real address
        self.by_address: dict[int, object] = {}  # real address -> modelled segment
        self.live: dict[int, object] = {}  # real address of an allocation -> its block
        self.pending: list[Mapping] = []  # trace segment events the model has yet to match
        self.pending_free: set[int] = set()
        self.divergences: list[str] = []

    def diverge(self, index: int, why: str) -> None:
        if len(self.divergences) < MAX_DIVERGENCES:
            self.divergences.append(f"event {index}: {why}")

    def step(self, index: int, e: Mapping) -> None:
        action = e["action"]
        if not _pool_is_default(e.get("pool_id")):
            raise SnapshotError(
                f"event {index}: a private memory pool (CUDA graphs, MemPool) is not modelled"
            )
        if action in ("segment_alloc", "segment_map"):
            self.pending.append(e)
        elif action == "alloc":
            self.alloc(index, e)
        elif action == "free_requested":
            self.pending_free.add(e["addr"])
        elif action == "free_completed":
            block = self.live.pop(e["addr"], None)
            if block is None:
                raise SnapshotError(
                    f"event {index}: free of {e['addr']:#x}, never allocated in "
                    "the trace; record the history before the process's first "
                    "CUDA allocation"
                )
            self.pending_free.discard(e["addr"])
            self.model.free(block)
        elif action == "segment_free":
            self.segment_free(index, e)
        elif action == "segment_unmap":
            self.segment_unmap(index, e)
        elif action not in IGNORED_ACTIONS:
            raise SnapshotError(f"event {index}: unknown trace action {action!r}")

    def alloc(self, index: int, e: Mapping) -> None:
        start = len(self.model.log)
        block = self.model.malloc(e["size"], e["stream"])
        for action, segment, offset, size in self.model.log[start:]:
            self.match(index, action, segment, offset, size)
        del self.model.log[:]
        for extra in self.pending:
            self.diverge(
                index,
                f"the trace's {extra['action']} of {extra['size']} B at "
                f"{extra['addr']:#x} has no counterpart in the model",
            )
        self.pending.clear()
        base = self.addresses.get(block.segment)
        if base is None or base + block.offset != e["addr"]:
            where = "an unplaced segment" if base is None else f"{base + block.offset:#x}"
            self.diverge(index, f"alloc of {e['size']} B: real {e['addr']:#x}, model {where}")
        self.live[e["addr"]] = block

    def match(self, index: int, action: str, segment, offset: int, size: int) -> None:
        """Pair the model's segment_alloc/segment_map with the trace's next one."""
        if not self.pending:
            self.diverge(index, f"the model's {action} of {size} B has no counterpart in the trace")
            return
        real = self.pending.pop(0)
        if real["action"] != action or real["size"] != size:
            self.diverge(
                index, f"model {action} of {size} B, trace {real['action']} of {real['size']} B"
            )
        if segment not in self.addresses:
            self.addresses[segment] = real["addr"] - offset
            self.by_address[real["addr"] - offset] = segment
        elif self.addresses[segment] + offset != real["addr"]:
            self.diverge(
                index,
                f"{action} at real {real['addr']:#x}, model {self.addresses[segment] + offset:#x}",
            )

    def segment_free(self, index: int, e: Mapping) -> None:
        segment = self.by_address.get(e["addr"])
        head = segment.head if segment is not None else None
        if head is None or head.allocated or head.next is not None or head.size != e["size"]:
            self.diverge(
                index,
                f"segment_free of {e['size']} B at {e['addr']:#x}: the model "
                "has no such free segment",
            )
            return
        self.model.release_block(head)
        del self.model.log[:]

    def segment_unmap(self, index: int, e: Mapping) -> None:
        bases = [
            (base, seg)
            for seg, base in self.addresses.items()
            if seg.expandable and base <= e["addr"]
        ]
        block = None
        if bases:
            base, segment = max(bases, key=lambda pair: pair[0])
            block = segment.head
            while block is not None and not (
                block.offset <= e["addr"] - base < block.offset + block.size
            ):
                block = block.next
        if block is None or block.allocated or not block.mapped:
            self.diverge(
                index, f"segment_unmap at {e['addr']:#x}: the model has no free mapped block there"
            )
            return
        unmapped = self.model.unmap_block(block)
        del self.model.log[:]
        if unmapped != (e["addr"] - base, e["size"]):
            self.diverge(
                index, f"segment_unmap: real {e['size']} B at {e['addr']:#x}, model {unmapped}"
            )


def replay_snapshot(
    snapshot: Mapping,
    config: AllocatorConfig | None = None,
    device: int = 0,
    device_memory: int | None = None,
) -> SnapshotReplay:
    """Replay the history of ``device`` in ``snapshot`` (``torch.cuda.memory._snapshot()``)
    under ``config`` (the run's ``PYTORCH_CUDA_ALLOC_CONF``, parsed); ``device_memory`` (the
    device's total bytes) sizes expandable segments as PyTorch does."""
    traces = snapshot.get("device_traces")
    if not traces or device >= len(traces):
        raise SnapshotError(
            f"the snapshot has no allocator history for device {device}; "
            "record it with torch.cuda.memory._record_memory_history()"
        )
    run = _TraceReplay(config, device_memory)
    for index, entry in enumerate(traces[device]):
        run.model.event_index = index
        run.step(index, entry)
    layout = model_layout(run.model, run.addresses, frozenset(run.pending_free))
    return SnapshotReplay(
        layout, tuple(run.divergences), replay_result(run.model, len(traces[device]))
    )
