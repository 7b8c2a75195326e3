"""Timeline files of a results folder: ``timeline.csv`` and the snapshot pickles.

A sweep run with ``--timeline`` writes each cell's recorded step as it finishes, before the
cell's row (the row marks the cell complete, docs/sweeps.md):

- ``timeline.csv``: one row per event (``membench.timeline.events.TIMELINE_COLUMNS``), a block
  of rows per cell that starts at event 0, appended and flushed like ``steps.csv``. A cell run
  again appends a new block; readers keep the latest block of each cell and device, and match
  it to the cell's row by ``started_at``, so a block left by an interrupted or superseded run
  is never shown for another run.
- ``snapshots/<cell>@<device>.pickle`` with ``--timeline-snapshot``: a PyTorch memory snapshot
  (``torch.cuda.memory._snapshot()``'s format), the allocator's own on CUDA, synthesized from
  the tracker's events elsewhere; replaced atomically.

This module imports no torch.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pandas as pd

from ..results import append_rows, check_header, prepare_for_append, read_rows, typed_frame
from ..schema import CellResult
from .events import TIMELINE_COLUMN_TYPES, TIMELINE_COLUMNS, timeline_rows
from .snapshot import synthesize_snapshot

TIMELINE_FILE = "timeline.csv"
SNAPSHOTS_DIR = "snapshots"
CELL_KEY = ["cell_id", "device"]


def snapshot_path(out_dir: Path, cell_id: str, device: str) -> Path:
    """Where a cell's snapshot pickle goes: 'snapshots/bp_vgg8_r32_b64_k10@cpu.pickle'."""
    name = re.sub(r"[^A-Za-z0-9._@-]+", "-", f"{cell_id}@{device}").strip("-")
    return Path(out_dir) / SNAPSHOTS_DIR / f"{name}.pickle"


def write_timeline(out_dir: Path, result: CellResult) -> Path | None:
    """Append ``result``'s timeline to ``timeline.csv`` (and write its snapshot pickle when one
    was asked for); nothing for a result without one. Returns the snapshot's path, if any."""
    timeline = result.timeline
    if timeline is None:
        return None
    out_dir = Path(out_dir)
    path = out_dir / TIMELINE_FILE
    prepare_for_append(path, TIMELINE_COLUMNS, TIMELINE_COLUMNS)
    cell = {"cell_id": result.cell_id, "device": result.device, "started_at": result.started_at}
    rows = timeline_rows(timeline)
    # The row says how many: a block a reader finds shorter (a file cut) is never a whole step.
    result.timeline_events = len(rows)
    append_rows(path, TIMELINE_COLUMNS, [{**cell, **row} for row in rows])
    if not timeline.keep_snapshot:
        return None
    snapshot = timeline.snapshot or synthesize_snapshot(timeline)
    target = snapshot_path(out_dir, result.cell_id, result.device)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(snapshot, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def read_timelines(folder: Path) -> pd.DataFrame:
    """``timeline.csv`` of a results folder as a typed frame: the latest block of each cell and
    device, in event order; empty (with every column) when the folder has none. ResultsError
    for a file that is not a membench timeline.csv."""
    path = Path(folder) / TIMELINE_FILE
    header, rows = read_rows(path)
    if header:
        check_header(path, header, TIMELINE_COLUMNS, TIMELINE_COLUMNS)
    frame = typed_frame(path, rows, TIMELINE_COLUMN_TYPES, strict=True)
    if frame.empty:
        return frame
    block = (frame["event"] == 0).cumsum()
    latest = block.groupby([frame[c] for c in CELL_KEY]).transform("max")
    return frame[block == latest].reset_index(drop=True)


def timelines_of(cells: pd.DataFrame, timelines: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Row label of ``cells`` -> the timeline recorded in that very run (same cell, device and
    ``started_at``), for the rows that have a whole one: a block with fewer events than its row
    recorded (``timeline_events``: a timeline.csv cut short) is left out (``cut_timelines``)."""
    return _matched(cells, timelines)[0]


def cut_timelines(cells: pd.DataFrame, timelines: pd.DataFrame) -> list[str]:
    """What is wrong with the timelines of ``cells``' rows that recorded one: 'CELL on DEVICE:
    12 of 340 events' for a block cut short, '... : none of 340 events' for one missing."""
    return _matched(cells, timelines)[1]


def _matched(cells: pd.DataFrame, timelines: pd.DataFrame) -> tuple[dict, list[str]]:
    groups = {}
    if not timelines.empty:
        groups = dict(list(timelines.groupby(CELL_KEY + ["started_at"], sort=False)))
    found, cut = {}, []
    for label, row in cells.iterrows():
        rows = groups.get((row["cell_id"], row["device"], row["started_at"]))
        expected = row.get("timeline_events")
        expected = None if expected is None or pd.isna(expected) else int(expected)
        have = 0 if rows is None else len(rows)
        if expected is not None and have != expected:
            what = "none" if not have else f"{have}"
            cut.append(f"{row['cell_id']} on {row['device']}: {what} of {expected} events")
        elif rows is not None:
            found[label] = rows.reset_index(drop=True)
    return found, cut


__all__ = [
    "SNAPSHOTS_DIR",
    "TIMELINE_FILE",
    "cut_timelines",
    "read_timelines",
    "snapshot_path",
    "timelines_of",
    "write_timeline",
]
