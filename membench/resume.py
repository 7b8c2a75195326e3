"""The folder a sweep keeps: its lock, the resume keys, and the rows a rerun replaces.

Resume is keyed on the cell (docs/sweeps.md, "Interrupting and resuming"): a row's cell is read
from its setting columns alone (``row_cell``), so a value that does not read in any other column
never makes a finished cell run again; a row whose settings do not read is refused before a
sweep runs (``check_rows_name_cells``), since running its cell again would leave two rows of
one cell. ``--redo`` never removes a row before its replacement exists: ``replace_result``
swaps a redone cell's old rows (and steps) for its new one in one transaction
(``membench.durable``), so a sweep interrupted at any point keeps every row a user had.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .durable import recover, rewrite_files, write_error
from .results import (
    ResultsError,
    append_result,
    check_results_folder,
    csv_text,
    read_rows,
    step_rows,
)
from .schema import (
    CELL_COLUMNS,
    CELL_SETTINGS,
    CELLS_FILE,
    STEP_COLUMNS,
    STEPS_FILE,
    Cell,
    CellResult,
    is_estimate_row,
    parse_value,
)

LOCK_FILE = ".membench-sweep.lock"


class SweepLockedError(ResultsError):
    """Another sweep holds the results folder."""


def cell_key(cell: Cell, device: str, device_name: str) -> tuple:
    """What makes two measurements the same: the device, its model and every setting of the
    cell (the resume key)."""
    return (str(device), device_name, *cell.settings().values())


def row_cell(row: Mapping) -> Cell:
    """The cell a ``cells.csv`` row names: its setting columns only, so a value that does not
    read in any other column never changes which cell a row is. ValueError naming the column
    for a setting that does not read."""
    for s in CELL_SETTINGS:
        try:
            parse_value(s.name, row.get(s.name))
        except ValueError:
            raise ValueError(f"{s.name} {row.get(s.name)!r} is not a number") from None
    return Cell.from_row(row)


def row_key(row: Mapping) -> tuple:
    """The resume key of a ``cells.csv`` row (strings as read by csv); ValueError for a row
    whose settings do not read (``check_rows_name_cells`` refuses such a folder first)."""
    return cell_key(
        row_cell(row),
        parse_value("device", row.get("device")),
        parse_value("device_name", row.get("device_name")),
    )


def check_rows_name_cells(out_dir: Path) -> None:
    """ResultsError (one line naming the row) for a ``cells.csv`` row whose settings do not
    read: resume could not tell whether its cell is finished, and running it again would
    leave two rows of one cell."""
    path = Path(out_dir) / CELLS_FILE
    for number, row in enumerate(read_rows(path)[1], start=1):
        try:
            row_cell(row)
        except (TypeError, ValueError) as err:
            raise ResultsError(
                f"{path} row {number} (cell {row.get('cell_id') or '?'}): {err}, so no sweep can "
                "tell which cell it is; correct or delete that row, or choose another --out"
            ) from None


def latest_rows(out_dir: Path, *, estimates: bool = False) -> dict[tuple, dict]:
    """The latest ``cells.csv`` row per resume key, of measurements (or of estimates); rows
    whose settings do not read are skipped (a sweep refuses such a folder before it runs)."""
    latest = {}
    for row in read_rows(Path(out_dir) / CELLS_FILE)[1]:
        try:
            key = row_key(row)
        except (TypeError, ValueError):
            continue
        if is_estimate_row(row) == estimates:
            latest[key] = row
    return latest


def read_result_row(row: Mapping, source: Path, warn: Callable[[str], None]) -> CellResult:
    """``CellResult.from_row`` of a row whose cell reads, with any other value that does not
    read taken as empty (``warn`` told once for the row, naming it and the columns)."""
    try:
        return CellResult.from_row(row)
    except ValueError:
        pass
    bad = {}
    for column in CELL_COLUMNS:
        try:
            parse_value(column, row.get(column))
        except ValueError:
            bad[column] = row.get(column)
    warn(
        f"{source}: cell {row.get('cell_id')}: "
        + ", ".join(f"{column} {value!r}" for column, value in bad.items())
        + " not a number; read as empty"
    )
    return CellResult.from_row({**row, **dict.fromkeys(bad, "")})


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
        if (
            last is None
            or (last.get("cell_id"), last.get("device")) != ident
            or row.get("step") == "0"
        ):
            blocks.append([])
        blocks[-1].append(row)
    return blocks


def _pruned(out_dir: Path, drop: Callable[[dict], bool]) -> tuple[list[dict], list[dict], int]:
    """(kept cells rows, kept steps rows, cells rows removed): without the rows ``drop``
    selects, their steps and orphan steps.

    A cell's steps are appended just before its row, so ``steps.csv`` holds one block per row
    that has step times, in the same order; blocks are matched to rows in order and a block that
    matches no row (its cell never finished) is an orphan.
    """
    cell_rows = read_rows(out_dir / CELLS_FILE)[1]
    step_rows = read_rows(out_dir / STEPS_FILE)[1]
    kept_rows = [row for row in cell_rows if not drop(row)]

    timed_rows = [row for row in cell_rows if row.get("step_ms_median") not in ("", None)]
    dropped_ids = {id(row) for row in cell_rows} - {id(row) for row in kept_rows}
    kept_steps, next_row = [], 0
    for block in _step_blocks(step_rows):
        ident = (block[0].get("cell_id"), block[0].get("device"))
        match = next(
            (
                i
                for i in range(next_row, len(timed_rows))
                if (timed_rows[i]["cell_id"], timed_rows[i]["device"]) == ident
            ),
            None,
        )
        if match is None:
            continue  # orphan: its cell never got a row
        next_row = match + 1
        if id(timed_rows[match]) not in dropped_ids:
            kept_steps.extend(block)
    return kept_rows, kept_steps, len(cell_rows) - len(kept_rows)


def prune_results(out_dir: Path, drop: Callable[[dict], bool] = lambda row: False) -> int:
    """Remove the ``cells.csv`` rows ``drop`` selects, their steps, and orphan steps, in one
    transaction (``durable.rewrite_files``). Call with the folder locked. Returns the number of
    cells rows removed."""
    out_dir = Path(out_dir)
    cells_header, cell_rows = read_rows(out_dir / CELLS_FILE)
    steps_header, step_rows = read_rows(out_dir / STEPS_FILE)
    kept_rows, kept_steps, removed = _pruned(out_dir, drop)
    contents = {}
    if removed:
        contents[CELLS_FILE] = csv_text(cells_header, kept_rows, True)
    if len(kept_steps) != len(step_rows):
        contents[STEPS_FILE] = csv_text(steps_header, kept_steps, True)
    if contents:
        rewrite_files(out_dir, contents)
    return removed


@contextmanager
def results_lock(out_dir: Path) -> Iterator[None]:
    """Hold the results folder exclusively; SweepLockedError at once if another sweep has it."""
    out_dir = Path(out_dir)
    created = [path for path in (*reversed(out_dir.parents), out_dir) if not path.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        created += [] if (out_dir / LOCK_FILE).exists() else [out_dir / LOCK_FILE]
        handle = open(out_dir / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as err:
        _remove_created(created)
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
        try:  # unbuffered: a failed write must not be tried again when the file closes
            os.ftruncate(handle.fileno(), 0)
            os.pwrite(handle.fileno(), str(os.getpid()).encode(), 0)
        except OSError as err:  # a full disk: leave nothing behind that this call made
            handle.close()
            _remove_created(created)
            raise write_error(out_dir / LOCK_FILE, err, len(str(os.getpid()))) from None
        yield
    finally:
        if created and out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {LOCK_FILE}:
            _remove_created(created)  # a sweep that wrote nothing leaves nothing, lock included
        handle.close()  # closing the file releases the lock


def _remove_created(paths: list[Path]) -> None:
    """Remove what a failed start created: the lock file, then the folders, deepest first."""
    for path in reversed(paths):
        try:
            path.rmdir() if path.is_dir() else path.unlink()
        except OSError:
            pass


def prepare_results_folder(out_dir: Path) -> None:
    """What a sweep does first, holding the lock: finish or undo a rewrite a kill interrupted
    (``durable.recover``), refuse files that are not membench's, upgrade old headers, and
    refuse a row whose cell cannot be read (``check_rows_name_cells``)."""
    recover(out_dir)
    check_results_folder(out_dir)
    check_rows_name_cells(out_dir)


def replace_result(out_dir: Path, result: CellResult, drop: Callable[[dict], bool]) -> None:
    """Put ``result`` in place of the rows ``drop`` selects (a redone cell's earlier rows) and
    their steps, in one transaction (``durable.rewrite_files``): a kill at any point leaves the
    old rows or the new one, never neither. Appends where ``drop`` selects nothing."""
    out_dir = Path(out_dir)
    check_results_folder(out_dir)
    if not any(drop(row) for row in read_rows(out_dir / CELLS_FILE)[1]):
        append_result(out_dir, result)
        return
    kept_rows, kept_steps, _ = _pruned(out_dir, drop)
    rewrite_files(
        out_dir,
        {
            CELLS_FILE: csv_text(CELL_COLUMNS, [*kept_rows, result.row()], True),
            STEPS_FILE: csv_text(STEP_COLUMNS, [*kept_steps, *step_rows(result)], True),
        },
    )
