"""Results I/O: crash-safe appends, typed readers, and the upkeep of a results folder.

A results folder holds ``cells.csv`` (one row per cell), ``steps.csv`` (one row per measured
step, long format) and ``env.json`` (provenance); the columns are ``membench.schema``'s. Rows are
appended and flushed to disk as each cell finishes; a cell's steps are written before its row,
so a row in ``cells.csv`` means the cell is complete. A line cut short by a crash is dropped by
the readers and repaired before the next append.

Only membench's own files are written to. A ``cells.csv`` or ``steps.csv`` whose header is not a
membench header, or that is not text at all, is refused with ``ResultsError`` and left untouched.
A file written by an earlier membench (a subset of today's columns) is read with the missing
columns empty, and the first append upgrades its header in place, atomically, keeping every row.

This module also keeps the folder for the sweep: the exclusive lock, the resume keys, and the
pruning of rows a rerun replaces (see ``membench.execute.sweep``).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .errors import InputError
from .schema import (
    CELL_COLUMN_TYPES, CELL_COLUMNS, CELLS_FILE, ENV_FILE, IDENTITY_COLUMNS, STEP_COLUMN_TYPES,
    SETTING_DEFAULTS, STEP_COLUMNS, STEPS_FILE, Cell, CellResult, is_estimate_row, parse_value,
)

LOCK_FILE = ".membench-sweep.lock"
NUL = b"\0"


class ResultsError(InputError):
    """A results folder or CSV that cannot be read, or written to, as membench results."""


class SweepLockedError(ResultsError):
    """Another sweep holds the results folder."""


# -- reading ----------------------------------------------------------------------------------
def _complete_text(path: Path) -> str:
    """The file's text up to its last complete line; ResultsError if it is not UTF-8 text."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ResultsError(f"cannot read {path}: {err.strerror}") from None
    if NUL in data:
        raise ResultsError(f"{path} is not a text CSV file (binary data at byte {data.index(NUL)}); "
                           f"is it a membench {path.name}?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ResultsError(f"{path} is not a UTF-8 CSV file (byte {err.start} cannot be read); "
                           f"is it a membench {path.name}?") from None
    return text if not text or text.endswith("\n") else text[: text.rfind("\n") + 1]


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows of a CSV as strings, ignoring a trailing partial line; ``([], [])`` when
    the file does not exist. ResultsError for a file that is not text or a row with more fields
    than the header."""
    path = Path(path)
    if not path.exists():
        return [], []
    reader = csv.DictReader(io.StringIO(_complete_text(path)))
    rows = []
    for row in reader:
        if None in row:
            raise ResultsError(f"{path} line {reader.line_num} has more fields than its header; "
                               f"is it a membench {path.name}?")
        rows.append({key: "" if value is None else value for key, value in row.items()})
    return list(reader.fieldnames or []), rows


def check_header(path: Path, header: list[str], columns: list[str], required: list[str], *,
                 for_append: bool = False) -> None:
    """ResultsError unless ``header`` is a membench header: every ``required`` column present
    and, when appending, no column membench does not write."""
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in columns]
    if missing or (for_append and unknown):
        what = (f"lacks column(s) {', '.join(missing)}" if missing
                else f"has column(s) membench does not write: {', '.join(unknown)}")
        action = "; not appending to it, choose another --out" if for_append else ""
        raise ResultsError(f"{path} is not a membench {path.name}: it {what}{action}")


def _typed_frame(path: Path, rows: list[dict], types: dict[str, str], strict: bool) -> pd.DataFrame:
    """Rows as a DataFrame with every schema column: text as str ('' when empty), numbers as
    int64, or float64 where a value is missing (pandas' convention). ``strict``: a value that is
    not a number in a numeric column is a ResultsError; otherwise it reads as missing."""
    frame = pd.DataFrame(rows, dtype=object)
    for column, kind in types.items():
        text = (frame[column] if column in frame else pd.Series([""] * len(frame), dtype=object))
        text = text.fillna("").astype(str).str.strip()
        if kind == "str":
            frame[column] = text
            continue
        values = pd.to_numeric(text.where(text != "", None), errors="coerce")
        bad = values.isna() & (text != "") & (text.str.lower() != "nan")
        if strict and bad.any():
            first = bad.idxmax()
            label = frame.at[first, "cell_id"] if "cell_id" in frame else first
            raise ResultsError(f"{path}: {column} {text[first]!r} of cell {label} is not a number "
                               f"({int(bad.sum())} such value(s))")
        if kind == "int" and values.notna().all():
            values = values.astype("int64")
        frame[column] = values.astype("int64" if values.dtype == "int64" else float)
    ordered = list(types) + [c for c in frame.columns if c not in types]
    return frame[ordered]


def _cells_file(path: Path) -> Path:
    path = Path(path)
    file = path / CELLS_FILE if path.is_dir() else path
    if not file.exists():
        raise ResultsError(f"no {CELLS_FILE} in {path}" if path.is_dir() else f"{path} does not exist")
    return file


def read_cells(path: Path, *, strict: bool = True, required: Sequence[str] = ()) -> pd.DataFrame:
    """``cells.csv`` of a folder (or the file itself) as a typed DataFrame with every schema
    column (an older file's missing ones empty) and ``is_estimate``. ResultsError for a file that
    is not a membench cells.csv or lacks a ``required`` column (one a caller cannot do without,
    which filling in would hide), and (``strict``) for a value that does not fit its column."""
    file = _cells_file(path)
    header, rows = read_rows(file)
    check_header(file, header, CELL_COLUMNS, [*IDENTITY_COLUMNS, *required])
    frame = _typed_frame(file, rows, CELL_COLUMN_TYPES, strict)
    for column, default in SETTING_DEFAULTS.items():  # a setting a row leaves empty: its default
        if CELL_COLUMN_TYPES[column] == "str":
            frame[column] = frame[column].replace("", default)
        else:
            frame[column] = frame[column].fillna(default)
    frame["is_estimate"] = [is_estimate_row(row) for row in rows]
    return frame


def read_steps(path: Path) -> pd.DataFrame:
    """``steps.csv`` in a folder (or beside a cells.csv) as a typed DataFrame; empty if none."""
    path = Path(path)
    file = (path if path.is_dir() else path.parent) / STEPS_FILE
    header, rows = read_rows(file)
    if header:
        check_header(file, header, STEP_COLUMNS, STEP_COLUMNS)
    return _typed_frame(file, rows, STEP_COLUMN_TYPES, strict=True)


def read_results(path: Path) -> list[CellResult]:
    """Every row of a folder's ``cells.csv`` as a CellResult (``CellResult.from_row``)."""
    file = _cells_file(path)
    header, rows = read_rows(file)
    check_header(file, header, CELL_COLUMNS, IDENTITY_COLUMNS)
    try:
        return [CellResult.from_row(row) for row in rows]
    except ValueError as err:
        raise ResultsError(f"{file}: {err}") from None


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


# -- writing ------------------------------------------------------------------------------------
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


def rewrite_csv(path: Path, header: list[str], rows: list[Mapping]) -> None:
    """Replace a CSV atomically: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare_for_append(path: Path, columns: list[str], required: list[str]) -> None:
    """Make ``path`` ready to take rows of ``columns``: refuse a file that is not membench's
    (ResultsError, file untouched), upgrade an earlier membench's header in place."""
    header, rows = read_rows(path)
    if not header:
        return
    check_header(path, header, columns, required, for_append=True)
    if header != columns:
        rewrite_csv(path, columns, rows)


def _append_rows(path: Path, columns: list[str], rows: list[Mapping]) -> None:
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


def check_results_folder(out_dir: Path) -> None:
    """Refuse a folder whose cells.csv or steps.csv is not membench's, before anything runs;
    upgrade an earlier membench's headers. ResultsError with one line."""
    out_dir = Path(out_dir)
    prepare_for_append(out_dir / CELLS_FILE, CELL_COLUMNS, IDENTITY_COLUMNS)
    prepare_for_append(out_dir / STEPS_FILE, STEP_COLUMNS, STEP_COLUMNS)


def append_result(out_dir: Path, result: CellResult) -> None:
    """Append one finished cell: its steps first, then its row (the row marks completion)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_results_folder(out_dir)
    row = result.row()
    steps = [{"cell_id": row["cell_id"], "device": row["device"], "step": i, "step_ms": ms}
             for i, ms in enumerate(result.step_ms)]
    if steps:
        _append_rows(out_dir / STEPS_FILE, STEP_COLUMNS, steps)
    _append_rows(out_dir / CELLS_FILE, CELL_COLUMNS, [row])


def write_env(out_dir: Path, env: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ENV_FILE).write_text(json.dumps(env, indent=2) + "\n")


# -- the folder a sweep keeps -------------------------------------------------------------------
def cell_key(cell: Cell, device: str, device_name: str) -> tuple:
    """What makes two measurements the same: the device, its model and every setting of the
    cell (the resume key)."""
    return (str(device), device_name, *cell.settings().values())


def row_key(row: Mapping) -> tuple | None:
    """The resume key of a ``cells.csv`` row (strings as read by csv), or None if its cell's
    settings do not read."""
    try:
        cell = Cell.from_row(row)
    except (TypeError, ValueError):
        return None
    return cell_key(cell, parse_value("device", row.get("device")),
                    parse_value("device_name", row.get("device_name")))


def latest_rows(out_dir: Path, *, estimates: bool = False) -> dict[tuple, dict]:
    """The latest ``cells.csv`` row per resume key, of measurements (or of estimates)."""
    latest = {}
    for row in read_rows(Path(out_dir) / CELLS_FILE)[1]:
        key = row_key(row)
        if key is not None and is_estimate_row(row) == estimates:
            latest[key] = row
    return latest


def grid_rows(out_dir: Path, cells: list[Cell], device: str, device_name: str) -> list[dict]:
    """The latest ``cells.csv`` row of each cell of the grid on ``device`` (a ``device_name``),
    in grid order; estimates when ``device`` is an estimate's."""
    latest = latest_rows(out_dir, estimates=is_estimate_row({"device": device}))
    keys = [cell_key(cell, device, device_name) for cell in cells]
    return [latest[key] for key in keys if key in latest]


def _step_blocks(rows: list[dict]) -> list[list[dict]]:
    """``steps.csv`` rows cut into one block per measured cell (a block restarts at step 0)."""
    blocks: list[list[dict]] = []
    for row in rows:
        ident = (row.get("cell_id"), row.get("device"))
        last = blocks[-1][-1] if blocks else None
        if last is None or (last.get("cell_id"), last.get("device")) != ident or row.get("step") == "0":
            blocks.append([])
        blocks[-1].append(row)
    return blocks


def prune_results(out_dir: Path, drop: Callable[[dict], bool] = lambda row: False) -> int:
    """Remove the ``cells.csv`` rows ``drop`` selects, their steps, and orphan steps.

    A cell's steps are appended just before its row, so ``steps.csv`` holds one block per row
    that has step times, in the same order; blocks are matched to rows in order and a block that
    matches no row (its cell never finished) is an orphan. Call with the folder locked. Returns
    the number of cells rows removed.
    """
    out_dir = Path(out_dir)
    cells_header, cell_rows = read_rows(out_dir / CELLS_FILE)
    steps_header, step_rows = read_rows(out_dir / STEPS_FILE)
    kept_rows = [row for row in cell_rows if not drop(row)]

    timed_rows = [row for row in cell_rows if row.get("step_ms_median") not in ("", None)]
    dropped_ids = {id(row) for row in cell_rows} - {id(row) for row in kept_rows}
    kept_steps, next_row = [], 0
    for block in _step_blocks(step_rows):
        ident = (block[0].get("cell_id"), block[0].get("device"))
        match = next((i for i in range(next_row, len(timed_rows))
                      if (timed_rows[i]["cell_id"], timed_rows[i]["device"]) == ident), None)
        if match is None:
            continue  # orphan: its cell never got a row
        next_row = match + 1
        if id(timed_rows[match]) not in dropped_ids:
            kept_steps.extend(block)

    if len(kept_rows) != len(cell_rows):
        rewrite_csv(out_dir / CELLS_FILE, cells_header, kept_rows)
    if len(kept_steps) != len(step_rows):
        rewrite_csv(out_dir / STEPS_FILE, steps_header, kept_steps)
    return len(cell_rows) - len(kept_rows)


@contextmanager
def results_lock(out_dir: Path) -> Iterator[None]:
    """Hold the results folder exclusively; SweepLockedError at once if another sweep has it."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(out_dir / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as err:
        raise ResultsError(f"cannot use {out_dir} as a results folder: {err.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise SweepLockedError(
                f"{out_dir} is in use by another sweep (pid {holder}); wait for it to finish or "
                "choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock
