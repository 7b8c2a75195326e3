"""The memory at the peak by category (parameters, gradients, optimizer state, activations)
as stacked bars, one bar per cell that records it; estimated bars are hatched."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..units import GIB
from .layout import batch_label, tooled_method
from .style import BREAKDOWN, method_sort_key, new_figure, side_legend

# Beyond this many bars the labels are written on one line and slanted.
CROWDED_BARS = 12


def _bar_rows(panel: pd.DataFrame) -> pd.DataFrame:
    """The rows with a full breakdown (measured ok or estimated), by batch, method, micro-batch,
    measurement before estimate."""
    columns = [c for c, _, _ in BREAKDOWN]
    rows = panel[panel["kind"].isin(["ok", "estimated"]) & panel[columns].notna().all(axis=1)]
    rows = rows.assign(_m=rows["method"].map(method_sort_key), _e=rows["is_estimate"])
    return rows.sort_values(["batch", "_m", "micro_batch", "_e"])


def _stack(ax, rows: pd.DataFrame, positions: list[float]) -> list[Patch]:
    """One stacked bar per row; returns the legend handles, bottom category first."""
    bottom = [0.0] * len(rows)
    hatches = ["//" if e else "" for e in rows["is_estimate"]]
    handles = []
    for column, name, color in BREAKDOWN:
        handles.append(Patch(facecolor=color, label=name))
        values = (rows[column] / GIB).tolist()
        bars = ax.bar(
            positions,
            values,
            bottom=bottom,
            color=color,
            label=name,
            edgecolor="white",
            linewidth=0.5,
            gid=f"breakdown:{name}",
        )
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        bottom = [b + v for b, v in zip(bottom, values)]
    return handles


def breakdown_figure(panel: pd.DataFrame, *, title: str = "") -> Figure | None:
    """Stacked bars of the memory at the peak by category, one bar per cell that has all four
    breakdown columns (measured ok or estimated, hatched). gids: ``breakdown:<category>``; the
    bars' order is the figure's ``bar_labels``. None when no row has a breakdown."""
    rows = _bar_rows(panel)
    if rows.empty:
        return None
    crowded = len(rows) > CROWDED_BARS
    separator = " " if crowded else "\n"
    names = [
        separator.join(
            [tooled_method(r), batch_label(r)] + (["(est.)"] if r["is_estimate"] else [])
        )
        for _, r in rows.iterrows()
    ]
    figure = new_figure(min(14.0, max(6.5, (0.38 if crowded else 0.55) * len(rows) + 3)), 4.8)
    ax = figure.add_subplot()
    # a gap between batch sizes groups the bars of one batch together
    new_batch = (rows["batch"] != rows["batch"].shift()).cumsum() - 1
    positions = [i + 0.6 * g for i, g in enumerate(new_batch)]
    handles = _stack(ax, rows, positions)
    ax.set_xticks(
        positions,
        labels=names,
        fontsize=7.5,
        rotation=55 if crowded else 0,
        ha="right" if crowded else "center",
        rotation_mode="anchor" if crowded else "default",
    )
    ax.set_xlim(-0.6, positions[-1] + 0.6)
    ax.set_ylabel("memory at the peak (GiB)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    if rows["is_estimate"].any():
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label="estimated"))
    side_legend(ax, handles)
    figure.bar_labels = [" ".join(n.split()) for n in names]
    return figure
