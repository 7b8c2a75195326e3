"""Memory over one step: the figure of the cells that recorded a timeline (``--timeline``).

One small plot per cell, side by side for the methods of a panel at one batch size: live bytes
against the step's progress (event index scaled to 0..1, so steps of different lengths line
up), stacked by category in the breakdown figure's colours, on one y axis for all, the phases
shaded (forward, backward, recomputation, optimizer, other) and the peak marked with where it
happens. What it shows at a glance is the shape: bp's mountain (activations pile up through
the forward, drain through the backward) against ff-pipelined's saw-tooth (one layer's graph
at a time).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..report.figures import ReportFigure, figure_stem
from ..report.layout import device_groups, panel_title, panels
from ..report.style import BREAKDOWN, method_sort_key, new_figure
from ..units import GIB
from .events import PHASES, find_peak, phase_spans
from .files import TIMELINE_FILE, cut_timelines, read_timelines, timelines_of

PHASE_COLORS = {
    "forward": "#d6e6f5",
    "backward": "#fbe0cc",
    "recompute": "#f6eeb4",
    "optimizer": "#dcefd5",
    "other": "#ececec",
}
PHASE_SHORT = {
    "forward": "fwd",
    "backward": "bwd",
    "recompute": "recompute",
    "optimizer": "optim",
    "other": "other",
}
COLUMNS_PER_ROW = 4


def _unit(largest: float) -> tuple[str, float]:
    return next(
        ((name, size) for name, size in (("GiB", GIB), ("MiB", 2**20)) if largest >= size),
        ("KiB", 2**10),
    )


def _label(row) -> str:
    name = row["method"] + (f" {row['tooling']}" if row.get("tooling") else "")
    if not pd.isna(row.get("micro_batch")) and int(row["micro_batch"]) != int(row["batch"]):
        name += f" mb{int(row['micro_batch'])}"
    return name + (" (est.)" if row["is_estimate"] else "")


def _peak_note(peak) -> str:
    where = PHASE_SHORT.get(peak.phase, peak.phase)
    return where + (f" L{peak.layer}" if peak.layer is not None else "")


def _draw_one(ax, rows: pd.DataFrame, scale: float, unit: str) -> None:
    """One step: phases shaded, categories stacked, the peak marked."""
    x = [i / max(1, len(rows) - 1) for i in range(len(rows))]
    for phase, first, last in phase_spans(rows["phase"].tolist()[1:]):
        ax.axvspan(
            x[first + 1] if first else 0.0,
            x[last + 1],
            color=PHASE_COLORS.get(phase),
            linewidth=0,
            zorder=0,
            gid=f"phase:{phase}",
        )
    ax.stackplot(
        x,
        *[rows[column] / scale for column, _, _ in BREAKDOWN],
        colors=[color for _, _, color in BREAKDOWN],
        linewidth=0,
        zorder=2,
        gid="timeline:stack",
    )
    peak = find_peak(rows.to_dict("records"))
    ax.plot(
        [peak.progress],
        [peak.total_bytes / scale],
        marker="v",
        color="black",
        markersize=6,
        zorder=3,
        gid="timeline:peak",
    )
    ax.annotate(
        f"peak {peak.total_bytes / scale:.3g} {unit}\n{_peak_note(peak)}",
        (peak.progress, peak.total_bytes / scale),
        xytext=(0, 6),
        textcoords="offset points",
        ha="center"
        if 0.15 < peak.progress < 0.85
        else ("left" if peak.progress <= 0.15 else "right"),
        va="bottom",
        fontsize=7.5,
        zorder=4,
    )
    ax.set_xlim(0, 1)
    ax.grid(True, axis="y", alpha=0.3, zorder=1)


def timeline_figure(entries: list[tuple[str, pd.DataFrame]], *, title: str = "") -> Figure:
    """The figure of ``entries`` (label, one step's timeline rows), one plot each, on one y
    axis. gids: ``phase:<phase>``, ``timeline:stack``, ``timeline:peak``."""
    largest = max(float(rows["total_bytes"].max()) for _, rows in entries)
    unit, scale = _unit(largest)
    columns = min(COLUMNS_PER_ROW, len(entries))
    lines = math.ceil(len(entries) / columns)
    figure = new_figure(2.9 * columns + 0.6, 2.3 * lines + 1.0)
    axes = figure.subplots(lines, columns, sharey=True, squeeze=False)
    for ax, (label, rows) in zip(axes.flat, entries):
        _draw_one(ax, rows, scale, unit)
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[len(entries) :]:
        ax.set_visible(False)
    axes[0][0].set_ylim(0, largest / scale * 1.28)  # room for the peak's note
    for ax in axes[:, 0]:
        ax.set_ylabel(f"live memory ({unit})")
    for ax in axes[-1]:
        ax.set_xlabel("progress through the step (events)", fontsize=8)
    _legend(figure, {p for _, rows in entries for p in rows["phase"].iloc[1:]})
    figure.suptitle(title, fontsize=10)
    return figure


def _legend(figure: Figure, shown: set[str]) -> None:
    """Categories on the legend's first line (top of the stack first), phases on the second."""
    categories = [Patch(facecolor=color, label=name) for _, name, color in reversed(BREAKDOWN)]
    phases = [Patch(facecolor=PHASE_COLORS[p], label=f"phase: {p}") for p in PHASES if p in shown]
    width = max(len(categories), len(phases))
    blank = Patch(visible=False, label=" ")
    lines = [
        categories + [blank] * (width - len(categories)),
        phases + [blank] * (width - len(phases)),
    ]
    # the legend fills column by column: interleave the two lines
    handles = [line[i] for i in range(width) for line in lines]
    figure.legend(
        handles=handles, loc="outside lower center", ncols=width, fontsize=8, frameon=False
    )


def cut_timeline_notes(cells: pd.DataFrame) -> list[str]:
    """One line per results file whose timeline.csv lacks events its rows recorded (a file cut
    short): those steps are left out of the figures rather than drawn as whole ones."""
    if "source" not in cells:
        return []
    notes = []
    for source, part in cells.groupby("source", sort=False):
        cut = cut_timelines(part, read_timelines(Path(source).parent))
        if cut:
            notes.append(
                f"{Path(source).parent / TIMELINE_FILE} is incomplete (cut short?), so these "
                f"recorded steps are left out: {'; '.join(cut)}."
            )
    return notes


def _with_timelines(rows: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Row label -> its timeline, for the rows whose run recorded one (read beside each
    row's cells.csv)."""
    found: dict[int, pd.DataFrame] = {}
    for source, part in rows.groupby("source", sort=False):
        timelines = read_timelines(Path(source).parent)
        found.update(timelines_of(part, timelines))
    return found


def timeline_figures(cells: pd.DataFrame) -> list[ReportFigure]:
    """A timeline figure per device, panel and batch size that has cells with a timeline."""
    if "source" not in cells:
        return []
    out = []
    for label, slug, rows in device_groups(cells):
        for key, panel in panels(rows):
            found = _with_timelines(panel)
            if not found:
                continue
            recorded = panel.loc[list(found)]
            for batch, part in recorded.groupby("batch", sort=True):
                part = part.assign(_m=part["method"].map(method_sort_key))
                part = part.sort_values(["_m", "tooling", "micro_batch", "is_estimate"])
                entries = [(_label(row), found[index]) for index, row in part.iterrows()]
                title = (
                    f"memory over one step \u2014 {panel_title(*key)}, batch {batch} \u2014 {label}"
                )
                out.append(
                    ReportFigure(
                        "timeline",
                        label,
                        panel_title(*key),
                        f"timeline_{figure_stem(slug, key)}_b{batch}.png",
                        timeline_figure(entries, title=title),
                    )
                )
    return out


__all__ = ["PHASE_COLORS", "cut_timeline_notes", "timeline_figure", "timeline_figures"]
