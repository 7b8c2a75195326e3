"""Loading: every ``cells.csv`` under some folders as one frame of the rows a report shows.

Files are read by ``membench.results.read_cells`` (typed, every schema column, ``is_estimate``
decided by ``membench.schema``); a value that is not a number reads as missing rather than
failing the whole report. On top of that the loader

- lowercases ``status`` and leaves out rows without a method, batch or resolution (with a note);
- adds ``source`` (the file) and ``card_mem_bytes`` (the GPU's memory, from the env.json beside
  the file);
- classifies each row into ``kind``: ``ok`` (a measured peak and throughput), ``oom``, ``estimated``
  (a predicted peak, possibly over its budget: ``over_budget``) or ``failed`` (no peak);
- keeps only the latest run of a cell measured more than once on the same device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..results import ResultsError, find_cells_files, read_cells
from ..schema import ENV_FILE, ESTIMATED, OK, OOM, cuda_index, tooling_parts
from ..stability import UNSTABLE
from ..units import GIB

# A report cannot say anything without these; beyond the identity columns, which the reader
# itself requires, that is a peak and a throughput.
REPORT_REQUIRED_COLUMNS = [
    "cell_id",
    "method",
    "arch",
    "res",
    "batch",
    "device",
    "status",
    "peak_allocated_bytes",
    "imgs_per_s",
]
# What identifies one run of a cell; of several runs with the same key, the latest is shown.
RUN_KEY = ["device", "device_name", "cell_id", "budget_key", "is_estimate"]


@dataclass
class LoadedCells:
    """The rows a report shows, one per cell and device, plus what was left out and why."""

    cells: pd.DataFrame
    sources: list[tuple[Path, int]]
    superseded: int = 0
    notes: list[str] = field(default_factory=list)
    # (file of the rows left out, file of the later runs shown instead, how many): where the
    # rows a report leaves out went, e.g. a committed reference run replaced by the user's own.
    replaced: list[tuple[str, str, int]] = field(default_factory=list)


def card_memory(cells_file: Path, device: str) -> float:
    """Total memory of the GPU a row ran on, from the env.json beside its cells.csv (else NaN)."""
    index = cuda_index(device)
    env_file = cells_file.parent / ENV_FILE
    if index is None or not env_file.exists():
        return math.nan
    try:
        gpus = json.loads(env_file.read_text()).get("gpus") or []
    except (OSError, ValueError, AttributeError):
        return math.nan
    for gpu in gpus:
        if isinstance(gpu, dict) and gpu.get("index") == index and gpu.get("total_memory_bytes"):
            return float(gpu["total_memory_bytes"])
    return math.nan


def read_one(cells_file: Path) -> pd.DataFrame:
    """One cells.csv with ``source`` and ``card_mem_bytes``; ResultsError (one line) for a file
    that is not a membench cells.csv or lacks a column the report needs."""
    frame = read_cells(cells_file, strict=False, required=REPORT_REQUIRED_COLUMNS)
    frame["source"] = str(cells_file)
    memory = {device: card_memory(cells_file, device) for device in frame["device"].unique()}
    frame["card_mem_bytes"] = frame["device"].map(memory).astype(float)
    return frame


def _read_all(inputs: Sequence[Path]) -> tuple[pd.DataFrame, list[tuple[Path, int]], list[Path]]:
    """Every row of every cells.csv at or under ``inputs``, the (file, rows) read and the files."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ResultsError(
            "no results given; pass a results folder, e.g. `membench report results/`"
        )
    files = find_cells_files(inputs)
    if not files:
        raise ResultsError(
            f"no cells.csv under {', '.join(map(str, inputs))}; run `membench sweep` first"
        )
    frames, sources = [], []
    for file in files:
        frame = read_one(file)
        sources.append((file, len(frame)))
        if len(frame):
            frames.append(frame)
    if not frames:
        raise ResultsError(f"{', '.join(map(str, files))}: no result rows (header only)")
    return pd.concat(frames, ignore_index=True), sources, files


