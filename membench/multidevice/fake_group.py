"""Estimates of a cell on several devices, on one machine: each rank in a fake process group.

``estimate_ranks`` plans every rank's peak without the devices, as torchtitan's memory
estimator does: rank r's runner is built and stepped under the protocol on an
``EstimateDevice`` (fake tensors) inside torch's fake process group
(``torch.testing._internal.distributed.fake_pg``: every collective returns at once and moves
nothing), one rank after another, and ``membench.multidevice.rows.combine_ranks`` makes the row.
Each
rank's FLOPs are counted the same way (``rank_flops``, which a measured cell uses too).

What the fake group cannot model (docs/multi-device.md, "Estimates per rank"): the memory the
communication library holds itself (NCCL's buffers live outside the caching allocator, so a
measured ``max_memory_allocated`` does not count them either), and lifetimes that depend on
timing: a fake collective completes at once, so a tensor lives exactly as long as the code
holds it, where on a GPU an asynchronous collective keeps its buffers until it finishes. DDP's
bucket all-reduce is modelled by an in-place, already completed all-reduce (what the default
hook does in place; ``runners.bp_parallel``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

from ..measure.protocol import count_step_flops, run_cell
from ..planning.estimate import EstimateDevice
from ..schema import Cell, CellResult
from .rank_device import RankDevice
from .rows import combine_ranks, measured


@contextlib.contextmanager
def fake_group(rank: int, world: int) -> Iterator[None]:
    """This process as rank ``rank`` of a fake process group of ``world`` ranks."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers "fake"

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_flops(cell: Cell) -> list[int | None]:
    """Each rank's FLOPs per step (the protocol's count, on fake tensors, in a fake group);
    None for a rank whose runner cannot step on fake tensors."""
    counts = []
    for rank in range(cell.devices):
        with fake_group(rank, cell.devices):
            try:
                counts.append(count_step_flops(cell))
            except Exception:
                counts.append(None)
    return counts


def estimate_ranks(cell: Cell, kind: str = "cuda") -> CellResult:
    """Predict every rank's peak for ``kind`` devices: the cell's row (``combine_ranks``). A
    rank over the cell's budget makes it an oom row that still carries every rank's estimate,
    as on one device; a rank that cannot be estimated makes it that rank's error."""
    results = []
    for rank in range(cell.devices):
        with fake_group(rank, cell.devices):
            result = run_cell(cell, RankDevice(EstimateDevice(kind), rank, cell.devices))
        results.append(result)
        if result.peak_allocated_bytes is None:  # failed before it had an estimate
            result.error, result.ranks = f"rank {rank}: {result.error}", list(results)
            return result
    row = combine_ranks(results)
    over = [(rank, r) for rank, r in enumerate(results) if not measured([r])]
    if over:
        row.status, row.error = over[0][1].status, f"rank {over[0][0]}: {over[0][1].error}"
    return row


__all__ = ["estimate_ranks", "fake_group", "rank_flops"]
