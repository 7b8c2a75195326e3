"""Re-estimate every committed reference estimate and compare it with its folder, byte for byte.

Every ``results/reference-estimate-*`` folder with a ``cells.csv`` is estimated again, cell by
cell, through the sweep itself (``estimate_sweep``: worker processes, several at once, with
each folder's timeline when it has a ``timeline.csv``), and each of the reference's rows is
compared with the new one on every column that holds bytes or FLOPs (peaks, the breakdown,
offloaded bytes, FLOPs per step, bytes sent per step) and on its status. A cell on several
devices is compared rank by rank too (``ranks.csv``), and a timeline event by event (its
action, bytes, category, the live bytes by category after it, its phase and layer). A
column the reference does not have (an older membench did not write it) is not compared.

    .venv/bin/python scripts/check_reference_estimates.py [--folders NAME,...]
        [--sample N] [--jobs N] [--keep DIR]

Prints one line per folder (cells compared, differences) and every difference; exits 1 if
there is one. ``--sample N`` compares N cells per folder, spread over its rows (a quick check).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

from membench.execute.sweep import estimate_sweep
from membench.schema import CELLS_FILE, Cell, device_kind

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
RANKS_FILE, TIMELINE_FILE = "ranks.csv", "timeline.csv"
COMPARED_EXTRA = ("status", "flops_per_step", "sent_bytes_per_step")
# A timeline event's module name is not compared: a class was renamed since some references were
# written (ConvStackClassifier, now StackClassifier), which changes no byte.
TIMELINE_COMPARED = ("action", "bytes", "category", "phase", "layer")


def byte_columns(header: list[str]) -> list[str]:
    """The columns of a reference file that the check compares."""
    return [c for c in header if c.endswith("_bytes") or c in COMPARED_EXTRA + TIMELINE_COMPARED]


def differs(old: dict, fresh: dict, column: str) -> bool:
    """Whether a new row differs from the reference's in ``column``. A figure the reference has
    no value for (the device total's terms, which estimates made before it left empty) is new,
    not different; a value the reference has is compared exactly, and must still be there."""
    return old[column] != "" and old[column] != fresh.get(column, "")


def read(path: Path) -> tuple[list[str], list[dict]]:
    if not path.exists():
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def sample(rows: list[dict], count: int | None) -> list[dict]:
    """``count`` rows spread evenly over ``rows`` (all of them without a count)."""
    if count is None or count >= len(rows):
        return rows
    step = len(rows) / count
    return [rows[int(i * step)] for i in range(count)]


def keyed(rows: list[dict], *key: str) -> dict[tuple, dict]:
    return {tuple(row[k] for k in key): row for row in rows}


def differences(name: str, reference: Path, new: Path, cell_ids: set[str]) -> list[str]:
    """Every compared value of ``reference``'s rows (of ``cell_ids``) that ``new`` differs on."""
    found = []
    for file, key in ((CELLS_FILE, ("cell_id",)), (RANKS_FILE, ("cell_id", "rank"))):
        header, old_rows = read(reference / file)
        new_rows = keyed(read(new / file)[1], *key)
        for old in old_rows:
            if old["cell_id"] not in cell_ids:
                continue
            label = f"{name}/{file} {'/'.join(old[k] for k in key)}"
            fresh = new_rows.get(tuple(old[k] for k in key))
            if fresh is None:
                found.append(f"{label}: no new row")
                continue
            found += [
                f"{label} {column}: {old[column]!r} -> {fresh.get(column, '')!r}"
                for column in byte_columns(header)
                if differs(old, fresh, column)
            ]
    return found + timeline_differences(name, reference, new, cell_ids)


def timeline_differences(name: str, reference: Path, new: Path, cell_ids: set[str]) -> list[str]:
    """The events of ``reference``'s timeline (of ``cell_ids``) that ``new``'s differs on, and
    the cells whose new timeline has another number of events."""
    header, old_events = read(reference / TIMELINE_FILE)
    old_events = [event for event in old_events if event["cell_id"] in cell_ids]
    new_events = keyed(read(new / TIMELINE_FILE)[1], "cell_id", "event")
    found = []
    for old in old_events:
        fresh = new_events.get((old["cell_id"], old["event"]), {})
        changed = [c for c in byte_columns(header) if differs(old, fresh, c)]
        if changed:
            found.append(
                f"{name}/{TIMELINE_FILE} {old['cell_id']} event {old['event']}: "
                + ", ".join(f"{c} {old[c]!r} -> {fresh.get(c, '')!r}" for c in changed)
            )
    for cell_id in sorted({event["cell_id"] for event in old_events}):
        count = sum(event["cell_id"] == cell_id for event in old_events)
        now = sum(key[0] == cell_id for key in new_events)
        if now != count:
            found.append(f"{name}/{TIMELINE_FILE} {cell_id}: {count} events -> {now}")
    return found


def check_folder(folder: Path, count: int | None, jobs: int | None, out: Path) -> list[str]:
    """Re-estimate ``folder``'s cells into ``out`` and compare; the differences."""
    rows = sample(read(folder / CELLS_FILE)[1], count)
    timeline = (folder / TIMELINE_FILE).exists()
    for kind in sorted({device_kind(row["device"]) for row in rows}):
        cells = [Cell.from_row(row) for row in rows if device_kind(row["device"]) == kind]
        estimate_sweep(cells, kind, out, timeline=timeline, jobs=jobs)
    return differences(folder.name, folder, out, {row["cell_id"] for row in rows})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", help="comma list of folder names (default: every one)")
    parser.add_argument("--sample", type=int, help="cells per folder, spread over its rows")
    parser.add_argument("--jobs", type=int, help="estimates at once (default: the cores)")
    parser.add_argument("--keep", type=Path, help="write the new estimates here")
    args = parser.parse_args()
    folders = sorted(p for p in RESULTS.glob("reference-estimate-*") if (p / CELLS_FILE).exists())
    if args.folders:
        folders = [p for p in folders if p.name in args.folders.split(",")]
    base = args.keep or Path(tempfile.mkdtemp(prefix="membench-reference-"))
    total = []
    for folder in folders:
        start = time.perf_counter()
        found = check_folder(folder, args.sample, args.jobs, base / folder.name)
        compared = len(sample(read(folder / CELLS_FILE)[1], args.sample))
        print(
            f"{folder.name}: {compared} cells, {len(found)} differences "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        for line in found:
            print(f"  {line}", flush=True)
        total += found
    print(f"{len(total)} differences in {len(folders)} folders; new estimates in {base}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
