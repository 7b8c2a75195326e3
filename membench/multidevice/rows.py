"""A cell on several devices as one row, and ``ranks.csv``: every rank's own measurement.

A cell with ``devices`` N > 1 runs N ranks (``membench.multidevice.launch``); each rank measures
itself under the protocol and returns its own ``CellResult``. ``combine_ranks`` makes the cell's
row from them (docs/multi-device.md, "What a row records"):

- the peak is the largest rank's (``peak_rank`` names it; the breakdown is that rank's);
- each step's time is the slowest rank's, so imgs/s is the whole cell's batch over it;
- FLOPs per step are the ranks' sum, the bytes sent per step the most any rank sent, the idle
  fraction (pipelines) the ranks' mean;
- a cell where a rank failed is that rank's failure, named (``rank_failure``).

``ranks.csv`` beside ``cells.csv`` keeps one row per rank (its peak, breakdown, FLOPs, bytes
sent, idle fraction and step times), keyed by the cell's ``cell_id``, ``device`` and
``started_at``; ``read_ranks`` keeps the rows whose cell row is still in ``cells.csv`` (a rerun
replaces a cell's row, and its old ranks' rows are then left out). This module imports no torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..results import append_rows, prepare_for_append, read_cells, read_rows, typed_frame
from ..schema import (
    BREAKDOWN_COLUMNS,
    ERROR,
    FAILED_STATUSES,
    MEASURED_STATUSES,
    TIMEOUT,
    CellResult,
)

RANKS_FILE = "ranks.csv"
RANK_KEY = ["cell_id", "device", "started_at"]
RANK_COLUMN_TYPES = {
    **dict.fromkeys(RANK_KEY, "str"),
    "rank": "int",
    "status": "str",
    "error": "str",
    **dict.fromkeys(
        [
            "peak_allocated_bytes",
            "peak_reserved_bytes",
            "host_peak_rss_bytes",
            "nvml_used_bytes",
            *BREAKDOWN_COLUMNS,
            "flops_per_step",
            "sent_bytes_per_step",
        ],
        "int",
    ),
    **dict.fromkeys(
        ["idle_fraction", "step_ms_median", "step_ms_p10", "step_ms_p90", "step_ms_mean"], "float"
    ),
    "step_ms": "str",  # the rank's every step time in ms, space-separated
}
RANK_COLUMNS = list(RANK_COLUMN_TYPES)


def combine_ranks(results: Sequence[CellResult]) -> CellResult:
    """The cell's row from its ranks' results (rank order), all of them measured."""
    first = results[0]
    row = CellResult(
        first.cell,
        first.device,
        first.device_name,
        host=first.host,
        status=first.status,
        started_at=first.started_at,
        torch_version=first.torch_version,
        membench_version=first.membench_version,
        torch_threads=first.torch_threads,
        memory_source=first.memory_source,
        ranks=list(results),
    )
    peaks = [r.peak_allocated_bytes for r in results]
    if all(p is not None for p in peaks):
        row.peak_rank = max(range(len(peaks)), key=peaks.__getitem__)
        row.peak_allocated_bytes = peaks[row.peak_rank]
        row.breakdown = results[row.peak_rank].breakdown
    for name in (
        "peak_reserved_bytes",
        "host_peak_rss_bytes",
        "nvml_used_bytes",
        "sent_bytes_per_step",
    ):
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        setattr(row, name, max(values) if values else None)
    flops = [r.flops_per_step for r in results]
    row.flops_per_step = sum(flops) if all(f is not None for f in flops) else None
    idle = [r.idle_fraction for r in results if r.idle_fraction is not None]
    row.idle_fraction = statistics.fmean(idle) if idle else None
    if all(r.step_ms for r in results):
        row.step_ms = [max(times) for times in zip(*(r.step_ms for r in results))]
    _machine_load(row, results)
    return row


def _machine_load(row: CellResult, results: Sequence[CellResult]) -> None:
    """The cell's share of the machine's CPU is its ranks' together; what each rank saw others
    use includes the other ranks, which are the cell's own: taken out, then averaged."""
    shares = [r.cpu_self for r in results]
    if any(share is None for share in shares) or any(r.cpu_others is None for r in results):
        return
    total = sum(shares)
    row.cpu_self = min(1.0, total)
    row.cpu_others = statistics.fmean(
        max(0.0, r.cpu_others - (total - r.cpu_self)) for r in results
    )
    loads = [r.load_average for r in results if r.load_average is not None]
    row.load_average = statistics.fmean(loads) if loads else None


