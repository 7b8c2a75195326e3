"""``membench timeline DIR [--cell ID]``: where each recorded step peaks, in one screen of text.

Reads a results folder's ``cells.csv`` and ``timeline.csv`` (written by ``membench sweep
--timeline``) and prints, per cell, the peak of its recorded step: how far through the step,
in which phase, layer and module, and what was alive by category. ``--cell`` shows one cell's
step phase by phase. The text comes from ``membench.timeline.events``'s rows, the same ones the
report's figure draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from ..schema import CATEGORIES
from ..timeline.events import Timeline, TimelinePeak, find_peak, timeline_rows, where
from .common import fail, reports_input_errors, warn

if TYPE_CHECKING:
    import pandas as pd

SHORT = {
    "parameters": "params",
    "gradients": "grads",
    "optimizer_state": "optim",
    "activations": "activations",
}
UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


class Unit:
    """One unit for every figure of a table, the largest that keeps its largest value >= 1."""

    def __init__(self, largest: float):
        self.name, self.size = next(((n, s) for n, s in UNITS if largest >= s), ("B", 1))

    def __call__(self, value: float) -> str:
        """Three significant digits (none lost to a fixed decimal: 0.0342 GiB, 622 MiB)."""
        scaled = value / self.size
        return f"{scaled:,.0f}" if scaled >= 100 or self.size == 1 else f"{scaled:.3g}"


def peak_text(peak: TimelinePeak) -> str:
    """'peak 512.3 MiB at 41% of the step, backward of layer 6 (...); alive (MiB): ...'"""
    unit = Unit(peak.total_bytes)
    alive = ", ".join(f"{c.replace('_', ' ')} {unit(peak.live[c])}" for c in CATEGORIES)
    return (
        f"peak {unit(peak.total_bytes)} {unit.name} at {peak.progress:.0%} of the step, "
        f"{where(peak)}; alive ({unit.name}): {alive}"
    )


def timeline_peak_text(timeline: Timeline) -> str:
    """``peak_text`` of a recorded step (``membench run --timeline``)."""
    return peak_text(find_peak(timeline_rows(timeline)))


def _peaks_table(found: Sequence[tuple[Mapping, TimelinePeak]], devices: bool) -> Table:
    unit = Unit(max(peak.total_bytes for _, peak in found))
    table = Table(
        title=f"Where each cell's recorded step peaks ({unit.name}; at: how far through the step)",
        title_justify="left",
    )
    table.add_column("cell")
    if devices:
        table.add_column("device")
    for name in ("peak", "at"):
        table.add_column(name, justify="right")
    table.add_column("where")
    for category in CATEGORIES:
        table.add_column(SHORT[category], justify="right")
    for row, peak in found:
        cells = [row["cell_id"]] + ([row["device"]] if devices else [])
        table.add_row(
            *cells,
            unit(peak.total_bytes),
            f"{peak.progress:.0%}",
            where(peak),
            *(unit(peak.live[c]) for c in CATEGORIES),
        )
    return table


def phase_table(rows: pd.DataFrame) -> Table:
    """One step phase by phase: per (phase, layer) in order of first appearance, the most
    bytes live there and what they were, and how many events it had."""
    import pandas as pd  # rows read from a timeline.csv: pandas is loaded already

    unit = Unit(rows["total_bytes"].max())
    table = Table(
        title=f"{len(rows) - 1} events, phase by phase ({unit.name})", title_justify="left"
    )
    for name in ("phase", "layer", "events", "most live"):
        table.add_column(name, justify="left" if name == "phase" else "right")
    for category in CATEGORIES:
        table.add_column(SHORT[category], justify="right")
    steps = rows.iloc[1:]  # the start row belongs to no phase
    keys = [f"{phase}|{layer}" for phase, layer in zip(steps["phase"], steps["layer"])]
    for _, part in steps.groupby(keys, sort=False):
        top = part.loc[part["total_bytes"].idxmax()]
        layer = "" if pd.isna(top["layer"]) else str(int(top["layer"]))
        table.add_row(
            top["phase"],
            layer,
            str(len(part)),
            unit(top["total_bytes"]),
            *(unit(top[f"{c}_bytes"]) for c in CATEGORIES),
        )
    return table


def _recorded(folder: Path) -> list[tuple[Mapping, pd.DataFrame]]:
    """(cells.csv row, its timeline rows) of the latest run of every cell with a timeline."""
    from ..results import read_cells  # pandas: only when a timeline is read
    from ..timeline.files import TIMELINE_FILE, cut_timelines, read_timelines, timelines_of

    cells = read_cells(folder, strict=False)
    if not (Path(folder) / TIMELINE_FILE).exists():
        fail(
            f"no {TIMELINE_FILE} in {folder}: its {len(cells)} cell row(s) recorded no step; "
            "rerun its sweep with --timeline --redo (--timeline alone records only the cells "
            "it runs)"
        )
    cells = cells.drop_duplicates(["cell_id", "device"], keep="last")
    timelines = read_timelines(folder)
    found, cut = timelines_of(cells, timelines), cut_timelines(cells, timelines)
    if cut:  # never shown as a whole step
        warn(
            f"{folder / TIMELINE_FILE} is incomplete (cut short?); left out: {'; '.join(cut)} "
            "(rerun those cells with --timeline --redo)"
        )
    if not found:
        fail(
            f"no whole recorded step in {folder / TIMELINE_FILE} belongs to a run in its "
            "cells.csv (rerun the cells with --timeline --redo)"
        )
    return [(cells.loc[label], rows) for label, rows in found.items()]


@reports_input_errors
def timeline(
    folder: Path = typer.Argument(
        ...,
        show_default=False,
        metavar="DIR",
        help="A results folder written by `membench sweep --timeline`.",
    ),
    cell: str = typer.Option(
        None, "--cell", metavar="ID", help="Show this cell's step phase by phase."
    ),
) -> None:
    """Print where each cell's recorded step peaks: phase, layer and what is alive."""
    recorded = _recorded(folder)
    console = Console(width=max(Console().width, 150))
    if cell is None:
        found = [(row, find_peak(rows.to_dict("records"))) for row, rows in recorded]
        console.print(_peaks_table(found, len({row["device"] for row, _ in found}) > 1))
        return
    chosen = [(row, rows) for row, rows in recorded if row["cell_id"] == cell]
    if not chosen:
        known = ", ".join(row["cell_id"] for row, _ in recorded[:6])
        fail(
            f"--cell {cell}: no timeline for it in {folder}; cells with one: {known}"
            + (", ..." if len(recorded) > 6 else "")
        )
    for row, rows in chosen:
        console.print(
            f"{row['cell_id']} on {row['device']}: {peak_text(find_peak(rows.to_dict('records')))}",
            highlight=False,
        )
        console.print(phase_table(rows))