def _usable(cells: pd.DataFrame, files: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Rows that have a method, batch and resolution (status lowercased), and a note on the rest."""
    cells["status"] = cells["status"].str.lower()
    notes = []
    # Token cells (a seq, no res) have no panel yet: the report's panels are per resolution.
    tokens = cells["seq"].notna() if "seq" in cells else pd.Series(False, index=cells.index)
    if tokens.any():
        notes.append(
            f"{int(tokens.sum())} token-sequence row(s) (hf: archs, seq) were left out: the "
            "report draws image cells per resolution; see cells.csv or `membench compare`."
        )
        cells = cells[~tokens].copy()
    unusable = cells["batch"].isna() | cells["res"].isna() | (cells["method"] == "")
    if unusable.any():
        notes.append(
            f"{int(unusable.sum())} row(s) without a readable method, batch or "
            "resolution were left out."
        )
        cells = cells[~unusable].copy()
    if cells.empty:
        raise ResultsError(f"{', '.join(map(str, files))}: no usable result rows")
    cells["batch"] = cells["batch"].astype(int)
    cells["res"] = cells["res"].astype(int)
    return cells, notes


def tooling_label(row) -> str:
    """'' at the defaults, else e.g. 'bf16 channels-last compile-default': what a series or a
    table row adds to its method's name (every tooling setting of ``membench.schema``)."""
    return " ".join(tooling_parts(row))


def classify(cells: pd.DataFrame) -> pd.DataFrame:
    """Add ``kind`` (ok, oom, estimated, failed), ``over_budget``, ``peak_gib``, ``imgs_p10``
    and ``imgs_p90`` (imgs/s at the slow and fast tenth of the steps), ``unstable`` (the
    timing's verdict), ``tooling`` (the tooling settings not at their defaults) and
    ``started``.

    An estimate over its budget is an OOM row with the full predicted peak: still a prediction
    worth plotting (kind ``estimated``), flagged by ``over_budget``. Any other estimate without a
    predicted peak is ``failed``.
    """
    estimate = cells["is_estimate"]
    cells["kind"] = "failed"
    cells.loc[cells["status"] == OK, "kind"] = "ok"
    cells.loc[cells["status"] == OOM, "kind"] = "oom"
    predicted = (
        estimate & cells["status"].isin([ESTIMATED, OOM]) & cells["peak_allocated_bytes"].notna()
    )
    cells.loc[estimate, "kind"] = "failed"
    cells.loc[predicted, "kind"] = "estimated"
    cells["over_budget"] = predicted & (cells["status"] == OOM)
    cells["peak_gib"] = cells["peak_allocated_bytes"] / GIB
    # Throughput at the slow and the fast tenth of the steps: the spread a median hides.
    cells["imgs_p10"] = cells["batch"] * 1e3 / cells["step_ms_p90"]
    cells["imgs_p90"] = cells["batch"] * 1e3 / cells["step_ms_p10"]
    cells["unstable"] = cells["stability"].fillna("").astype(str) == UNSTABLE
    cells["tooling"] = [tooling_label(row) for row in cells.to_dict("records")]
    cells["started"] = pd.to_datetime(
        cells["started_at"], utc=True, errors="coerce", format="ISO8601"
    )
    return cells


def keep_latest(cells: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The latest run of each repeated cell (same device, device name, cell_id, budget and
    estimate-or-not) and how many earlier rows were left out. Rows without a time count as
    oldest and, among themselves, the one read last wins; the reading order is kept."""
    kept, replaced = _latest(cells)
    return kept, sum(count for _, _, count in replaced)


def _latest(cells: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str, int]]]:
    """``keep_latest``'s rows, and (file left out, file shown instead, rows) per pair."""
    cells = cells.assign(order=range(len(cells)), budget_key=cells["device_mem_bytes"].fillna(-1))
    cells = cells.sort_values(["started", "order"], na_position="first", kind="stable")
    latest = cells.groupby(RUN_KEY, dropna=False, sort=False)["source"].transform("last")
    dropped = cells.duplicated(RUN_KEY, keep="last")
    pairs = pd.DataFrame({"old": cells["source"], "new": latest})[dropped]
    replaced = [
        (str(old), str(new), int(count))
        for (old, new), count in pairs.value_counts(sort=False).items()
    ]
    cells = cells.drop_duplicates(RUN_KEY, keep="last").sort_values("order")
    cells = cells.drop(columns=["budget_key", "order"]).reset_index(drop=True)
    return cells, sorted(replaced)


def load_cells(inputs: Sequence[Path]) -> LoadedCells:
    """Every ``cells.csv`` at or under ``inputs``, normalised, with repeated cells resolved.

    A cell measured more than once on the same device (same cell_id, device, device name and
    budget) keeps only its latest row by ``started_at``; estimates and measurements of one cell
    are both kept. Raises ResultsError when there is nothing to report or a file is not a
    membench cells.csv.
    """
    cells, sources, files = _read_all(inputs)
    cells, notes = _usable(cells, files)
    cells, replaced = _latest(classify(cells))
    superseded = sum(count for _, _, count in replaced)
    return LoadedCells(cells, sources, superseded, notes, replaced)
