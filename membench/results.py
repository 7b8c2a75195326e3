"""Results I/O: the tidy CSV schema, crash-safe appends, and tolerant readers.

A results folder holds ``cells.csv`` (one row per cell), ``steps.csv`` (one row per measured
step, long format) and ``env.json`` (provenance). Rows are appended and flushed to disk as each
cell finishes; a cell's steps are written before its row, so a row in ``cells.csv`` means the
cell is complete. A line cut short by a crash is dropped by the readers and repaired before the
next append.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pandas as pd

CELL_COLUMNS = [
    "cell_id", "method", "arch", "res", "batch", "micro_batch", "classes", "seed",
    "device", "device_name", "device_mem_bytes", "status", "error", "warmup", "steps",
    "step_ms_median", "step_ms_p10", "step_ms_p90", "step_ms_mean", "imgs_per_s",
    "peak_allocated_bytes", "peak_reserved_bytes", "host_peak_rss_bytes", "nvml_used_bytes",
    "memory_source", "parameters_bytes", "gradients_bytes", "optimizer_state_bytes",
    "activations_bytes", "torch_version", "membench_version", "torch_threads", "started_at",
]
STEP_COLUMNS = ["cell_id", "device", "step", "step_ms"]
CELLS_FILE, STEPS_FILE, ENV_FILE = "cells.csv", "steps.csv", "env.json"


class ResultsError(ValueError):
    """A results folder or CSV that cannot be read as membench results."""


def _repair_tail(path: Path) -> None:
    """Cut a trailing partial line (a write interrupted by a crash) so appends stay aligned."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _append_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    _repair_tail(path)
    new_file = not path.exists() or path.stat().st_size == 0
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    if new_file:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    with open(path, "a", encoding="utf-8") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())


def append_result(out_dir: Path, result) -> None:
    """Append one finished cell: its steps first, then its row (the row marks completion)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    row = result.row()
    steps = [
        {"cell_id": row["cell_id"], "device": row["device"], "step": i, "step_ms": ms}
        for i, ms in enumerate(result.step_ms)
    ]
    if steps:
        _append_rows(out_dir / STEPS_FILE, STEP_COLUMNS, steps)
    _append_rows(out_dir / CELLS_FILE, CELL_COLUMNS, [row])


def write_env(out_dir: Path, env: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ENV_FILE).write_text(json.dumps(env, indent=2) + "\n")


def _complete_lines(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return text


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows of a membench CSV as strings (``csv.DictReader``), ignoring a trailing
    partial line; ``([], [])`` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return [], []
    reader = csv.DictReader(io.StringIO(_complete_lines(path)))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def read_csv(path: Path, required: list[str] | None = None) -> pd.DataFrame:
    """Read a membench CSV, ignoring a trailing partial line; ResultsError if columns are missing."""
    path = Path(path)
    try:
        text = _complete_lines(path)
    except OSError as err:
        raise ResultsError(f"cannot read {path}: {err.strerror}") from None
    if not text.strip():
        return pd.DataFrame(columns=required or [])
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ResultsError(f"{path} is not a readable CSV: {str(err).splitlines()[0]}") from None
    missing = [c for c in (required or []) if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} lacks column(s) {', '.join(missing)}; is it a membench {path.name}?")
    return frame


def read_cells(path: Path) -> pd.DataFrame:
    """``cells.csv`` of a folder (or the file itself) as a DataFrame with the schema's columns."""
    path = Path(path)
    file = path / CELLS_FILE if path.is_dir() else path
    if not file.exists():
        raise ResultsError(f"no {CELLS_FILE} in {path}")
    required = ["cell_id", "method", "arch", "res", "batch", "device", "status"]
    return read_csv(file, required)


def read_steps(path: Path) -> pd.DataFrame:
    """``steps.csv`` beside a cells.csv (or in a folder); empty if there is none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = folder / STEPS_FILE
    if not file.exists():
        return pd.DataFrame(columns=STEP_COLUMNS)
    return read_csv(file, STEP_COLUMNS)


def find_cells_files(paths: list[Path]) -> list[Path]:
    """Every ``cells.csv`` at or under the given paths, sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(CELLS_FILE)))
        else:
            raise ResultsError(f"{path} does not exist")
    return found
