"""Results I/O: crash-safe appends and typed readers.

A results folder holds ``cells.csv`` (one row per cell), ``steps.csv`` (one row per measured
step, long format) and ``env.json`` (provenance); the columns are ``membench.schema``'s. Rows are
appended and flushed to disk as each cell finishes; a cell's steps are written before its row,
so a row in ``cells.csv`` means the cell is complete. A line cut short by a crash is dropped by
the readers and repaired before the next append.

Only membench's own files are written to. A ``cells.csv`` or ``steps.csv`` whose header is not a
membench header, or that is not text at all, is refused with ``ResultsError`` and left untouched.
A file written by an earlier membench (a subset of today's columns) is read with the missing
columns empty, and the first append upgrades its header in place, atomically, keeping every row.

Every CSV of a results folder is a typed table: its columns and their types, appended with
``append_rows`` after ``prepare_for_append`` and read with ``read_rows`` and ``typed_frame``.
``cells.csv`` and ``steps.csv`` are this module's; ``ranks.csv`` (``membench.multidevice.rows``)
and ``timeline.csv`` (``membench.timeline.files``) are the same concept with their own columns.

The folder a sweep keeps (its lock, the resume keys, the rows a rerun replaces) is
``membench.resume``'s. Every write goes through
``membench.durable``: an append lands whole or not at all, a rewrite of ``cells.csv`` and
``steps.csv`` is one transaction, and a full disk is one line (``WriteError``) with every row
already written still readable.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .durable import append_text, repair_tail, write_error, write_text
from .errors import InputError
from .schema import (
    CELL_COLUMN_TYPES,
    CELL_COLUMNS,
    CELLS_FILE,
    ENV_FILE,
    IDENTITY_COLUMNS,
    SETTING_DEFAULTS,
    STEP_COLUMN_TYPES,
    STEP_COLUMNS,
    STEPS_FILE,
    CellResult,
    is_estimate_row,
)

NUL = b"\0"


class ResultsError(InputError):
    """A results folder or CSV that cannot be read, or written to, as membench results."""


# -- reading ----------------------------------------------------------------------------------
def _complete_text(path: Path) -> str:
    """The file's text up to its last complete line; ResultsError if it is not UTF-8 text."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ResultsError(f"cannot read {path}: {err.strerror}") from None
    if NUL in data:
        raise ResultsError(
            f"{path} is not a text CSV file (binary data at byte {data.index(NUL)}); "
            f"is it a membench {path.name}?"
        )
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (a spreadsheet's save) is not a column
    except UnicodeDecodeError as err:
        raise ResultsError(
            f"{path} is not a UTF-8 CSV file (byte {err.start} cannot be read); "
            f"is it a membench {path.name}?"
        ) from None
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
            raise ResultsError(
                f"{path} line {reader.line_num} has more fields than its header; "
                f"is it a membench {path.name}?"
            )
        rows.append({key: "" if value is None else value for key, value in row.items()})
    return list(reader.fieldnames or []), rows


def check_header(
    path: Path,
    header: list[str],
    columns: list[str],
    required: list[str],
    *,
    for_append: bool = False,
) -> None:
    """ResultsError unless ``header`` is a membench header: every ``required`` column present
    and, when appending, no column membench does not write."""
    missing = [c for c in dict.fromkeys(required) if c not in header]
    unknown = [c for c in header if c not in columns]
    if missing or (for_append and unknown):
        what = (
            f"lacks column(s) {', '.join(missing)}"
            if missing
            else f"has column(s) membench does not write: {', '.join(unknown)}"
        )
        action = "; not appending to it, choose another --out" if for_append else ""
        raise ResultsError(f"{path} is not a membench {path.name}: it {what}{action}")


def typed_frame(path: Path, rows: list[dict], types: dict[str, str], strict: bool) -> pd.DataFrame:
    """A typed table's rows (cells.csv, steps.csv, ranks.csv, timeline.csv, each with its
    column types) as a DataFrame with every schema column: text as str ('' when empty), numbers as
    int64, or float64 where a value is missing (pandas' convention). ``strict``: a value that is
    not a number in a numeric column is a ResultsError; otherwise it reads as missing."""
    frame = pd.DataFrame(rows, dtype=object)
    for column, kind in types.items():
        text = frame[column] if column in frame else pd.Series([""] * len(frame), dtype=object)
        text = text.fillna("").astype(str).str.strip()
        if kind == "str":
            frame[column] = text
            continue
        values = pd.to_numeric(text.where(text != "", None), errors="coerce")
        bad = values.isna() & (text != "") & (text.str.lower() != "nan")
        if strict and bad.any():
            first = bad.idxmax()
            label = frame.at[first, "cell_id"] if "cell_id" in frame else first
            raise ResultsError(
                f"{path}: {column} {text[first]!r} of cell {label} is not a number "
                f"({int(bad.sum())} such value(s))"
            )
        if kind == "int" and values.notna().all():
            values = values.astype("int64")
        frame[column] = values.astype("int64" if values.dtype == "int64" else float)
    ordered = list(types) + [c for c in frame.columns if c not in types]
    return frame[ordered]


def _cells_file(path: Path) -> Path:
    path = Path(path)
    file = path / CELLS_FILE if path.is_dir() else path
    if not file.exists():
        raise ResultsError(
            f"no {CELLS_FILE} in {path}" if path.is_dir() else f"{path} does not exist"
        )
    return file


def read_cells(path: Path, *, strict: bool = True, required: Sequence[str] = ()) -> pd.DataFrame:
    """``cells.csv`` of a folder (or the file itself) as a typed DataFrame with every schema
    column (an older file's missing ones empty) and ``is_estimate``. ResultsError for a file that
    is not a membench cells.csv or lacks a ``required`` column (one a caller cannot do without,
    which filling in would hide), and (``strict``) for a value that does not fit its column."""
    file = _cells_file(path)
    header, rows = read_rows(file)
    check_header(file, header, CELL_COLUMNS, [*IDENTITY_COLUMNS, *required])
    frame = typed_frame(file, rows, CELL_COLUMN_TYPES, strict)
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
    return typed_frame(file, rows, STEP_COLUMN_TYPES, strict=True)


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
def csv_text(columns: list[str], rows: list[Mapping], header: bool) -> str:
    """Rows as CSV text in ``columns`` (None as empty), with the header line if ``header``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def rewrite_csv(path: Path, header: list[str], rows: list[Mapping]) -> None:
    """Replace a CSV atomically: readers see the old file or the new one, never half of one."""
    write_text(Path(path), csv_text(header, rows, True))


def prepare_for_append(path: Path, columns: list[str], required: list[str]) -> None:
    """Make ``path`` ready to take rows of ``columns``: refuse a file that is not membench's
    (ResultsError, file untouched), upgrade an earlier membench's header in place."""
    header, rows = read_rows(path)
    if not header:
        return
    check_header(path, header, columns, required, for_append=True)
    if header != columns:
        rewrite_csv(path, columns, rows)


def append_rows(path: Path, columns: list[str], rows: list[Mapping]) -> None:
    """Append ``rows`` to a typed table's CSV (the header first, into a new or empty file),
    whole or not at all: a torn last line from an earlier crash is cut back first. cells.csv,
    steps.csv, ranks.csv and timeline.csv are all written through here."""
    try:
        repair_tail(path)
    except OSError as err:
        raise write_error(path, err, 0) from None
    new_file = not path.exists() or path.stat().st_size == 0
    append_text(path, csv_text(columns, rows, new_file))


def check_results_folder(out_dir: Path) -> None:
    """Refuse a folder whose cells.csv or steps.csv is not membench's, before anything runs;
    upgrade an earlier membench's headers. ResultsError with one line."""
    out_dir = Path(out_dir)
    prepare_for_append(out_dir / CELLS_FILE, CELL_COLUMNS, IDENTITY_COLUMNS)
    prepare_for_append(out_dir / STEPS_FILE, STEP_COLUMNS, STEP_COLUMNS)


def step_rows(result: CellResult) -> list[dict]:
    """A result's ``steps.csv`` rows: one per measured step."""
    row = result.row()
    return [
        {"cell_id": row["cell_id"], "device": row["device"], "step": i, "step_ms": ms}
        for i, ms in enumerate(result.step_ms)
    ]


def append_result(out_dir: Path, result: CellResult) -> None:
    """Append one finished cell: its steps first, then its row (the row marks completion)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_results_folder(out_dir)
    steps = step_rows(result)
    if steps:
        append_rows(out_dir / STEPS_FILE, STEP_COLUMNS, steps)
    append_rows(out_dir / CELLS_FILE, CELL_COLUMNS, [result.row()])


def write_env(out_dir: Path, env: dict) -> None:
    """Write ``env.json`` atomically (WriteError when it cannot be written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / ENV_FILE, json.dumps(env, indent=2) + "\n")