@dataclass(frozen=True)
class RankEnd:
    """How one rank ended: its result (None if it sent none), when it sent it (this machine's
    monotonic clock) and its process's end."""

    rank: int
    result: CellResult | None
    exit: str  # "exit code 0", "killed by signal SIGKILL", "stopped: ...", "no result within ..."
    hung: bool = False  # still running at the deadline
    at: float | None = None


# What a rank reports when a peer, not the rank itself, broke a collective: it waited past the
# process group's timeout, or the peer's connection closed under it (gloo's and NCCL's words).
COMMUNICATION_MARKS = (
    "Timed out",
    "timed out",
    "Connection closed by peer",
    "Connection reset",
    "DistBackendError",
    "DistNetworkError",
    "gloo/transport",
    "NCCL",
)


def _communication(end: RankEnd) -> bool:
    return any(mark in end.result.error for mark in COMMUNICATION_MARKS)


def rank_failure(ends: Sequence[RankEnd]) -> tuple[str, str]:
    """(status, error) of a cell whose ranks did not all finish, naming the rank that failed on
    its own: the first to report an oom or error that is not a peer's broken collective, else
    one that died without a result, else the ones that hung (the others timed out waiting for
    them), else the first broken collective."""
    reported = sorted(
        (e for e in ends if e.result is not None and e.result.status in FAILED_STATUSES),
        key=lambda e: e.at or 0.0,
    )
    own = [e for e in reported if not _communication(e)]
    if own:
        return own[0].result.status, f"rank {own[0].rank}: {own[0].result.error}"
    died = [e for e in ends if e.result is None and not e.hung and not e.exit.startswith("stopped")]
    if died:
        return ERROR, f"rank {died[0].rank} failed ({died[0].exit}) before sending its result"
    hung = [e.rank for e in ends if e.result is None]
    if hung:
        text = f"rank(s) {', '.join(map(str, hung))} hung: no result from them"
        if reported:
            text += (
                f"; rank(s) {', '.join(str(e.rank) for e in reported)} timed out waiting "
                f"for them in a collective ({reported[0].result.error[:200]})"
            )
        return TIMEOUT, text
    return ERROR, f"rank {reported[0].rank}: {reported[0].result.error}"


def rank_rows(result: CellResult) -> list[dict]:
    """``ranks.csv`` rows of a multi-device cell's result (none for a single-device cell)."""
    rows = []
    for rank, part in enumerate(result.ranks):
        values = {
            **part.row(),
            "cell_id": result.cell_id,
            "device": result.device,
            "started_at": result.started_at,
            "rank": rank,
            "step_ms": " ".join(f"{ms:.4f}" for ms in part.step_ms),
        }
        rows.append({column: values.get(column) for column in RANK_COLUMNS})
    return rows


def append_ranks(out_dir: Path, result: CellResult) -> None:
    """Append a multi-device cell's ranks to ``ranks.csv`` (before its row goes to cells.csv,
    so a row there means its ranks are written too)."""
    rows = rank_rows(result)
    if rows:
        path = Path(out_dir) / RANKS_FILE
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        prepare_for_append(path, RANK_COLUMNS, RANK_COLUMNS)
        append_rows(path, RANK_COLUMNS, rows)


def read_ranks(folder: Path) -> pd.DataFrame:
    """The ranks of every multi-device row still in ``folder``'s cells.csv, typed (empty where
    there are none)."""
    path = Path(folder) / RANKS_FILE
    _, rows = read_rows(path)
    frame = typed_frame(path, rows, RANK_COLUMN_TYPES, strict=False)
    if frame.empty:
        return frame
    cells = read_cells(folder, strict=False)[RANK_KEY].drop_duplicates()
    return frame.merge(cells, on=RANK_KEY, how="inner")


def measured(results: Sequence[CellResult | None]) -> bool:
    """Whether every rank sent a result that carries a measurement (ok or estimated)."""
    return all(r is not None and r.status in MEASURED_STATUSES for r in results)


__all__ = [
    "RANKS_FILE",
    "RANK_COLUMNS",
    "RankEnd",
    "append_ranks",
    "combine_ranks",
    "measured",
    "rank_failure",
    "rank_rows",
    "read_ranks",
]
